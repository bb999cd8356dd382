"""Decoding an attention model's output steps: greedy and beam search over a step function, with optional
scorers added to each candidate token (a KenLM n-gram over the model's own tokens for shallow fusion, and the
CTC prefix score of the listener's CTC head).

The searches know nothing of LAS itself: `step(prev, state)` gives the log-probabilities of the next token for
each row, and the state's last field holds the attention weights to keep. Shapes: B utterances, K beam,
N = B x K rows, V vocabulary, C candidate tokens per hypothesis, T' encoder frames, H attention heads.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from asrkit.models.layers import length_mask

if TYPE_CHECKING:
    from asrkit.lm import UnitLM

EOS = 0  # also the start-of-sentence input (the blank of CTC models)

State = tuple[torch.Tensor, ...]  # (h (N, L, S), c (N, L, S), context (N, D), weights (N, H, T'))


class Found(NamedTuple):
    tokens: tuple[int, ...]  # without the end of sentence
    score: float  # log-probability; with scorers (1 - w_ctc) x it + w_ctc x CTC prefix score + w_lm x LM
    weights: torch.Tensor  # (U', H, T') attention of each step; U' = len(tokens) + 1 when it ended with EOS


StepFn = Callable[[torch.Tensor, State], tuple[torch.Tensor, State]]  # prev (N,) -> log-probs (N, V), state


def greedy_search(step: StepFn, state: State, max_lens: list[int]) -> list[Found]:
    """The most likely token at each step, for a batch, until EOS or max_lens[b] tokens."""
    b = len(max_lens)
    prev = torch.full((b,), EOS, dtype=torch.long, device=state[0].device)
    tokens, logps, weights = [], [], []
    done = [False] * b
    ends = [0] * b  # steps taken by each utterance
    for i in range(max(max_lens)):
        logp, state = step(prev, state)
        best, prev = logp.max(-1)
        tokens.append(prev.tolist())
        logps.append(best.tolist())
        weights.append(state[3])
        for j in range(b):
            if not done[j]:
                ends[j] = i + 1
                done[j] = tokens[i][j] == EOS or i + 1 >= max_lens[j]
        if all(done):
            break
    found = []
    for j in range(b):
        seq = [tokens[i][j] for i in range(ends[j])]
        score = sum(logps[i][j] for i in range(ends[j]))
        found.append(Found(tuple(seq[:-1] if seq[-1] == EOS else seq), score,
                           torch.stack([weights[i][j] for i in range(ends[j])])))
    return found


CTC_CAP = (1.5, 4)  # an attention search without CTC scoring stops after 1.5 x the CTC head's length + 4 tokens


def ctc_length_caps(max_lens: list[int], logits: torch.Tensor, lens: torch.Tensor) -> list[int]:
    """max_lens lowered to CTC_CAP of the tokens the CTC head's best path holds (logits (B, T', V), blank = EOS):
    an attention decoder that never says EOS (it loops on a phrase) stops near the length the CTC head hears
    instead of max_len_ratio x T' tokens, several times the answer's length."""
    best = logits.argmax(-1)
    caps = []
    for j, (cap, n) in enumerate(zip(max_lens, lens.tolist(), strict=True)):
        heard = int((torch.unique_consecutive(best[j, :n]) != EOS).sum())
        caps.append(max(1, min(cap, math.ceil(CTC_CAP[0] * heard) + CTC_CAP[1])))
    return caps


class LMScorer:
    """Shallow fusion: weight x the unit LM's log-probability of each candidate (EOS scores as </s>); the LM is
    an asrkit.lm.UnitLM, loaded once outside the model."""

    def __init__(self, lm: UnitLM, weight: float) -> None:
        self.lm, self.weight = lm, weight

    def start(self, b: int, k: int) -> list[list[Any]]:
        return [[self.lm.start()] * k for _ in range(b)]

    def score(self, states: Any, cands: torch.Tensor, alive: torch.Tensor) -> tuple[torch.Tensor, Any]:
        scores = torch.zeros(cands.shape)
        new: list[list[list[Any]]] = []
        for j, (per_beam, live) in enumerate(zip(cands.tolist(), alive.tolist(), strict=True)):
            new.append([])
            for s, (tokens, ok) in enumerate(zip(per_beam, live, strict=True)):
                outs = []
                for c, t in enumerate(tokens):
                    logp, out = self.lm.score(states[j][s], t) if ok else (0.0, None)
                    scores[j, s, c] = logp
                    outs.append(out)
                new[j].append(outs)
        return self.weight * scores.to(cands.device), new

    def select(self, new: Any, src: torch.Tensor, col: torch.Tensor) -> Any:
        return [[new[j][s][c] for s, c in zip(srcs, cols, strict=True)]
                for j, (srcs, cols) in enumerate(zip(src.tolist(), col.tolist(), strict=True))]


class CTCScorer:
    """Joint CTC/attention decoding (Watanabe et al. 2017): weight x the change in the CTC prefix score
    log p_CTC(prefix... | x) of the listener's CTC head. The CTC blank (id 0) never extends a prefix; a
    candidate EOS scores the whole hypothesis, log p_CTC(prefix | x). Frames past an utterance's length count
    as impossible, and its EOS reads the forward variables at its last real frame.

    State per hypothesis: forward variables r (T', 2) (ending in a non-blank / a blank), the prefix score, the
    last token."""

    def __init__(self, log_probs: torch.Tensor, lengths: torch.Tensor, weight: float) -> None:
        t = log_probs.shape[1]
        real = length_mask(lengths, t)
        self.x = log_probs.float().masked_fill(~real[:, :, None], float("-inf"))  # (B, T', V)
        self.last_frame = (lengths - 1).clamp(min=0)
        self.weight = weight
        self.step = 0  # tokens in every hypothesis so far (the search is synchronous)

    def start(self, b: int, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        r = torch.full((b, k, self.x.shape[1], 2), float("-inf"), device=self.x.device)
        r[..., 1] = self.x[:, :, EOS].cumsum(1)[:, None, :]
        return r, torch.zeros(b, k, device=self.x.device), torch.full((b, k), -1, device=self.x.device)

    def score(self, state: Any, cands: torch.Tensor, alive: torch.Tensor) -> tuple[torch.Tensor, Any]:
        r_prev, psi_prev, last = state  # (B, K, T', 2), (B, K), (B, K)
        b, k, c = cands.shape
        t_max = self.x.shape[1]
        xc = self.x.gather(2, cands.view(b, 1, k * c).expand(-1, t_max, -1)).view(b, t_max, k, c)
        xc = xc.permute(0, 2, 3, 1)  # (B, K, C, T') log-probs of each candidate
        blank = self.x[:, None, None, :, EOS]  # (B, 1, 1, T')
        r_sum = torch.logaddexp(r_prev[..., 0], r_prev[..., 1])  # (B, K, T')
        phi = r_sum[:, :, None, :].expand(-1, -1, c, -1).clone()
        same = cands == last[:, :, None]
        phi[same] = r_prev[..., 1][:, :, None, :].expand(-1, -1, c, -1)[same]  # a repeat needs a blank between
        r = torch.full((b, k, c, t_max, 2), float("-inf"), device=self.x.device)
        if self.step == 0:
            r[:, :, :, 0, 0] = xc[..., 0]
        start = max(self.step, 1)
        psi = r[:, :, :, start - 1, 0].clone()
        for t in range(start, t_max):
            r[..., t, 0] = torch.logaddexp(r[..., t - 1, 0], phi[..., t - 1]) + xc[..., t]
            r[..., t, 1] = torch.logaddexp(r[..., t - 1, 0], r[..., t - 1, 1]) + blank[..., t]
            psi = torch.logaddexp(psi, phi[..., t - 1] + xc[..., t])
        end = r_sum.gather(2, self.last_frame.view(b, 1, 1).expand(-1, k, 1))  # (B, K, 1)
        psi = torch.where(cands == EOS, end.expand(-1, -1, c), psi)
        delta = (psi - psi_prev[:, :, None]).masked_fill(~alive[:, :, None], 0.0)
        return self.weight * delta, (r, psi, cands)

    def select(self, new: Any, src: torch.Tensor, col: torch.Tensor) -> Any:
        self.step += 1
        r, psi, cands = new
        b, k = src.shape
        rows = torch.arange(b, device=src.device)[:, None]
        return r[rows, src, col], psi[rows, src, col], cands[rows, src, col]


Scorer = LMScorer | CTCScorer


def beam_search(step: StepFn, state: State, max_lens: list[int], beam: int, scorers: Sequence[Scorer] = (),
                att_weight: float = 1.0) -> list[list[Found]]:
    """Beam search for a batch; state rows are (B x K), hypothesis k of utterance b at row b*K + k.

    Each step keeps the K best of all extensions; one ending in EOS is finished and leaves the beam (refilled
    from the others next step). An utterance stops when K finished hypotheses score above every unfinished one
    (whose scores only fall), or after max_lens[b] tokens (the unfinished ones are then kept as they are;
    length and coverage penalties re-rank afterwards but do not steer the search). With `scorers` (LM, CTC),
    each hypothesis extends only its max(2K, 8) likeliest tokens and EOS, each scored
    att_weight x log p + the scorers' weighted scores. Returns the finished hypotheses of each utterance."""
    b, k = len(max_lens), beam
    device = state[0].device
    scores = torch.full((b, k), float("-inf"), device=device)
    scores[:, 0] = 0.0
    prev = torch.full((b * k,), EOS, dtype=torch.long, device=device)
    extra = [s.start(b, k) for s in scorers]
    history: list[tuple[list[list[int]], list[list[int]], torch.Tensor]] = []  # tokens, sources, weights
    finished: list[list[Found]] = [[] for _ in range(b)]
    done = [False] * b

    def backtrack(j: int, slot: int) -> tuple[list[int], torch.Tensor]:
        seq, rows = [], []
        for toks, srcs, w in reversed(history):
            seq.append(toks[j][slot])
            rows.append(w[j * k + slot])
            slot = srcs[j][slot]
        return seq[::-1], torch.stack(rows[::-1])

    for i in range(max(max_lens)):
        logp, state = step(prev, state)
        v = logp.shape[-1]
        logp = logp.view(b, k, v)
        if scorers:
            top = logp.topk(min(v, max(2 * k, 8)), dim=-1).indices
            cands = torch.cat([top, torch.full_like(top[..., :1], EOS)], -1)  # (B, K, C): EOS is always one
            cand_scores = att_weight * logp.gather(2, cands)
            cand_scores[..., -1] = cand_scores[..., -1].masked_fill((top == EOS).any(-1), float("-inf"))  # twice
            news = []
            for scorer, st in zip(scorers, extra, strict=True):
                add, new = scorer.score(st, cands, torch.isfinite(scores))
                cand_scores = cand_scores + add
                news.append(new)
        else:
            cands = torch.arange(v, device=device).expand(b, k, v)
            cand_scores = logp
        c = cands.shape[-1]
        top_scores, index = (scores[:, :, None] + cand_scores).view(b, k * c).topk(k, dim=-1)  # (B, K)
        src, col = index // c, index % c
        tok = cands.reshape(b, k * c).gather(1, index)
        if scorers:
            extra = [s.select(new, src, col) for s, new in zip(scorers, news, strict=True)]
        state = tuple(s[(torch.arange(b, device=device)[:, None] * k + src).view(-1)] for s in state)
        tok_list = tok.tolist()
        history.append((tok_list, src.tolist(), state[3]))
        scores, prev = top_scores.clone(), tok.view(-1)
        top_list = top_scores.tolist()
        for j in range(b):
            if done[j]:
                scores[j] = float("-inf")
                continue
            last = i + 1 >= max_lens[j]
            for s in range(k):
                if math.isfinite(top_list[j][s]) and (tok_list[j][s] == EOS or last):
                    seq, weights = backtrack(j, s)
                    found = Found(tuple(seq[:-1] if seq[-1] == EOS else seq), top_list[j][s], weights)
                    finished[j].append(found)
                    scores[j, s] = float("-inf")
            alive = [x for x in scores[j].tolist() if math.isfinite(x)]
            kth = sorted((f.score for f in finished[j]), reverse=True)[k - 1] if len(finished[j]) >= k else None
            done[j] = last or not alive or (kth is not None and max(alive) < kth)
            if done[j]:
                scores[j] = float("-inf")
        if all(done):
            break
    return finished
