"""Listen, Attend and Spell (Chan et al. 2016; Chiu et al. 2018): a pyramidal BLSTM listener, attention, an LSTM
speller; greedy or beam-search decoding, optional KenLM shallow fusion, attention pictures.

Shapes: B batch, T feature frames, F mel bins, T' = T / time_reduction listener frames, D listener output
(2 x listener_hidden), S speller units, U target tokens, V vocabulary, H attention heads, K beam, N = B x K.

    feats (B, T, F) -> [conv (B, T/2^c, C*F/2^c)] -> BLSTM ... pBLSTM (B, T', D)              listener
    [embed(y_i-1); c_i-1] (B, E + D) -> LSTM x speller_layers -> s_i (B, S)                   speller
    s_i, listener (B, T', D) [, previous weights (B, H, T')] -> a_i (B, H, T') -> c_i (B, D)  attention
    [s_i; c_i] -> Linear, tanh, Linear -> logits (B, V)

Token id 0 is the CTC blank of every tokenizer; LAS uses it as the start-of-sentence input and as the
end-of-sentence target, so the tokenizers stay shared between model families.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from asrkit.config import LASConfig
from asrkit.data.tokenizer import Tokenizer
from asrkit.errors import AsrkitError
from asrkit.models.layers import ASRModel, length_mask, pack, unpack
from asrkit.records import Batch, Hypothesis

EOS = 0  # also the start-of-sentence input (the blank of CTC models)
ATTENTIONS = ("dot", "additive", "location")
LOG10 = math.log(10.0)  # KenLM scores are log10
SPACE_WORD = "<sp>"  # the space of a character tokenizer, as a word of a unit LM


# ------------------------------------------------------------------------------------------------ listener


class ConvSubsampler(nn.Module):
    """3x3 convolutions with stride 2 in time and frequency, ReLU; padded frames are zeroed after each."""

    def __init__(self, n_feats: int, layers: int, channels: int) -> None:
        super().__init__()
        if not 0 <= layers <= 3:
            raise ValueError(f"las.conv_layers must be 0-3, got {layers}")
        self.convs = nn.ModuleList(nn.Conv2d(1 if i == 0 else channels, channels, 3, 2, 1) for i in range(layers))
        freq = n_feats
        for _ in range(layers):
            freq = (freq + 1) // 2
        self.out_dim = channels * freq if layers else n_feats
        self.time_reduction = 2**layers

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x * length_mask(lengths, x.shape[1])[:, :, None].to(x.dtype)
        if not self.convs:
            return x, lengths
        x = x.unsqueeze(1)  # (B, 1, T, F)
        for conv in self.convs:
            x = F.relu(conv(x))
            lengths = (lengths + 1) // 2
            x = x * length_mask(lengths, x.shape[2])[:, None, :, None].to(x.dtype)
        b, c, t, f = x.shape
        return x.permute(0, 2, 1, 3).reshape(b, t, c * f), lengths


def concat_pairs(x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, D) -> (B, ceil(T/2), 2D): frames 2t and 2t+1 side by side; an odd last frame gets a zero partner."""
    x = x * length_mask(lengths, x.shape[1])[:, :, None].to(x.dtype)
    if x.shape[1] % 2:
        x = F.pad(x, (0, 0, 0, 1))
    b, t, d = x.shape
    return x.reshape(b, t // 2, 2 * d), (lengths + 1) // 2


class Listener(nn.Module):
    """[conv front end ->] BLSTM layers; the top `pyramid_layers` of them read pairs of frames (x2 each)."""

    def __init__(self, n_feats: int, hidden: int, layers: int, pyramid_layers: int, conv_layers: int = 0,
                 conv_channels: int = 32, dropout: float = 0.0) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"las.listener_layers must be at least 1, got {layers}")
        if not 0 <= pyramid_layers <= layers:
            raise ValueError(f"las.pyramid_layers must be 0-{layers} (las.listener_layers), got {pyramid_layers}")
        self.conv = ConvSubsampler(n_feats, conv_layers, conv_channels)
        self.pyramid = [i >= layers - pyramid_layers for i in range(layers)]
        self.rnns = nn.ModuleList(
            nn.LSTM((self.conv.out_dim if i == 0 else 2 * hidden) * (2 if pyr else 1), hidden, batch_first=True,
                    bidirectional=True)
            for i, pyr in enumerate(self.pyramid))
        self.dropout = nn.Dropout(dropout)
        self.out_dim = 2 * hidden
        self.time_reduction = self.conv.time_reduction * 2**pyramid_layers

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (B, T', D), lengths (B,); padded frames are zero."""
        x, lengths = self.conv(feats, lengths)
        for i, (rnn, pyramid) in enumerate(zip(self.rnns, self.pyramid, strict=True)):
            if pyramid:
                x, lengths = concat_pairs(x, lengths)
            if i > 0:
                x = self.dropout(x)
            out, _ = rnn(pack(x, lengths))
            x = unpack(out, x.shape[1])
        return x, lengths


# ----------------------------------------------------------------------------------------------- attention


class Memory(NamedTuple):
    """What attention reads, computed once per utterance (rows repeated K times for a beam)."""

    values: torch.Tensor  # (N, T', D) listener output, projected when there are several heads
    keys: torch.Tensor  # (N, H, T', A/H)
    mask: torch.Tensor  # (N, T') True on real frames

    def repeat(self, k: int) -> Memory:
        return Memory(*(t.repeat_interleave(k, dim=0) for t in self))


class Attention(nn.Module):
    """Weights over the listener frames from the speller state, per head; padded frames get zero weight.

    dot: <phi(s), psi(h)> / sqrt(d) with learned projections (Chan et al.); additive: w . tanh(W s + V h)
    (Bahdanau et al.); location: additive plus convolution features of the previous weights (Chorowski et al.).
    Several heads (Chiu et al.) each attend with their own projections and read their own slice of the values.
    """

    def __init__(self, kind: str, query_dim: int, key_dim: int, dim: int, heads: int = 1,
                 loc_channels: int = 32, loc_kernel: int = 31) -> None:
        super().__init__()
        if kind not in ATTENTIONS:
            raise ValueError(f"unknown las.attention {kind!r}; valid: {', '.join(ATTENTIONS)}")
        if heads < 1 or dim % heads or key_dim % heads:
            raise ValueError(f"las.attention_heads {heads} must divide las.attention_dim {dim} and the listener "
                             f"output {key_dim}")
        if kind == "location" and loc_kernel % 2 == 0:
            raise ValueError(f"las.location_kernel must be odd, got {loc_kernel}")
        self.kind, self.heads, self.head_dim = kind, heads, dim // heads
        self.query = nn.Linear(query_dim, dim)
        self.key = nn.Linear(key_dim, dim)
        self.value = nn.Linear(key_dim, key_dim) if heads > 1 else None
        if kind != "dot":
            self.energy = nn.Parameter(torch.randn(heads, self.head_dim) / math.sqrt(self.head_dim))
        if kind == "location":
            self.loc_conv = nn.Conv1d(heads, heads * loc_channels, loc_kernel, padding=loc_kernel // 2,
                                      groups=heads, bias=False)
            self.loc_proj = nn.Parameter(torch.randn(heads, loc_channels, self.head_dim) / math.sqrt(loc_channels))

    def memory(self, listener: torch.Tensor, lengths: torch.Tensor) -> Memory:
        n, t, _ = listener.shape
        keys = self.key(listener).view(n, t, self.heads, self.head_dim).transpose(1, 2)  # (N, H, T', d)
        values = self.value(listener) if self.value is not None else listener
        return Memory(values, keys, length_mask(lengths, t))

    def initial_weights(self, memory: Memory) -> torch.Tensor:
        """Uniform over the real frames: the 'previous weights' of the first step. (N, H, T')"""
        uniform = memory.mask.float() / memory.mask.sum(1, keepdim=True)
        return uniform[:, None, :].expand(-1, self.heads, -1).to(memory.values.dtype)

    def forward(self, query: torch.Tensor, memory: Memory,
                previous: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """query (N, S), previous weights (N, H, T') -> context (N, D), weights (N, H, T')."""
        n, h, t, d = memory.keys.shape
        q = self.query(query).view(n, h, d)
        if self.kind == "dot":
            energies = torch.einsum("nhd,nhtd->nht", q, memory.keys) / math.sqrt(d)
        else:
            hidden = q[:, :, None, :] + memory.keys  # (N, H, T', d)
            if self.kind == "location":
                loc = self.loc_conv(previous).view(n, h, -1, t)  # (N, H, C, T')
                hidden = hidden + torch.einsum("nhct,hcd->nhtd", loc, self.loc_proj)
            energies = torch.einsum("nhtd,hd->nht", torch.tanh(hidden), self.energy)
        energies = energies.float().masked_fill(~memory.mask[:, None, :], float("-inf"))
        weights = torch.softmax(energies, dim=-1).to(memory.values.dtype)  # (N, H, T')
        values = memory.values.view(n, t, h, -1)  # (N, T', H, D/H)
        context = torch.einsum("nht,nthe->nhe", weights, values).reshape(n, -1)
        return context, weights


# ------------------------------------------------------------------------------------------------- speller


State = tuple[torch.Tensor, ...]  # (h (N, L, S), c (N, L, S), context (N, D), weights (N, H, T'))


class Speller(nn.Module):
    """LSTM decoder with input feeding: each step reads the previous token and the previous context."""

    def __init__(self, vocab_size: int, embedding_dim: int, context_dim: int, hidden: int, layers: int,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"las.speller_layers must be at least 1, got {layers}")
        self.embed = nn.Embedding(vocab_size, embedding_dim)
        self.cells = nn.ModuleList(nn.LSTMCell(embedding_dim + context_dim if i == 0 else hidden, hidden)
                                   for i in range(layers))
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Sequential(nn.Linear(hidden + context_dim, hidden), nn.Tanh(), nn.Linear(hidden, vocab_size))
        self.hidden = hidden

    def initial_state(self, n: int, context_dim: int, weights: torch.Tensor) -> State:
        zeros = weights.new_zeros(n, len(self.cells), self.hidden)
        return zeros, zeros, weights.new_zeros(n, context_dim), weights

    def step(self, prev: torch.Tensor, state: State, attention: Attention,
             memory: Memory) -> tuple[torch.Tensor, State]:
        """prev tokens (N,) -> logits (N, V), the new state."""
        h, c, context, weights = state
        x = torch.cat([self.embed(prev), context], dim=-1)
        hs, cs = [], []
        for i, cell in enumerate(self.cells):
            hi, ci = cell(x, (h[:, i], c[:, i]))
            hs.append(hi)
            cs.append(ci)
            x = self.dropout(hi)
        context, weights = attention(hi, memory, weights)
        logits = self.out(torch.cat([hi, context], dim=-1))
        return logits, (torch.stack(hs, 1), torch.stack(cs, 1), context, weights)


# ------------------------------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class Teaching:
    """Training settings that live in the model."""

    label_smoothing: float = 0.1
    sampling_rate: float = 0.0  # scheduled sampling: highest rate, reached at sampling_end_step
    sampling_start_step: int = 0
    sampling_end_step: int = 1
    ctc_weight: float = 0.0


@dataclass(frozen=True)
class Search:
    """Decoding settings (see LASConfig for their meaning)."""

    beam_size: int = 4
    nbest: int = 1
    length_penalty: float = 0.0
    coverage_penalty: float = 0.0
    max_len_ratio: float = 2.0
    lm_path: str = ""
    lm_weight: float = 0.0
    ctc_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.beam_size < 1 or not 1 <= self.nbest <= self.beam_size:
            raise ValueError(f"las.beam_size ({self.beam_size}) must be at least 1 and las.nbest ({self.nbest}) "
                             "1 to las.beam_size")
        if self.max_len_ratio <= 0:
            raise ValueError(f"las.max_len_ratio must be positive, got {self.max_len_ratio}")
        if not 0.0 <= self.ctc_weight < 1.0:
            raise ValueError(f"las.ctc_decode_weight must be in [0, 1), got {self.ctc_weight}")


# -------------------------------------------------------------------------------------------------- search


class Found(NamedTuple):
    tokens: tuple[int, ...]  # without the end of sentence
    score: float  # log-probability; with scorers (1 - w_ctc) x it + w_ctc x CTC prefix score + w_lm x LM
    weights: torch.Tensor  # (U', H, T') attention of each step; U' = len(tokens) + 1 when it ended with EOS


def unit_word(piece: str) -> str:
    """A token as a word of a unit LM: the space of a character tokenizer is SPACE_WORD, other pieces as is."""
    return SPACE_WORD if piece == " " else piece


def unit_sentence(tokenizer: Tokenizer, text: str) -> str:
    """A transcript as a line of text for a unit LM (e.g. `lmplz -o 8 --discount_fallback < units.txt`)."""
    return " ".join(unit_word(tokenizer.vocab[i]) for i in tokenizer.encode(text))


class UnitLM:
    """A KenLM n-gram whose words are the model's tokens (see `unit_word`); id 0 scores as the end of sentence."""

    def __init__(self, path: str | Path, vocab: Sequence[str]) -> None:
        from asrkit.lm import load_kenlm, require_kenlm, resolve_lm

        self.path = resolve_lm(path)
        self.model = load_kenlm(str(self.path))
        self.words = ["</s>", *(unit_word(p) for p in vocab[1:])]
        if not any(w in self.model for w in self.words[1:]):
            raise AsrkitError(f"{self.path}: none of the model's tokens ({', '.join(self.words[1:6])}, ...) is a word "
                              "of this LM; a fusion LM must be built over the same units (asrkit.models.las."
                              "unit_sentence writes its text)")
        self._state = require_kenlm().State

    def start(self) -> Any:
        state = self._state()
        self.model.BeginSentenceWrite(state)
        return state

    def score(self, state: Any, token: int) -> tuple[float, Any]:
        """Natural-log probability of the token after `state`, and the state after it."""
        out = self._state()
        return self.model.BaseScore(state, self.words[token], out) * LOG10, out


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


class LMScorer:
    """Shallow fusion: weight x the unit LM's log-probability of each candidate (EOS scores as </s>)."""

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


class LAS(ASRModel):
    """Listener, attention, speller composed; `loss` is cross-entropy with label smoothing and scheduled
    sampling (plus CTC on the listener when ctc_weight > 0), `decode` greedy or beam search."""

    def __init__(self, listener: Listener, attention: Attention, speller: Speller, *, ctc: nn.Linear | None = None,
                 teaching: Teaching | None = None, search: Search | None = None) -> None:
        super().__init__()
        self.listener, self.attention, self.speller, self.ctc = listener, attention, speller, ctc
        self.teaching, self.search = teaching or Teaching(), search or Search()
        self.time_reduction = listener.time_reduction
        self.sampling = 0.0  # the current scheduled-sampling rate, set by on_step
        self._lm: UnitLM | None = None

    def on_step(self, step: int) -> None:
        t = self.teaching
        span = max(t.sampling_end_step - t.sampling_start_step, 1)
        self.sampling = t.sampling_rate * min(max((step - t.sampling_start_step) / span, 0.0), 1.0)

    def _start(self, feats: torch.Tensor, feat_lens: torch.Tensor,
               repeat: int = 1) -> tuple[torch.Tensor, torch.Tensor, Memory, State]:
        enc, enc_lens = self.listener(feats, feat_lens)  # (B, T', D)
        memory = self.attention.memory(enc, enc_lens).repeat(repeat)
        state = self.speller.initial_state(memory.values.shape[0], enc.shape[-1],
                                           self.attention.initial_weights(memory))
        return enc, enc_lens, memory, state

    def loss(self, batch: Batch) -> torch.Tensor:
        """Cross-entropy summed over each utterance's tokens and its EOS, averaged over the batch (mixed with the
        listener's CTC loss when the model has a CTC head)."""
        enc, enc_lens, memory, state = self._start(batch.feats, batch.feat_lens)
        b, u = batch.targets.shape
        labels = F.pad(batch.targets, (0, 1))  # (B, U + 1): tokens then EOS, ignored past it
        steps = torch.arange(u + 1, device=labels.device)[None, :]
        labels = labels.masked_fill(steps == batch.target_lens[:, None], EOS)
        labels = labels.masked_fill(steps > batch.target_lens[:, None], -100)
        prev = torch.full((b,), EOS, dtype=torch.long, device=labels.device)
        logits: list[torch.Tensor] = []
        for i in range(u + 1):
            if i > 0:
                prev = labels[:, i - 1].clamp(min=0)
                if self.training and self.sampling > 0:
                    sampled = torch.multinomial(torch.softmax(logits[-1].detach().float(), -1), 1).squeeze(1)
                    prev = torch.where(torch.rand(b, device=prev.device) < self.sampling, sampled, prev)
            out, state = self.speller.step(prev, state, self.attention, memory)
            logits.append(out)
        stacked = torch.stack(logits, dim=1).float()  # (B, U + 1, V)
        loss = F.cross_entropy(stacked.transpose(1, 2), labels, ignore_index=-100, reduction="sum",
                               label_smoothing=self.teaching.label_smoothing) / b
        if self.ctc is not None:
            log_probs = F.log_softmax(self.ctc(enc).float(), dim=-1).transpose(0, 1)  # (T', B, V)
            ctc = F.ctc_loss(log_probs, batch.targets, enc_lens, batch.target_lens, blank=0, reduction="sum",
                             zero_infinity=True) / b
            loss = (1 - self.teaching.ctc_weight) * loss + self.teaching.ctc_weight * ctc
        return loss

    def _search(self, feats: torch.Tensor, feat_lens: torch.Tensor,
                tokenizer: Tokenizer) -> tuple[list[list[Found]], list[int]]:
        """las.nbest hypotheses per utterance sorted best first by `rank`, and the listener lengths; greedy
        when beam_size is 1 with neither LM nor CTC scoring."""
        lm = self._fusion_lm(tokenizer)
        k, ctc_weight = self.search.beam_size, self.search.ctc_weight if self.ctc is not None else 0.0
        greedy = k == 1 and lm is None and not ctc_weight
        enc, enc_lens, memory, state = self._start(feats, feat_lens, repeat=1 if greedy else k)

        def step(prev: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
            logits, state = self.speller.step(prev, state, self.attention, memory)
            return F.log_softmax(logits.float(), dim=-1), state

        lens = enc_lens.tolist()
        max_lens = [max(1, math.ceil(self.search.max_len_ratio * n)) for n in lens]
        if greedy:
            results = [[f] for f in greedy_search(step, state, max_lens)]
        else:
            scorers: list[Scorer] = []
            if ctc_weight and self.ctc is not None:  # (mypy)
                scorers.append(CTCScorer(F.log_softmax(self.ctc(enc).float(), -1), enc_lens, ctc_weight))
            if lm is not None:
                scorers.append(LMScorer(lm, self.search.lm_weight))
            results = beam_search(step, state, max_lens, k, scorers, att_weight=1.0 - ctc_weight)
        ranked = [sorted(found, key=lambda f: -self.rank(f, n))[: self.search.nbest]
                  for found, n in zip(results, lens, strict=True)]
        return ranked, lens

    def rank(self, found: Found, frames: int) -> float:
        """The score hypotheses are sorted by: log p / GNMT length penalty + coverage penalty."""
        score = found.score
        if self.search.length_penalty:
            score /= ((5 + found.weights.shape[0]) / 6) ** self.search.length_penalty
        if self.search.coverage_penalty:
            received = found.weights[:, :, :frames].float().mean(1).sum(0)  # (T',)
            score += self.search.coverage_penalty * float(received.clamp(1e-6, 1.0).log().sum())
        return score

    def _fusion_lm(self, tokenizer: Tokenizer) -> UnitLM | None:
        """The shallow-fusion LM of las.lm_path, loaded at the first decode that needs it."""
        if not (self.search.lm_path and self.search.lm_weight):
            return None
        if self._lm is None or str(self._lm.path) != self.search.lm_path:
            self._lm = UnitLM(self.search.lm_path, tokenizer.vocab)
        return self._lm

    def use_lm(self, lm: UnitLM | None, weight: float) -> None:
        """Shallow fusion with `lm` (over this model's tokens) from now on; None turns it off."""
        self._lm = lm
        self.search = replace(self.search, lm_path=str(lm.path) if lm else "", lm_weight=weight if lm else 0.0)

    @torch.no_grad()
    def decode_nbest(self, feats: torch.Tensor, feat_lens: torch.Tensor, tokenizer: Tokenizer,
                     frame_shift: float = 0.01) -> list[list[Hypothesis]]:
        """Up to las.nbest hypotheses per utterance, best first; `score` is the ranking score."""
        results, lens = self._search(feats, feat_lens, tokenizer)
        return [[Hypothesis(tokenizer.decode(f.tokens), f.tokens, self.rank(f, n)) for f in found]
                for found, n in zip(results, lens, strict=True)]

    @torch.no_grad()
    def decode(self, feats: torch.Tensor, feat_lens: torch.Tensor, tokenizer: Tokenizer,
               frame_shift: float = 0.01) -> list[Hypothesis]:
        return [nbest[0] for nbest in self.decode_nbest(feats, feat_lens, tokenizer, frame_shift)]

    @torch.no_grad()
    def align(self, feats: torch.Tensor, feat_lens: torch.Tensor,
              tokenizer: Tokenizer) -> list[tuple[Hypothesis, torch.Tensor]]:
        """The best hypothesis of each utterance and its attention (U', T') over the real listener frames,
        averaged over heads; row i is the step that emitted token i (the last row the EOS, when reached)."""
        results, lens = self._search(feats, feat_lens, tokenizer)
        out = []
        for found, n in zip(results, lens, strict=True):
            best = found[0]
            hyp = Hypothesis(tokenizer.decode(best.tokens), best.tokens, self.rank(best, n))
            out.append((hyp, best.weights[:, :, :n].float().mean(1).cpu()))
        return out


def build_las(cfg: LASConfig, n_feats: int, vocab_size: int) -> LAS:
    """A LAS model sized by the [las] config section."""
    listener = Listener(n_feats, cfg.listener_hidden, cfg.listener_layers, cfg.pyramid_layers, cfg.conv_layers,
                        cfg.conv_channels, cfg.dropout)
    attention = Attention(cfg.attention, cfg.speller_hidden, listener.out_dim, cfg.attention_dim,
                          cfg.attention_heads, cfg.location_channels, cfg.location_kernel)
    speller = Speller(vocab_size, cfg.embedding_dim, listener.out_dim, cfg.speller_hidden, cfg.speller_layers,
                      cfg.dropout)
    ctc = nn.Linear(listener.out_dim, vocab_size) if cfg.ctc_weight > 0 else None
    teaching = Teaching(cfg.label_smoothing, cfg.sampling_rate, cfg.sampling_start_step, cfg.sampling_end_step,
                        cfg.ctc_weight)
    search = Search(cfg.beam_size, cfg.nbest, cfg.length_penalty, cfg.coverage_penalty, cfg.max_len_ratio,
                    cfg.lm_path, cfg.lm_weight, cfg.ctc_decode_weight)
    if cfg.ctc_decode_weight and ctc is None:
        raise ValueError("las.ctc_decode_weight needs the CTC head that las.ctc_weight > 0 trains")
    return LAS(listener, attention, speller, ctc=ctc, teaching=teaching, search=search)


# ----------------------------------------------------------------------------------------- attention plots


def token_labels(tokens: Sequence[int], tokenizer: Tokenizer, ended: bool = True) -> list[str]:
    """Row labels for `plot_attention`: each token's piece ('_' for a space), then '</s>' when it ended."""
    labels = [tokenizer.vocab[t].replace(" ", "_").replace("\u2581", "_") for t in tokens]
    return labels + ["</s>"] if ended else labels


def plot_attention(weights: torch.Tensor, tokens: Sequence[str], path: str | Path) -> Path:
    """Write the attention alignment (U, T') -- output tokens down, listener frames across, dark = attended --
    as a PNG: with matplotlib when it is installed, else a grayscale image with a built-in 3x5 pixel font."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    w = weights.detach().float().cpu()
    if w.ndim != 2 or w.shape[0] != len(tokens):
        raise ValueError(f"weights {tuple(w.shape)} must be (U, T') with one row per token ({len(tokens)} tokens)")
    try:
        import matplotlib
    except ImportError:
        path.write_bytes(_attention_png(w, tokens))
        return path
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4.0, w.shape[1] / 8), max(2.0, len(tokens) / 4)))
    ax.imshow(w.numpy(), aspect="auto", cmap="gray_r", interpolation="nearest", vmin=0.0)
    ax.set_yticks(range(len(tokens)), list(tokens))
    ax.set_xlabel("listener frame")
    ax.set_ylabel("output token")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# 3x5 glyphs, one octal digit per row (4 = left pixel, 2 = middle, 1 = right).
_FONT = dict(zip(
    "abcdefghijklmnopqrstuvwxyz0123456789 _'<>/-.?",
    "25755 65656 34443 65556 74647 74644 34553 55755 72227 11152 55655 44447 57755 65555 25552 65644 25563 65655 "
    "34216 72222 55557 55552 55775 55255 55222 71247 75557 26227 61247 61216 55711 74616 34652 71222 25252 25316 "
    "00000 00007 22000 12421 42124 11244 00700 00002 61202".split(), strict=True))


def _attention_png(w: torch.Tensor, tokens: Sequence[str], scale: int = 2) -> bytes:
    u, t = w.shape
    cell_w = max(2, min(12, 480 // max(t, 1)))
    row_h = 6 * scale + 2
    label_w = 4 * scale * min(6, max((len(s) for s in tokens), default=1)) + 4
    width, height = label_w + cell_w * t, row_h * u
    peak = float(w.max()) or 1.0
    pixels = bytearray(b"\xff" * (width * height))
    for r in range(u):
        for c in range(t):
            shade = 255 - round(255 * min(float(w[r, c]) / peak, 1.0))
            for y in range(r * row_h, (r + 1) * row_h):
                start = y * width + label_w + c * cell_w
                pixels[start : start + cell_w] = bytes([shade]) * cell_w
        for n, ch in enumerate(tokens[r][:6].lower()):
            for gy, bits in enumerate(_FONT.get(ch, _FONT["?"])):
                for gx in range(3):
                    if int(bits) >> (2 - gx) & 1:
                        for dy in range(scale):
                            y = r * row_h + 1 + gy * scale + dy
                            x = 2 + n * 4 * scale + gx * scale
                            pixels[y * width + x : y * width + x + scale] = b"\x00" * scale
    raw = b"".join(b"\x00" + bytes(pixels[y * width : (y + 1) * width]) for y in range(height))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
