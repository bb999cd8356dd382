"""Listen, Attend and Spell (Chan et al. 2016; Chiu et al. 2018): a pyramidal BLSTM listener, attention, an LSTM
speller; greedy or beam-search decoding (las_search.py), optional KenLM shallow fusion and CTC rescoring.

Shapes: B batch, T feature frames, F mel bins, T' = T / time_reduction listener frames, D listener output
(2 x listener_hidden), S speller units, U target tokens, V vocabulary, H attention heads, K beam, N = B x K.

    feats (B, T, F) -> [conv (B, T/2^c, C*F/2^c)] -> BLSTM ... pBLSTM (B, T', D)              listener
    [embed(y_i-1); c_i-1] (B, E + D) -> LSTM x speller_layers -> s_i (B, S)                   speller
    s_i, listener (B, T', D) [, previous weights (B, H, T')] -> a_i (B, H, T') -> c_i (B, D)  attention
    [s_i; c_i] -> Linear, tanh, Linear -> logits (B, V)

With `las.decoder = "transformer"` the speller and its attention are a Transformer decoder instead
(transformer_decoder.py: self-attention over the tokens so far, cross-attention over the listener), trained on
whole target sequences at once; the searches, CTC scoring and fusion are the same.

Token id 0 is the CTC blank of every tokenizer; LAS uses it as the start-of-sentence input and as the
end-of-sentence target, so the tokenizers stay shared between model families.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from asrkit.config import LASConfig
from asrkit.data.tokenizer import Tokenizer
from asrkit.models.fusion import WordFusion, WordLMScorer
from asrkit.models.las_search import (
    EOS,
    CTCScorer,
    Found,
    LMScorer,
    Scorer,
    State,
    beam_search,
    ctc_length_caps,
    greedy_search,
)
from asrkit.models.layers import ASRModel, EncoderModule, length_mask, pack, unpack
from asrkit.models.transformer_decoder import Encoded, TransformerDecoder
from asrkit.records import Batch, Emissions, Hypothesis
from asrkit.search import SearchOptions, is_greedy, resolve

if TYPE_CHECKING:
    from asrkit.lm import UnitLM, WordLM

ATTENTIONS = ("dot", "additive", "location")


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


class Listener(EncoderModule):
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


# ------------------------------------------------------------------------------------------------ the model


@dataclass(frozen=True)
class Teaching:
    """Training settings that live in the model."""

    label_smoothing: float = 0.1
    sampling_rate: float = 0.0  # scheduled sampling: highest rate, reached at sampling_end_step
    sampling_start_step: int = 0
    sampling_end_step: int = 1
    ctc_weight: float = 0.0


class LAS(ASRModel):
    """Listener, attention, speller composed; `loss` is cross-entropy with label smoothing and scheduled
    sampling (plus CTC on the listener when ctc_weight > 0), `decode` greedy or beam search."""

    objective = "attention"
    fusion_lm = "tokens"

    def __init__(self, listener: EncoderModule, attention: Attention | None, speller: Speller | TransformerDecoder, *,
                 ctc: nn.Linear | None = None, teaching: Teaching | None = None) -> None:
        super().__init__()
        self.listener, self.attention, self.speller, self.ctc = listener, attention, speller, ctc
        # the LSTM speller's output is Linear-Tanh-Linear (the last one is over tokens), the Transformer's one Linear
        out = "speller.out.2" if isinstance(speller.out, nn.Sequential) else "speller.out"
        self.vocab_layers = ("speller.embed", out, "ctc")
        self.teaching = teaching or Teaching()
        self.time_reduction = listener.time_reduction
        self.sampling = 0.0  # the current scheduled-sampling rate, set by on_step

    def on_step(self, step: int) -> None:
        t = self.teaching
        span = max(t.sampling_end_step - t.sampling_start_step, 1)
        self.sampling = t.sampling_rate * min(max((step - t.sampling_start_step) / span, 0.0), 1.0)

    def fusion_units(self, search: SearchOptions) -> str:
        return search.lm_units or "tokens"

    def _start(self, feats: torch.Tensor, feat_lens: torch.Tensor,
               repeat: int = 1) -> tuple[torch.Tensor, torch.Tensor, Memory | Encoded, State]:
        enc, enc_lens = self.listener(feats, feat_lens)  # (B, T', D)
        if isinstance(self.speller, TransformerDecoder):
            encoded = self.speller.encode(enc, enc_lens).repeat(repeat)
            return enc, enc_lens, encoded, self.speller.initial_state(encoded)
        assert self.attention is not None  # an LSTM speller always comes with its attention
        memory = self.attention.memory(enc, enc_lens).repeat(repeat)
        state = self.speller.initial_state(memory.values.shape[0], enc.shape[-1],
                                           self.attention.initial_weights(memory))
        return enc, enc_lens, memory, state

    def _step(self, prev: torch.Tensor, state: State, memory: Memory | Encoded) -> tuple[torch.Tensor, State]:
        """One decoder step: prev tokens (N,) -> logits (N, V), the new state."""
        if isinstance(self.speller, TransformerDecoder):
            assert isinstance(memory, Encoded)
            return self.speller.step(prev, state, memory)
        assert self.attention is not None and isinstance(memory, Memory)
        return self.speller.step(prev, state, self.attention, memory)

    def loss(self, batch: Batch) -> torch.Tensor:
        """Cross-entropy summed over each utterance's tokens and its EOS, averaged over the batch (mixed with the
        listener's CTC loss when the model has a CTC head)."""
        enc, enc_lens, memory, state = self._start(batch.feats, batch.feat_lens)
        b, u = batch.targets.shape
        labels = F.pad(batch.targets, (0, 1))  # (B, U + 1): tokens then EOS, ignored past it
        steps = torch.arange(u + 1, device=labels.device)[None, :]
        labels = labels.masked_fill(steps == batch.target_lens[:, None], EOS)
        labels = labels.masked_fill(steps > batch.target_lens[:, None], -100)
        if isinstance(self.speller, TransformerDecoder) and not (self.training and self.sampling > 0):
            assert isinstance(memory, Encoded)  # teacher forcing on the whole sequence at once
            inputs = torch.cat([torch.full((b, 1), EOS, dtype=torch.long, device=labels.device),
                                labels[:, :u].clamp(min=0)], dim=1)  # (B, U + 1): start symbol, then the targets
            stacked = self.speller(inputs, memory)[0].float()  # (B, U + 1, V)
        else:
            prev = torch.full((b,), EOS, dtype=torch.long, device=labels.device)
            logits: list[torch.Tensor] = []
            for i in range(u + 1):
                if i > 0:
                    prev = labels[:, i - 1].clamp(min=0)
                    if self.training and self.sampling > 0:
                        sampled = torch.multinomial(torch.softmax(logits[-1].detach().float(), -1), 1).squeeze(1)
                        prev = torch.where(torch.rand(b, device=prev.device) < self.sampling, sampled, prev)
                out, state = self._step(prev, state, memory)
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

    def resolve_search(self, search: SearchOptions) -> SearchOptions:
        return resolve(search, self.objective, ctc_head=self.ctc is not None)

    def ctc_emissions(self, feats: torch.Tensor, feat_lens: torch.Tensor, frame_shift: float) -> Emissions | None:
        if self.ctc is None:
            return None
        enc, enc_lens = self.listener(feats, feat_lens)
        return Emissions(F.log_softmax(self.ctc(enc).float(), dim=-1), enc_lens, frame_shift * self.time_reduction)

    def _search(self, feats: torch.Tensor, feat_lens: torch.Tensor, search: SearchOptions,
                lm: UnitLM | WordLM | None, vocab: list[str]) -> tuple[list[list[Found]], list[int]]:
        """search.nbest hypotheses per utterance sorted best first by `rank`, and the listener lengths, for a
        resolved search: greedy when it is greedy (beam 1 with neither LM nor CTC scoring)."""
        k = search.beam_size
        greedy = is_greedy(search)
        enc, enc_lens, memory, state = self._start(feats, feat_lens, repeat=1 if greedy else k)

        def step(prev: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
            logits, state = self._step(prev, state, memory)
            return F.log_softmax(logits.float(), dim=-1), state

        lens = enc_lens.tolist()
        max_lens = [max(1, math.ceil(search.max_len_ratio * n)) for n in lens]
        if self.ctc is not None and not search.ctc_weight:  # (CTC prefix scores end a runaway by themselves)
            max_lens = ctc_length_caps(max_lens, self.ctc(enc), enc_lens)
        if greedy:
            results = [[f] for f in greedy_search(step, state, max_lens)]
        else:
            scorers: list[Scorer] = []
            if search.ctc_weight and self.ctc is not None:  # (resolve_search refused a weight without a head)
                scorers.append(CTCScorer(F.log_softmax(self.ctc(enc).float(), -1), enc_lens, search.ctc_weight))
            if search.lm:
                if lm is None:
                    raise ValueError("search.lm is set: pass its LM loaded (asrkit.lm.load_fusion_lm) as `lm`")
                if self.fusion_units(search) == "words":  # a word n-gram, scored as words complete
                    scorers.append(WordLMScorer(WordFusion(lm, vocab, search.lm_weight, search.lm_bonus)))  # type: ignore[arg-type]
                else:
                    scorers.append(LMScorer(lm, search.lm_weight))  # type: ignore[arg-type]
            results = beam_search(step, state, max_lens, k, scorers, att_weight=1.0 - search.ctc_weight)
        ranked = [sorted(found, key=lambda f: -self.rank(f, n, search))[: search.nbest]
                  for found, n in zip(results, lens, strict=True)]
        return ranked, lens

    def rank(self, found: Found, frames: int, search: SearchOptions) -> float:
        """The score hypotheses are sorted by: log p / GNMT length penalty + coverage penalty."""
        score = found.score
        if search.length_penalty:
            score /= ((5 + found.weights.shape[0]) / 6) ** search.length_penalty
        if search.coverage_penalty:
            received = found.weights[:, :, :frames].float().mean(1).sum(0)  # (T',)
            score += search.coverage_penalty * float(received.clamp(1e-6, 1.0).log().sum())
        return score

    @torch.no_grad()
    def decode(self, feats: torch.Tensor, feat_lens: torch.Tensor, search: SearchOptions, lm: Any = None, *,
               tokenizer: Tokenizer, frame_shift: float = 0.01) -> list[list[Hypothesis]]:
        """Up to search.nbest hypotheses per utterance, best first; `score` is the ranking score; `lm`: the unit
        LM of search.lm (shallow fusion with weight search.lm_weight)."""
        search = self.resolve_search(search)
        results, lens = self._search(feats, feat_lens, search, lm, tokenizer.vocab)
        return [[Hypothesis(tokenizer.decode(f.tokens), f.tokens, self.rank(f, n, search)) for f in found]
                for found, n in zip(results, lens, strict=True)]

    @torch.no_grad()
    def attention_weights(self, feats: torch.Tensor, feat_lens: torch.Tensor, search: SearchOptions, lm: Any = None,
                          *, tokenizer: Tokenizer) -> list[tuple[Hypothesis, torch.Tensor]] | None:
        """The best hypothesis of each utterance and its attention (U', T') over the real listener frames,
        averaged over heads; row i is the step that emitted token i (the last row the EOS, when reached)."""
        search = self.resolve_search(search)
        results, lens = self._search(feats, feat_lens, search, lm, tokenizer.vocab)
        out = []
        for found, n in zip(results, lens, strict=True):
            best = found[0]
            hyp = Hypothesis(tokenizer.decode(best.tokens), best.tokens, self.rank(best, n, search))
            out.append((hyp, best.weights[:, :, :n].float().mean(1).cpu()))
        return out


def build_las(cfg: LASConfig, n_feats: int, vocab_size: int, listener: EncoderModule | None = None) -> LAS:
    """A LAS model sized by the [las] config section; `listener`: another encoder (a Conformer) in place of the
    pyramidal BLSTM one."""
    if listener is None:
        listener = Listener(n_feats, cfg.listener_hidden, cfg.listener_layers, cfg.pyramid_layers, cfg.conv_layers,
                            cfg.conv_channels, cfg.dropout)
    ctc = nn.Linear(listener.out_dim, vocab_size) if cfg.ctc_weight > 0 else None
    teaching = Teaching(cfg.label_smoothing, cfg.sampling_rate, cfg.sampling_start_step, cfg.sampling_end_step,
                        cfg.ctc_weight)
    if cfg.decoder == "transformer":
        decoder = TransformerDecoder(vocab_size, listener.out_dim, dim=cfg.decoder_dim, layers=cfg.decoder_layers,
                                     heads=cfg.decoder_heads, ff=cfg.decoder_ff, dropout=cfg.dropout)
        return LAS(listener, None, decoder, ctc=ctc, teaching=teaching)
    attention = Attention(cfg.attention, cfg.speller_hidden, listener.out_dim, cfg.attention_dim,
                          cfg.attention_heads, cfg.location_channels, cfg.location_kernel)
    speller = Speller(vocab_size, cfg.embedding_dim, listener.out_dim, cfg.speller_hidden, cfg.speller_layers,
                      cfg.dropout)
    ctc = nn.Linear(listener.out_dim, vocab_size) if cfg.ctc_weight > 0 else None
    teaching = Teaching(cfg.label_smoothing, cfg.sampling_rate, cfg.sampling_start_step, cfg.sampling_end_step,
                        cfg.ctc_weight)
    return LAS(listener, attention, speller, ctc=ctc, teaching=teaching)
