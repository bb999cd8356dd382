"""The transducer's time-synchronous beam search, written once for both runtimes: asrkit.models.transducer_search
runs it on the PyTorch model, asrkit.onnx.rnnt on the exported graphs in numpy (this module imports neither, so
the ONNX runtime stays free of torch). A backend supplies the joint network's log-probabilities for the
hypotheses of a frame, their blank and best tokens, and the predictor step that grows them.

Shapes: N hypotheses in the beam, V vocabulary (blank = 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from asrkit.beam_search import logaddexp
from asrkit.data.tokenizer import Tokenizer
from asrkit.decoding import word_timings
from asrkit.records import Hypothesis

if TYPE_CHECKING:  # for the type hints only
    from asrkit.models.fusion import Fused, WordFusion

BLANK = 0  # also the predictor's start symbol


@dataclass(frozen=True)
class Path:
    """A decoded token sequence: tokens, the encoder frame each was emitted at, log-probability."""

    tokens: tuple[int, ...]
    frames: tuple[int, ...]
    score: float


def to_hypothesis(path: Path, tokenizer: Tokenizer, frame_shift: float) -> Hypothesis:
    """`frame_shift`: seconds per encoder frame."""
    words = word_timings(path.tokens, path.frames, tokenizer.vocab, frame_shift)
    return Hypothesis(tokenizer.decode(path.tokens), path.tokens, path.score, words)


@dataclass
class Hyp:
    tokens: tuple[int, ...]
    frames: tuple[int, ...]
    score: float  # log p_model(tokens | frames so far)
    pred: Any  # (J,) projected predictor output after `tokens`, in the backend's array type
    state: Any  # predictor state after `tokens` (h, c), each (L, 1, P)
    fused: Fused | None = None  # the word LM's side of `tokens` (shallow fusion), None without an LM
    lm: float = 0.0  # its weighted score (WordFusion.value), part of the ranking


class FrameBeam:
    """Time-synchronous beam search for one utterance (Saon et al. 2020): in every encoder frame each hypothesis
    may grow by up to `max_symbols` tokens; hypotheses that end the frame with the same tokens are merged (their
    probabilities add), and the `beam` best are kept. Expansion in a frame stops once no new hypothesis could
    enter the beam. Every hypothesis ends a frame with a blank, so `max_symbols` must cover the longest burst the
    model emits in one frame (characters at 60 ms frames: a whole word); greedy search instead moves on.

    With `fusion` (a word LM, asrkit.models.fusion), hypotheses are ranked by the model's score plus the LM's
    weighted score of their words (shallow fusion); merged hypotheses share their tokens, hence their LM score.

    A backend subclass implements `joint`, `blank_and_top` and `grow`, and starts the beam with the predictor's
    output and state after the start symbol."""

    def __init__(self, beam: int, max_symbols: int, pred: Any, state: Any, fusion: WordFusion | None) -> None:
        if beam < 1:
            raise ValueError(f"beam_size must be at least 1, got {beam}")
        self.beam_size, self.max_symbols, self.fusion = beam, max_symbols, fusion
        self.beam = [Hyp((), (), 0.0, pred, state, fusion.start() if fusion is not None else None)]

    def joint(self, enc_t: Any, current: list[Hyp]) -> Any:
        """Log-probabilities (N, V) of the next symbol of each hypothesis at encoder frame enc_t (J,)."""
        raise NotImplementedError

    def blank_and_top(self, logp: Any, k: int) -> tuple[list[float], list[list[tuple[float, int]]]]:
        """Each row's blank log-probability, and its k likeliest other tokens as (log-probability, token), best
        first (k = 0: none)."""
        raise NotImplementedError

    def grow(self, tokens: list[int], parents: list[Hyp]) -> list[tuple[Any, Any]]:
        """The predictor fed tokens[i] after parents[i]: (projected output, state) for each."""
        raise NotImplementedError

    def _extend_lm(self, h: Hyp, token: int) -> tuple[Fused | None, float]:
        if self.fusion is None or h.fused is None:
            return None, 0.0
        fused = self.fusion.extend(h.fused, token)
        return fused, self.fusion.value(fused)

    def frame(self, enc_t: Any, t: int) -> None:
        """Consume encoder frame t (J,)."""
        ended: dict[tuple[int, ...], Hyp] = {}  # hypotheses that emitted the blank in this frame
        current = self.beam
        for v in range(self.max_symbols + 1):
            logp = self.joint(enc_t, current)
            vocab = logp.shape[1]
            last = v == self.max_symbols or vocab == 1
            blank, top = self.blank_and_top(logp, 0 if last else min(self.beam_size, vocab - 1))
            for h, lp in zip(current, blank, strict=True):
                old = ended.get(h.tokens)
                score = h.score + lp
                if old is None:
                    ended[h.tokens] = Hyp(h.tokens, h.frames, score, h.pred, h.state, h.fused, h.lm)
                else:  # the same tokens by another alignment: add the probabilities, keep the better timing
                    frames = old.frames if old.score >= score else h.frames
                    ended[h.tokens] = Hyp(h.tokens, frames, logaddexp(old.score, score), h.pred, h.state,
                                          h.fused, h.lm)
            if last:
                break
            candidates = []  # (ranking score, parent, token, model score, LM state, LM score)
            for n, h in enumerate(current):
                for lp, tok in top[n]:
                    fused, lm = self._extend_lm(h, tok)
                    candidates.append((h.score + lp + lm, n, tok, h.score + lp, fused, lm))
            grown = sorted(candidates, key=lambda g: g[0], reverse=True)[: self.beam_size]
            if len(ended) >= self.beam_size:
                floor = sorted((h.score + h.lm for h in ended.values()), reverse=True)[self.beam_size - 1]
                grown = [g for g in grown if g[0] > floor]  # further growth only lowers a score
            if not grown:
                break
            parents = [current[g[1]] for g in grown]
            new = self.grow([g[2] for g in grown], parents)
            current = [Hyp(p.tokens + (tok,), p.frames + (t,), score, pred, state, fused, lm)
                       for (pred, state), (_, _, tok, score, fused, lm), p in zip(new, grown, parents, strict=True)]
        self.beam = sorted(ended.values(), key=lambda h: h.score + h.lm, reverse=True)[: self.beam_size]

    def paths(self, b: int = 0) -> list[Path]:
        """The beam's hypotheses, best first; with an LM, scored and ranked with their words completed and </s>."""
        if self.fusion is None:
            return [Path(h.tokens, h.frames, h.score) for h in self.beam]
        fusion = self.fusion
        scored = [Path(h.tokens, h.frames, h.score + fusion.final(h.fused))  # type: ignore[arg-type]
                  for h in self.beam]
        return sorted(scored, key=lambda p: p.score, reverse=True)

    def stable(self, b: int = 0) -> tuple[int, ...]:
        """The longest token prefix all hypotheses in the beam share: whatever wins extends it."""
        first = self.beam[0].tokens
        n = len(first)
        for h in self.beam[1:]:
            n = next((i for i, (a, c) in enumerate(zip(first[:n], h.tokens, strict=False)) if a != c),
                     min(n, len(h.tokens)))
        return first[:n]
