"""Decoding an RNN-Transducer, frame-synchronously: batched greedy search and a beam search with merged prefixes.
Both take encoder frames (already through the joint network's encoder projection) as they come, a whole
utterance or chunk by chunk (streaming), and follow the same steps either way.

The beam search's steps are asrkit.rnnt_beam's, shared with the ONNX runtime. Shapes: N hypotheses (the batch
for greedy, the beam for beam search), J joint size, V vocabulary (blank = 0).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import torch
from torch import nn

from asrkit.rnnt_beam import BLANK, FrameBeam, Hyp, Path, to_hypothesis

if TYPE_CHECKING:  # for the type hints only
    from asrkit.models.fusion import WordFusion

__all__ = ["BLANK", "BeamSearch", "GreedySearch", "LSTMState", "Path", "to_hypothesis"]
LSTMState = tuple[torch.Tensor, torch.Tensor]  # (h, c), each (layers * directions, N, H)


class Predictor(Protocol):
    """What the searches call of the prediction network (asrkit.models.transducer.Predictor)."""

    def step(self, tokens: torch.Tensor, state: LSTMState | None) -> tuple[torch.Tensor, LSTMState]: ...


class Joiner(Protocol):
    """What the searches use of the joint network (asrkit.models.transducer.Joiner)."""

    pred_proj: nn.Linear
    out: nn.Linear

    def __call__(self, enc_j: torch.Tensor, pred_j: torch.Tensor) -> torch.Tensor: ...


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


class BeamSearch(FrameBeam):
    """asrkit.rnnt_beam.FrameBeam's time-synchronous beam search on the PyTorch predictor and joiner, for one
    utterance, its frames as they come (`advance`)."""

    def __init__(self, predictor: Predictor, joiner: Joiner, beam: int, max_symbols: int,
                 device: torch.device, fusion: WordFusion | None = None) -> None:
        self.predictor, self.joiner = predictor, joiner
        out, state = predictor.step(torch.full((1,), BLANK, dtype=torch.long, device=device), None)
        super().__init__(beam, max_symbols, joiner.pred_proj(out)[0], state, fusion)
        self.t = 0

    def advance(self, enc_j: torch.Tensor, lengths: torch.Tensor | None = None) -> None:
        """Consume projected encoder frames (1, t, J) (`lengths`: absolute, frames at or past it are skipped)."""
        n = enc_j.shape[1] if lengths is None else max(0, min(enc_j.shape[1], int(lengths[0]) - self.t))
        for i in range(n):
            self.frame(enc_j[0, i], self.t + i)
        self.t += enc_j.shape[1]

    def joint(self, enc_t: torch.Tensor, current: list[Hyp]) -> torch.Tensor:
        pred_j = torch.stack([h.pred for h in current])  # (N, J)
        return torch.log_softmax(self.joiner(enc_t[None], pred_j).float(), dim=-1)

    def blank_and_top(self, logp: torch.Tensor, k: int) -> tuple[list[float], list[list[tuple[float, int]]]]:
        if not k:
            return logp[:, BLANK].tolist(), []
        top_logp, top_tok = logp[:, 1:].topk(k, dim=-1)  # (N, k)
        return logp[:, BLANK].tolist(), [list(zip(lps, [t + 1 for t in toks], strict=True))
                                         for lps, toks in zip(top_logp.tolist(), top_tok.tolist(), strict=True)]

    def grow(self, tokens: list[int], parents: list[Hyp]) -> list[tuple[torch.Tensor, LSTMState]]:
        state = tuple(torch.cat([p.state[k] for p in parents], dim=1) for k in range(2))
        out, (h, c) = self.predictor.step(torch.tensor(tokens, device=parents[0].pred.device),
                                          state)  # type: ignore[arg-type]
        proj = self.joiner.pred_proj(out)  # (N', J)
        return [(proj[j], (h[:, j : j + 1], c[:, j : j + 1])) for j in range(len(tokens))]
