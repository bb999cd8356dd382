"""A Transformer attention decoder (Vaswani et al. 2017; the decoder of ESPnet's Transformer / Conformer + CTC
models), beside the LSTM speller of las.py, with the same step interface, so the attention model's training
loop, greedy and beam searches (las_search.py, joint CTC scoring and LM fusion included) drive either.

Shapes: N rows (utterances, or utterances x beam), T' encoder frames, D encoder output, E decoder width, L layers,
H heads, i tokens decoded so far, V vocabulary.

    prev token (N,) -> embedding * sqrt(E) + sinusoidal position i -> L x [ x + SelfAttn(LN x | cached keys and
    values of steps < i); x + CrossAttn(LN x, encoder); x + FF(LN x) ] -> LN -> Linear -> logits (N, V)

Decoding runs one step at a time with a key/value cache per layer in the state, so a step costs O(i), not O(i^2).
State: (keys (N, L, i, E), values (N, L, i, E), position (N, 1), cross-attention weights (N, H, T')): every
tensor has the rows first, as the beam search reorders them; the last one is what attention plots read.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from asrkit.models.layers import length_mask

State = tuple[torch.Tensor, ...]


class Encoded(NamedTuple):
    """The encoder output as the cross-attention reads it, projected once per utterance (rows repeated K times
    for a beam)."""

    keys: torch.Tensor  # (N, L, H, T', E/H)
    values: torch.Tensor  # (N, L, H, T', E/H)
    mask: torch.Tensor  # (N, T') True on real frames

    def repeat(self, k: int) -> Encoded:
        return Encoded(*(t.repeat_interleave(k, dim=0) for t in self))


def sinusoid(position: torch.Tensor, dim: int) -> torch.Tensor:
    """(N,) positions -> (N, dim) sinusoidal encodings."""
    inv = torch.exp(torch.arange(0, dim, 2, device=position.device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    angles = position.float()[:, None] * inv[None, :]
    return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(1)[:, :dim]


class DecoderLayer(nn.Module):
    def __init__(self, dim: int, enc_dim: int, heads: int, ff: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.norm_self, self.norm_cross, self.norm_ff = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.self_out = nn.Linear(dim, dim)
        self.cross_q = nn.Linear(dim, dim)
        self.cross_kv = nn.Linear(enc_dim, 2 * dim)
        self.cross_out = nn.Linear(dim, dim)
        self.ff = nn.Sequential(nn.Linear(dim, ff), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ff, dim))
        self.dropout = nn.Dropout(dropout)

    def encode(self, enc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, T', D) -> keys, values (N, H, T', E/H)."""
        n, t, _ = enc.shape
        k, v = self.cross_kv(enc).view(n, t, 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return k, v

    def forward(self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, causal: bool,
                enc_k: torch.Tensor, enc_v: torch.Tensor,
                enc_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (N, S, E): S new positions after the cached `keys`/`values` (N, i, E) -> x, the keys and values of
        all i + S positions, the cross-attention weights (N, H, S, T')."""
        n, s, e = x.shape
        q, k, v = self.qkv(self.norm_self(x)).chunk(3, dim=-1)
        keys, values = torch.cat([keys, k], dim=1), torch.cat([values, v], dim=1)
        heads = lambda t: t.reshape(n, t.shape[1], self.heads, self.head_dim).transpose(1, 2)  # noqa: E731
        y = F.scaled_dot_product_attention(heads(q), heads(keys), heads(values), is_causal=causal and s > 1)
        x = x + self.dropout(self.self_out(y.transpose(1, 2).reshape(n, s, e)))
        cq = heads(self.cross_q(self.norm_cross(x)))  # (N, H, S, E/H)
        scores = cq @ enc_k.transpose(-1, -2) / math.sqrt(self.head_dim)  # (N, H, S, T')
        scores = scores.float().masked_fill(~enc_mask[:, None, None, :], float("-inf"))
        weights = torch.softmax(scores, dim=-1).to(enc_v.dtype)
        context = (weights @ enc_v).transpose(1, 2).reshape(n, s, e)
        x = x + self.dropout(self.cross_out(context))
        x = x + self.dropout(self.ff(self.norm_ff(x)))
        return x, keys, values, weights


class TransformerDecoder(nn.Module):
    """L pre-norm Transformer decoder layers over an encoder's output; `forward` trains on whole target
    sequences at once (teacher forcing), `step` decodes one token per row with cached keys and values."""

    def __init__(self, vocab_size: int, enc_dim: int, *, dim: int = 256, layers: int = 3, heads: int = 4,
                 ff: int = 1024, dropout: float = 0.1) -> None:
        super().__init__()
        if layers < 1 or dim % heads:
            raise ValueError(f"attention.decoder_layers must be >= 1 and attention.decoder_heads must divide "
                             f"attention.decoder_dim, got {layers}, {heads}, {dim}")
        self.dim, self.heads = dim, heads
        self.embed = nn.Embedding(vocab_size, dim)
        self.layers = nn.ModuleList(DecoderLayer(dim, enc_dim, heads, ff, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, vocab_size)
        self.dropout = nn.Dropout(dropout)

    def _layers(self) -> list[DecoderLayer]:
        return [layer for layer in self.layers if isinstance(layer, DecoderLayer)]

    def encode(self, enc: torch.Tensor, lengths: torch.Tensor) -> Encoded:
        kv = [layer.encode(enc) for layer in self._layers()]
        return Encoded(torch.stack([k for k, _ in kv], 1), torch.stack([v for _, v in kv], 1),
                       length_mask(lengths, enc.shape[1]))

    def _embed(self, tokens: torch.Tensor, start: int | torch.Tensor) -> torch.Tensor:
        """(N, S) tokens at positions start.. -> (N, S, E)."""
        n, s = tokens.shape
        pos = (torch.as_tensor(start, device=tokens.device).view(-1, 1) + torch.arange(s, device=tokens.device))
        pe = sinusoid(pos.expand(n, s).reshape(-1), self.dim).view(n, s, self.dim)
        return self.dropout(self.embed(tokens) * math.sqrt(self.dim) + pe.to(self.embed.weight.dtype))

    def forward(self, inputs: torch.Tensor, encoded: Encoded) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher forcing: inputs (N, S) (start symbol, then the targets) -> logits (N, S, V) and the last layer's
        cross-attention weights (N, H, S, T')."""
        x = self._embed(inputs, 0)
        n = inputs.shape[0]
        empty = x.new_zeros(n, 0, self.dim)
        weights = x.new_zeros(0)
        for i, layer in enumerate(self.layers):
            x, _, _, weights = layer(x, empty, empty, True, encoded.keys[:, i], encoded.values[:, i], encoded.mask)
        return self.out(self.norm(x)), weights

    def initial_state(self, encoded: Encoded) -> State:
        n, t = encoded.mask.shape
        cache = encoded.keys.new_zeros(n, len(self.layers), 0, self.dim)
        weights = encoded.mask.float()[:, None, :].expand(-1, self.heads, -1) / encoded.mask.sum(1)[:, None, None]
        return cache, cache, torch.zeros(n, 1, device=cache.device), weights.to(cache.dtype)

    def step(self, prev: torch.Tensor, state: State, encoded: Encoded) -> tuple[torch.Tensor, State]:
        """prev tokens (N,) -> logits (N, V), the new state (cache grown by one position)."""
        keys, values, position, _ = state
        x = self._embed(prev[:, None], position[:, 0].long())
        new_keys, new_values, weights = [], [], None
        for i, layer in enumerate(self.layers):
            x, k, v, weights = layer(x, keys[:, i], values[:, i], False, encoded.keys[:, i], encoded.values[:, i],
                                     encoded.mask)
            new_keys.append(k)
            new_values.append(v)
        assert weights is not None
        logits = self.out(self.norm(x[:, 0]))
        return logits, (torch.stack(new_keys, 1), torch.stack(new_values, 1), position + 1, weights[:, :, 0])
