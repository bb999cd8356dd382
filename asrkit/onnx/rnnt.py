"""The transducer's searches in numpy over its exported predictor and joiner graphs: the steps of
asrkit.models.transducer_search (batched greedy search; time-synchronous beam search with merged prefixes and
word-LM shallow fusion), so that both runtimes decode alike.

Shapes: N hypotheses (the batch for greedy, the beam for beam search), J joint size, V vocabulary (blank = 0),
L predictor layers, P predictor units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from asrkit.data.tokenizer import Tokenizer
from asrkit.decoding import word_timings
from asrkit.records import Hypothesis

if TYPE_CHECKING:
    from asrkit.models.fusion import Fused, WordFusion

BLANK = 0  # also the predictor's start symbol


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


@dataclass(frozen=True)
class Path:
    tokens: tuple[int, ...]
    frames: tuple[int, ...]
    score: float


def to_hypothesis(path: Path, tokenizer: Tokenizer, frame_shift: float) -> Hypothesis:
    """`frame_shift`: seconds per encoder frame."""
    words = word_timings(path.tokens, path.frames, tokenizer.vocab, frame_shift)
    return Hypothesis(tokenizer.decode(path.tokens), path.tokens, path.score, words)


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


@dataclass
class _Hyp:
    tokens: tuple[int, ...]
    frames: tuple[int, ...]
    score: float  # log p_model(tokens | frames so far)
    pred: np.ndarray  # (J,) projected predictor output after `tokens`
    state: tuple[np.ndarray, np.ndarray]  # predictor h, c after `tokens`, each (L, 1, P)
    fused: Fused | None = None  # the word LM's side of `tokens`, None without an LM
    lm: float = 0.0  # its weighted score, part of the ranking


def _logaddexp(a: float, b: float) -> float:
    hi, lo = max(a, b), min(a, b)
    return hi + math.log1p(math.exp(lo - hi)) if lo > -math.inf else hi


class BeamSearch:
    """Time-synchronous beam search for one utterance (asrkit.models.transducer_search.BeamSearch): in every
    encoder frame each hypothesis grows by up to `max_symbols` tokens; hypotheses that end the frame with the same
    tokens are merged, the `beam` best kept; with `fusion`, ranked with the word LM's weighted score."""

    def __init__(self, net: Network, beam: int, max_symbols: int, fusion: WordFusion | None = None) -> None:
        self.net, self.beam_size, self.max_symbols, self.fusion = net, beam, max_symbols, fusion
        pred, h, c = net.step(np.zeros(1, dtype=np.int64), *net.start_state(1))
        self.beam = [_Hyp((), (), 0.0, pred[0], (h, c), fusion.start() if fusion is not None else None)]

    def _extend_lm(self, h: _Hyp, token: int) -> tuple[Any, float]:
        if self.fusion is None or h.fused is None:
            return None, 0.0
        fused = self.fusion.extend(h.fused, token)
        return fused, self.fusion.value(fused)

    def advance(self, enc: np.ndarray) -> None:
        """Consume the projected encoder frames (T', J) of the utterance."""
        for t in range(enc.shape[0]):
            self._frame(enc[t], t)

    def _frame(self, enc_t: np.ndarray, t: int) -> None:
        ended: dict[tuple[int, ...], _Hyp] = {}  # hypotheses that emitted the blank in this frame
        current = self.beam
        for v in range(self.max_symbols + 1):
            pred = np.stack([h.pred for h in current])  # (N, J)
            logp = self.net.joint(np.ascontiguousarray(np.broadcast_to(enc_t, pred.shape)), pred)  # (N, V)
            vocab = logp.shape[1]
            for h, lp in zip(current, logp[:, BLANK].tolist(), strict=True):
                old = ended.get(h.tokens)
                score = h.score + lp
                if old is None:
                    ended[h.tokens] = _Hyp(h.tokens, h.frames, score, h.pred, h.state, h.fused, h.lm)
                else:  # the same tokens by another alignment: add the probabilities, keep the better timing
                    frames = old.frames if old.score >= score else h.frames
                    ended[h.tokens] = _Hyp(h.tokens, frames, _logaddexp(old.score, score), h.pred, h.state,
                                           h.fused, h.lm)
            if v == self.max_symbols or vocab == 1:
                break
            k = min(self.beam_size, vocab - 1)
            top = np.argsort(-logp[:, 1:], axis=1, kind="stable")[:, :k]  # (N, k), best first
            candidates = []  # (ranking score, parent, token, model score, LM state, LM score)
            for n, h in enumerate(current):
                for tok in top[n].tolist():
                    lp = float(logp[n, tok + 1])
                    fused, lm = self._extend_lm(h, tok + 1)
                    candidates.append((h.score + lp + lm, n, tok + 1, h.score + lp, fused, lm))
            grown = sorted(candidates, key=lambda g: g[0], reverse=True)[: self.beam_size]
            if len(ended) >= self.beam_size:
                floor = sorted((h.score + h.lm for h in ended.values()), reverse=True)[self.beam_size - 1]
                grown = [g for g in grown if g[0] > floor]  # further growth only lowers a score
            if not grown:
                break
            parents = [current[g[1]] for g in grown]
            h_in = np.concatenate([p.state[0] for p in parents], axis=1)
            c_in = np.concatenate([p.state[1] for p in parents], axis=1)
            out, h_new, c_new = self.net.step(np.array([g[2] for g in grown], dtype=np.int64), h_in, c_in)
            current = [_Hyp(p.tokens + (tok,), p.frames + (t,), score, out[j],
                            (h_new[:, j : j + 1], c_new[:, j : j + 1]), fused, lm)
                       for j, ((_, _, tok, score, fused, lm), p) in enumerate(zip(grown, parents, strict=True))]
        self.beam = sorted(ended.values(), key=lambda h: h.score + h.lm, reverse=True)[: self.beam_size]

    def paths(self) -> list[Path]:
        """The beam's hypotheses, best first; with an LM, scored with their words completed and </s>."""
        if self.fusion is None:
            return [Path(h.tokens, h.frames, h.score) for h in self.beam]
        fusion = self.fusion
        scored = [Path(h.tokens, h.frames, h.score + fusion.final(h.fused))  # type: ignore[arg-type]
                  for h in self.beam]
        return sorted(scored, key=lambda p: p.score, reverse=True)


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
