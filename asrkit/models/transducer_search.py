"""Decoding an RNN-Transducer, frame-synchronously: batched greedy search and a beam search with merged prefixes.
Both take encoder frames (already through the joint network's encoder projection) as they come, a whole
utterance or chunk by chunk (streaming), and follow the same steps either way.

Shapes: N hypotheses (the batch for greedy, the beam for beam search), J joint size, V vocabulary (blank = 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch
from torch import nn

from asrkit.data.tokenizer import Tokenizer
from asrkit.decoding import word_timings
from asrkit.records import Hypothesis

if TYPE_CHECKING:  # for the type hints only
    from asrkit.models.fusion import Fused, WordFusion

BLANK = 0  # also the predictor's start symbol
LSTMState = tuple[torch.Tensor, torch.Tensor]  # (h, c), each (layers * directions, N, H)


class Predictor(Protocol):
    """What the searches call of the prediction network (asrkit.models.transducer.Predictor)."""

    def step(self, tokens: torch.Tensor, state: LSTMState | None) -> tuple[torch.Tensor, LSTMState]: ...


class Joiner(Protocol):
    """What the searches use of the joint network (asrkit.models.transducer.Joiner)."""

    pred_proj: nn.Linear
    out: nn.Linear

    def __call__(self, enc_j: torch.Tensor, pred_j: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class Path:
    """A decoded token sequence: tokens, the encoder frame each was emitted at, log-probability."""

    tokens: tuple[int, ...]
    frames: tuple[int, ...]
    score: float


class GreedySearch:
    """Batched greedy decoding: in every encoder frame emit the argmax until it is the blank (or `max_symbols`)."""

    def __init__(self, predictor: Predictor, joiner: Joiner, batch: int, max_symbols: int,
                 device: torch.device) -> None:
        self.predictor, self.joiner, self.max_symbols = predictor, joiner, max_symbols
        out, self.state = predictor.step(torch.full((batch,), BLANK, dtype=torch.long, device=device), None)
        self.pred_j = joiner.pred_proj(out)  # (B, J)
        self.tokens: list[list[int]] = [[] for _ in range(batch)]
        self.frames: list[list[int]] = [[] for _ in range(batch)]
        self.scores = torch.zeros(batch, dtype=torch.float64, device=device)
        self.t = 0  # encoder frames consumed so far

    def advance(self, enc_j: torch.Tensor, lengths: torch.Tensor | None = None) -> None:
        """Consume projected encoder frames (B, t, J); frames at or past `lengths` (absolute) are skipped."""
        for i in range(enc_j.shape[1]):
            t = self.t + i
            active = (torch.ones(enc_j.shape[0], dtype=torch.bool, device=enc_j.device) if lengths is None
                      else lengths > t)
            for _ in range(self.max_symbols):
                logp = torch.log_softmax(self.joiner(enc_j[:, i], self.pred_j).float(), dim=-1)  # (B, V)
                best_logp, best = logp.max(dim=-1)
                emit = active & (best != BLANK)
                self.scores += torch.where(active, best_logp.double(), 0.0)
                emitted = [(b, tok) for b, (tok, e) in enumerate(zip(best.tolist(), emit.tolist(), strict=True)) if e]
                if not emitted:
                    break
                for b, tok in emitted:
                    self.tokens[b].append(tok)
                    self.frames[b].append(t)
                out, state = self.predictor.step(best, self.state)
                self.pred_j = torch.where(emit[:, None], self.joiner.pred_proj(out), self.pred_j)
                self.state = tuple(torch.where(emit[None, :, None], new, old)  # type: ignore[assignment]
                                   for new, old in zip(state, self.state, strict=True))
                active = emit
        self.t += enc_j.shape[1]

    def paths(self, b: int = 0) -> list[Path]:
        return [Path(tuple(self.tokens[b]), tuple(self.frames[b]), float(self.scores[b]))]

    def stable(self, b: int = 0) -> tuple[int, ...]:
        """Tokens no later frame can change: greedy never revises."""
        return tuple(self.tokens[b])


@dataclass
class _Hyp:
    tokens: tuple[int, ...]
    frames: tuple[int, ...]
    score: float  # log p_model(tokens | frames so far)
    pred_j: torch.Tensor  # (J,) projected predictor output after `tokens`
    state: LSTMState  # predictor state after `tokens`, each (L, 1, P)
    fused: Fused | None = None  # the word LM's side of `tokens` (shallow fusion), None without an LM
    lm: float = 0.0  # its weighted score (WordFusion.value), part of the ranking


def _logaddexp(a: float, b: float) -> float:
    hi, lo = max(a, b), min(a, b)
    return hi + math.log1p(math.exp(lo - hi)) if lo > -math.inf else hi


class BeamSearch:
    """Time-synchronous beam search for one utterance (Saon et al. 2020): in every encoder frame each hypothesis
    may grow by up to `max_symbols` tokens; hypotheses that end the frame with the same tokens are merged (their
    probabilities add), and the `beam` best are kept. Expansion in a frame stops once no new hypothesis could
    enter the beam. Every hypothesis ends a frame with a blank, so `max_symbols` must cover the longest burst the
    model emits in one frame (characters at 60 ms frames: a whole word); greedy search instead moves on.

    With `fusion` (a word LM, asrkit.models.fusion), hypotheses are ranked by the model's score plus the LM's
    weighted score of their words (shallow fusion); merged hypotheses share their tokens, hence their LM score."""

    def __init__(self, predictor: Predictor, joiner: Joiner, beam: int, max_symbols: int,
                 device: torch.device, fusion: WordFusion | None = None) -> None:
        if beam < 1:
            raise ValueError(f"beam_size must be at least 1, got {beam}")
        self.predictor, self.joiner, self.beam_size, self.max_symbols = predictor, joiner, beam, max_symbols
        self.fusion = fusion
        out, state = predictor.step(torch.full((1,), BLANK, dtype=torch.long, device=device), None)
        fused = fusion.start() if fusion is not None else None
        self.beam = [_Hyp((), (), 0.0, joiner.pred_proj(out)[0], state, fused)]
        self.t = 0

    def _extend_lm(self, h: _Hyp, token: int) -> tuple[Fused | None, float]:
        if self.fusion is None or h.fused is None:
            return None, 0.0
        fused = self.fusion.extend(h.fused, token)
        return fused, self.fusion.value(fused)

    def advance(self, enc_j: torch.Tensor, lengths: torch.Tensor | None = None) -> None:
        """Consume projected encoder frames (1, t, J) (`lengths`: absolute, frames at or past it are skipped)."""
        n = enc_j.shape[1] if lengths is None else max(0, min(enc_j.shape[1], int(lengths[0]) - self.t))
        for i in range(n):
            self._frame(enc_j[0, i], self.t + i)
        self.t += enc_j.shape[1]

    def _frame(self, enc_t: torch.Tensor, t: int) -> None:
        ended: dict[tuple[int, ...], _Hyp] = {}  # hypotheses that emitted the blank in this frame
        current = self.beam
        vocab = self.joiner.out.out_features
        for v in range(self.max_symbols + 1):
            pred_j = torch.stack([h.pred_j for h in current])  # (N, J)
            logp = torch.log_softmax(self.joiner(enc_t[None], pred_j).float(), dim=-1)  # (N, V)
            blank_logp = logp[:, BLANK].tolist()
            for h, lp in zip(current, blank_logp, strict=True):
                old = ended.get(h.tokens)
                score = h.score + lp
                if old is None:
                    ended[h.tokens] = _Hyp(h.tokens, h.frames, score, h.pred_j, h.state, h.fused, h.lm)
                else:  # the same tokens by another alignment: add the probabilities, keep the better timing
                    frames = old.frames if old.score >= score else h.frames
                    ended[h.tokens] = _Hyp(h.tokens, frames, _logaddexp(old.score, score), h.pred_j, h.state,
                                           h.fused, h.lm)
            if v == self.max_symbols or vocab == 1:
                break
            top_logp, top_tok = logp[:, 1:].topk(min(self.beam_size, vocab - 1), dim=-1)  # (N, k)
            candidates = []  # (ranking score, parent, token, model score, LM state, LM score)
            for n, h in enumerate(current):
                for lp, tok in zip(top_logp[n].tolist(), top_tok[n].tolist(), strict=True):
                    fused, lm = self._extend_lm(h, tok + 1)
                    candidates.append((h.score + lp + lm, n, tok + 1, h.score + lp, fused, lm))
            grown = sorted(candidates, key=lambda g: g[0], reverse=True)[: self.beam_size]
            if len(ended) >= self.beam_size:
                floor = sorted((h.score + h.lm for h in ended.values()), reverse=True)[self.beam_size - 1]
                grown = [g for g in grown if g[0] > floor]  # further growth only lowers a score
            if not grown:
                break
            tokens = torch.tensor([g[2] for g in grown], device=enc_t.device)
            parents = [current[g[1]] for g in grown]
            state = tuple(torch.cat([p.state[k] for p in parents], dim=1) for k in range(2))
            out, (h_new, c_new) = self.predictor.step(tokens, state)  # type: ignore[arg-type]
            proj = self.joiner.pred_proj(out)  # (N', J)
            current = [_Hyp(p.tokens + (tok,), p.frames + (t,), score, proj[j],
                            (h_new[:, j : j + 1], c_new[:, j : j + 1]), fused, lm)
                       for j, ((_, _, tok, score, fused, lm), p) in enumerate(zip(grown, parents, strict=True))]
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


def to_hypothesis(path: Path, tokenizer: Tokenizer, frame_shift: float) -> Hypothesis:
    """`frame_shift`: seconds per encoder frame."""
    words = word_timings(path.tokens, path.frames, tokenizer.vocab, frame_shift)
    return Hypothesis(tokenizer.decode(path.tokens), path.tokens, path.score, words)
