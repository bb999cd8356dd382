"""Encoders that any objective can drive: feats (B, T, F), lengths (B,) -> (B, T', D), lengths (B,).

Every encoder has `out_dim` (D), `time_reduction` (feature frames per output frame) and `n_feats` (F). The
recurrent encoders of the seed families live beside their models (deepspeech2.py, las.py, transducer.py);
this module holds the Conformer (Gulati et al. 2020):

    feats (B, T, F) -> Conv2d subsampling /4, /6 or /8 -> Linear -> (B, T', D)
      -> N x [ x + 1/2 FF(x); x + MHSA(x) (rotary positions); x + Conv(x); x + 1/2 FF(x); LayerNorm ]
    FF:   LayerNorm -> Linear(D, mD) -> SiLU -> dropout -> Linear(mD, D) -> dropout
    MHSA: LayerNorm -> q, k, v (H heads of D/H) -> rotary on q, k -> softmax(qk^T / sqrt(D/H)) v -> Linear
    Conv: LayerNorm -> pointwise (D -> 2D) -> GLU -> depthwise Conv1d(kernel K) -> norm -> SiLU -> pointwise

Padding never reaches a real frame: the subsampling convolutions are 'valid' (a real output frame reads only
real input frames), attention masks padded keys, and padded frames are zeroed before the depthwise convolution.
With `conv_norm = "batch"` (the paper's) training-mode statistics do see the batch; "layer" (default) is per frame.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from asrkit.models.layers import EncoderModule, length_mask

# (kernel, stride) of each subsampling convolution, over time and frequency alike.
SUBSAMPLING: dict[int, list[tuple[int, int]]] = {
    4: [(3, 2), (3, 2)],
    6: [(3, 2), (5, 3)],
    8: [(3, 2), (3, 2), (3, 2)],
}
CONV_NORMS = ("layer", "batch")


class ConvSubsampling(nn.Module):
    """Conv2d + ReLU layers with stride over (time, frequency), then a Linear to the model width."""

    def __init__(self, n_feats: int, channels: int, d_model: int, factor: int) -> None:
        super().__init__()
        if factor not in SUBSAMPLING:
            raise ValueError(f"encoder.subsampling must be one of {', '.join(map(str, SUBSAMPLING))}, got {factor}")
        self.specs = SUBSAMPLING[factor]
        freq = n_feats
        convs = []
        for i, (k, s) in enumerate(self.specs):
            convs.append(nn.Conv2d(1 if i == 0 else channels, channels, k, s))
            freq = (freq - k) // s + 1
        if freq < 1:
            raise ValueError(f"{n_feats} mel bins are too few for subsampling by {factor}")
        self.convs = nn.ModuleList(convs)
        self.out = nn.Linear(channels * freq, d_model)
        self.time_reduction = factor

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        for k, s in self.specs:
            lengths = torch.div(lengths - k, s, rounding_mode="floor") + 1
        return lengths.clamp(min=1)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = feats.unsqueeze(1)  # (B, 1, T, F)
        min_frames = 1
        for k, s in reversed(self.specs):
            min_frames = (min_frames - 1) * s + k
        if x.shape[2] < min_frames:  # too short for the valid convolutions: pad (such frames give length 1)
            x = F.pad(x, (0, 0, 0, min_frames - x.shape[2]))
        for conv in self.convs:
            x = F.relu(conv(x))
        b, c, t, f = x.shape
        return self.out(x.transpose(1, 2).reshape(b, t, c * f)), self.output_lengths(lengths)


def rotary_tables(t: int, dim: int, device: torch.device, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (T, dim/2) of the rotary position encoding (Su et al. 2021)."""
    inv = 1.0 / base ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim)
    angles = torch.arange(t, device=device, dtype=torch.float32)[:, None] * inv[None, :]
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs of channels of x (B, H, T, d) by position-dependent angles."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    c, s = cos.to(x.dtype), sin.to(x.dtype)
    return torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2)


class FeedForward(nn.Module):
    def __init__(self, d_model: int, mult: int, dropout: float) -> None:
        super().__init__()
        # Dropout on the output only: the inner (mult x wider) one costs a CPU more than its regularisation is worth.
        self.net = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, mult * d_model), nn.SiLU(),
                                 nn.Linear(mult * d_model, d_model), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SelfAttention(nn.Module):
    """Multi-head self-attention with rotary positions; padded keys get no weight."""

    def __init__(self, d_model: int, heads: int, dropout: float) -> None:
        super().__init__()
        if d_model % heads or (d_model // heads) % 2:
            raise ValueError(f"encoder.d_model {d_model} must split into encoder.heads {heads} of an even size")
        self.heads, self.head_dim = heads, d_model // heads
        self.norm = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm(x)).view(b, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)  # (B, H, T, d)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])  # (B, H, T, d)
        return F.dropout(self.out(y.transpose(1, 2).reshape(b, t, d)), self.dropout, self.training)


class ConvModule(nn.Module):
    def __init__(self, d_model: int, kernel: int, norm: str, dropout: float) -> None:
        super().__init__()
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"encoder.conv_kernel must be odd, got {kernel}")
        if norm not in CONV_NORMS:
            raise ValueError(f"unknown encoder.conv_norm {norm!r}; valid: {', '.join(CONV_NORMS)}")
        self.norm_in = nn.LayerNorm(d_model)
        self.pointwise_in = nn.Linear(d_model, 2 * d_model)
        self.depthwise = nn.Conv1d(d_model, d_model, kernel, padding=kernel // 2, groups=d_model)
        self.norm: nn.Module = nn.LayerNorm(d_model) if norm == "layer" else nn.BatchNorm1d(d_model)
        self.pointwise_out = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = F.glu(self.pointwise_in(self.norm_in(x)), dim=-1)  # (B, T, D)
        x = x * mask[:, :, None].to(x.dtype)
        x = self.depthwise(x.transpose(1, 2))  # (B, D, T)
        x = self.norm(x) if isinstance(self.norm, nn.BatchNorm1d) else self.norm(x.transpose(1, 2)).transpose(1, 2)
        return self.dropout(self.pointwise_out(F.silu(x).transpose(1, 2)))


class ConformerBlock(nn.Module):
    def __init__(self, d_model: int, heads: int, ff_mult: int, conv_kernel: int, conv_norm: str,
                 dropout: float) -> None:
        super().__init__()
        self.ff1 = FeedForward(d_model, ff_mult, dropout)
        self.attn = SelfAttention(d_model, heads, dropout)
        self.conv = ConvModule(d_model, conv_kernel, conv_norm, dropout)
        self.ff2 = FeedForward(d_model, ff_mult, dropout)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x = x + 0.5 * self.ff1(x)
        x = x + self.attn(x, mask, rotary)
        x = x + self.conv(x, mask)
        x = x + 0.5 * self.ff2(x)
        return self.norm(x)


class ConformerEncoder(EncoderModule):
    """Conformer: (B, T, F) -> (B, T', D), T' ~ T / subsampling; padded output frames are zero."""

    def __init__(self, n_feats: int, *, d_model: int = 144, layers: int = 8, heads: int = 4, ff_mult: int = 4,
                 conv_kernel: int = 15, subsampling: int = 4, subsampling_channels: int = 0,
                 conv_norm: str = "layer", dropout: float = 0.1) -> None:
        super().__init__()
        if layers < 1 or d_model < 2 or ff_mult < 1:
            raise ValueError(f"need encoder.layers >= 1, d_model >= 2 and ff_mult >= 1, got {layers}, {d_model}, "
                             f"{ff_mult}")
        self.subsample = ConvSubsampling(n_feats, subsampling_channels or d_model, d_model, subsampling)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(ConformerBlock(d_model, heads, ff_mult, conv_kernel, conv_norm, dropout)
                                    for _ in range(layers))
        self.n_feats, self.out_dim, self.time_reduction = n_feats, d_model, subsampling
        self.head_dim = d_model // heads

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, lengths = self.subsample(feats, lengths)
        x = self.dropout(x)
        mask = length_mask(lengths, x.shape[1])  # (B, T') True on real frames
        rotary = rotary_tables(x.shape[1], self.head_dim, x.device)
        for block in self.blocks:
            x = block(x, mask, rotary)
        return x * mask[:, :, None].to(x.dtype), lengths
