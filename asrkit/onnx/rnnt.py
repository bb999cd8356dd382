"""The transducer's searches in numpy over its exported predictor and joiner graphs: the steps of
asrkit.models.transducer_search (batched greedy search; time-synchronous beam search with merged prefixes and
word-LM shallow fusion, whose steps both take from asrkit.rnnt_beam), so that both runtimes decode alike.

Shapes: N hypotheses (the batch for greedy, the beam for beam search), J joint size, V vocabulary (blank = 0),
L predictor layers, P predictor units.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from asrkit.data.tokenizer import Tokenizer
from asrkit.records import Hypothesis
from asrkit.rnnt_beam import BLANK, FrameBeam, Hyp, Path, to_hypothesis

if TYPE_CHECKING:
    from asrkit.models.fusion import WordFusion


class Network(Protocol):
    """The predictor and joiner graphs (asrkit.onnx.runtime.OnnxModel)."""

    def step(self, tokens: np.ndarray, h: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """tokens (N,) -> projected predictor output (N, J), h, c (L, N, P)."""
        ...

    def joint(self, enc: np.ndarray, pred: np.ndarray) -> np.ndarray:
        """enc, pred (N, J) -> log-probabilities (N, V)."""
        ...

    def start_state(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Zero h, c (L, n, P)."""
        ...


class GreedySearch:
    """Batched greedy decoding: in every encoder frame emit the argmax until it is the blank (or `max_symbols`)."""

    def __init__(self, net: Network, batch: int, max_symbols: int) -> None:
        self.net, self.max_symbols = net, max_symbols
        self.pred, self.h, self.c = net.step(np.zeros(batch, dtype=np.int64), *net.start_state(batch))
        self.tokens: list[list[int]] = [[] for _ in range(batch)]
        self.frames: list[list[int]] = [[] for _ in range(batch)]
        self.scores = np.zeros(batch, dtype=np.float64)

    def advance(self, enc: np.ndarray, lengths: np.ndarray) -> None:
        """Consume projected encoder frames (B, T', J); frames at or past `lengths` are skipped."""
        rows = np.arange(enc.shape[0])
        for t in range(enc.shape[1]):
            active = lengths > t
            for _ in range(self.max_symbols):
                logp = self.net.joint(np.ascontiguousarray(enc[:, t]), self.pred)  # (B, V)
                best = logp.argmax(axis=-1)
                emit = active & (best != BLANK)
                self.scores += np.where(active, logp[rows, best].astype(np.float64), 0.0)
                if not emit.any():
                    break
                for b in np.flatnonzero(emit):
                    self.tokens[b].append(int(best[b]))
                    self.frames[b].append(t)
                pred, h, c = self.net.step(best.astype(np.int64), self.h, self.c)
                self.pred = np.where(emit[:, None], pred, self.pred)
                self.h, self.c = np.where(emit[None, :, None], h, self.h), np.where(emit[None, :, None], c, self.c)
                active = emit

    def paths(self, b: int) -> list[Path]:
        return [Path(tuple(self.tokens[b]), tuple(self.frames[b]), float(self.scores[b]))]


class BeamSearch(FrameBeam):
    """asrkit.rnnt_beam.FrameBeam's time-synchronous beam search on the exported graphs, for one utterance (the
    same steps as asrkit.models.transducer_search.BeamSearch)."""

    def __init__(self, net: Network, beam: int, max_symbols: int, fusion: WordFusion | None = None) -> None:
        self.net = net
        pred, h, c = net.step(np.zeros(1, dtype=np.int64), *net.start_state(1))
        super().__init__(beam, max_symbols, pred[0], (h, c), fusion)

    def advance(self, enc: np.ndarray) -> None:
        """Consume the projected encoder frames (T', J) of the utterance."""
        for t in range(enc.shape[0]):
            self.frame(enc[t], t)

    def joint(self, enc_t: np.ndarray, current: list[Hyp]) -> np.ndarray:
        pred = np.stack([h.pred for h in current])  # (N, J)
        return self.net.joint(np.ascontiguousarray(np.broadcast_to(enc_t, pred.shape)), pred)

    def blank_and_top(self, logp: np.ndarray, k: int) -> tuple[list[float], list[list[tuple[float, int]]]]:
        if not k:
            return logp[:, BLANK].tolist(), []
        top = np.argsort(-logp[:, 1:], axis=1, kind="stable")[:, :k]  # (N, k), best first
        return logp[:, BLANK].tolist(), [[(float(logp[n, tok + 1]), tok + 1) for tok in row]
                                         for n, row in enumerate(top.tolist())]

    def grow(self, tokens: list[int], parents: list[Hyp]) -> list[tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]]:
        h_in = np.concatenate([p.state[0] for p in parents], axis=1)
        c_in = np.concatenate([p.state[1] for p in parents], axis=1)
        out, h, c = self.net.step(np.array(tokens, dtype=np.int64), h_in, c_in)
        return [(out[j], (h[:, j : j + 1], c[:, j : j + 1])) for j in range(len(tokens))]


def transducer_decode(net: Network, enc: np.ndarray, lengths: np.ndarray, search: Any, lm: Any,
                      tokenizer: Tokenizer, frame_shift: float) -> list[list[Hypothesis]]:
    """N-best lists of a batch of projected encoder frames (B, T', J) under a resolved search
    (Transducer.decode's choices): batched greedy without an LM at beam 1, else a beam search per utterance;
    `frame_shift`: seconds per encoder frame."""
    if search.beam_size == 1 and not search.lm:
        greedy = GreedySearch(net, enc.shape[0], search.max_symbols)
        greedy.advance(enc, lengths)
        return [[to_hypothesis(greedy.paths(b)[0], tokenizer, frame_shift)] for b in range(enc.shape[0])]
    fusion = None
    if lm is not None and search.lm_weight:
        from asrkit.models.fusion import WordFusion  # the LM's bookkeeping (this imports torch, unused here)

        fusion = WordFusion(lm, tokenizer.vocab, search.lm_weight, search.lm_bonus)
    out = []
    for b in range(enc.shape[0]):
        beam = BeamSearch(net, search.beam_size, search.max_symbols, fusion)
        beam.advance(enc[b, : int(lengths[b])])
        out.append([to_hypothesis(p, tokenizer, frame_shift) for p in beam.paths()[: search.nbest]])
    return out
