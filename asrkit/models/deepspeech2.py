"""DeepSpeech2 (Amodei et al. 2016): 2-D convolutions, a stack of recurrent layers, CTC.

Shapes: B batch, T feature frames, F mel bins, C conv channels, T' = ceil(T / 2) output frames,
H hidden units, V vocabulary (blank = 0).

    feats (B, T, F) -> conv (B, C, F', T') -> (B, T', C*F') -> RNN stack (B, T', H) -> FC (B, T', V)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from asrkit.models.ctc import CTCObjective
from asrkit.models.layers import EncoderModule, RecurrentLayer, length_mask, make_norm, pack, unpack

# (kernel (freq, time), stride (freq, time)) of each convolution, from the paper's best 2-D setups.
CONV_SPECS = [((41, 11), (2, 2)), ((21, 11), (2, 1)), ((21, 11), (2, 1))]


class ConvFrontEnd(nn.Module):
    """Conv2d + BatchNorm + clipped ReLU; padded frames are zeroed after every layer so they never leak."""

    def __init__(self, n_feats: int, layers: int, channels: int, relu_clip: float) -> None:
        super().__init__()
        if not 1 <= layers <= len(CONV_SPECS):
            raise ValueError(f"conv_layers must be 1-{len(CONV_SPECS)}, got {layers}")
        self.specs = CONV_SPECS[:layers]
        blocks = []
        in_ch, freq = 1, n_feats
        for kernel, stride in self.specs:
            padding = (kernel[0] // 2, kernel[1] // 2)  # applied by forward's F.pad, not by the Conv2d (see there)
            blocks.append(nn.Sequential(
                nn.Conv2d(in_ch, channels, kernel, stride, 0, bias=False),
                nn.BatchNorm2d(channels),
                nn.Hardtanh(0.0, relu_clip),
            ))
            in_ch = channels
            freq = (freq + 2 * padding[0] - kernel[0]) // stride[0] + 1
        self.blocks = nn.ModuleList(blocks)
        self.out_dim = channels * freq
        self.time_reduction = 1
        for _, stride in self.specs:
            self.time_reduction *= stride[1]

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = feats.transpose(1, 2).unsqueeze(1)  # (B, 1, F, T)
        for (kernel, stride), block in zip(self.specs, self.blocks, strict=True):
            # Zero padding as its own op: oneDNN's Conv2d backward on AVX-512 CPUs corrupts the heap when the
            # implicit padding exceeds the input (e.g. 20 mel bins under a 41-high kernel; torch 2.14.1)
            pad_f, pad_t = kernel[0] // 2, kernel[1] // 2
            x = block(F.pad(x, (pad_t, pad_t, pad_f, pad_f)))
            lengths = torch.div(lengths + 2 * pad_t - kernel[1], stride[1], rounding_mode="floor") + 1
            x = x * length_mask(lengths, x.shape[-1])[:, None, None, :].to(x.dtype)
        b, c, f, t = x.shape
        return x.permute(0, 3, 1, 2).reshape(b, t, c * f), lengths  # (B, T', C*F')


Stack = tuple[ConvFrontEnd, nn.ModuleList, nn.Dropout, nn.Module]  # conv front end, RNNs, dropout, output norm


def build_stack(n_feats: int, conv_layers: int, conv_channels: int, rnn_type: str, rnn_layers: int, rnn_hidden: int,
                bidirectional: bool, norm: str, relu_clip: float, dropout: float) -> Stack:
    """DeepSpeech2's encoder layers (shared by the DeepSpeech2 model and ConvRNNEncoder)."""
    if rnn_layers < 1:
        raise ValueError(f"rnn_layers must be at least 1, got {rnn_layers}")
    conv = ConvFrontEnd(n_feats, conv_layers, conv_channels, relu_clip)
    rnns = nn.ModuleList(
        RecurrentLayer(conv.out_dim if i == 0 else rnn_hidden, rnn_hidden, rnn_type, bidirectional,
                       norm=None if i == 0 else norm)
        for i in range(rnn_layers)
    )
    return conv, rnns, nn.Dropout(dropout), make_norm(norm, rnn_hidden)


def run_stack(stack: Stack, feats: torch.Tensor, feat_lens: torch.Tensor) -> tuple[PackedSequence, torch.Tensor, int]:
    """feats (B, T, F) -> the normalised RNN output as a packed sequence of (N, H), lengths (B,), T'."""
    conv, rnns, dropout, out_norm = stack
    x, lengths = conv(feats, feat_lens)  # (B, T', D)
    packed = pack(x, lengths)
    for i, rnn in enumerate(rnns):
        if i > 0 and dropout.p > 0:
            packed = packed._replace(data=dropout(packed.data))
        packed = rnn(packed)
    return packed._replace(data=out_norm(packed.data)), lengths, x.shape[1]


class ConvRNNEncoder(EncoderModule):
    """DeepSpeech2's encoder alone (conv front end, recurrent stack, output norm), for another objective
    (`encoder.kind = "conv_rnn"`, sized by [model]): (B, T, F) -> (B, T', H); padded frames are zero."""

    def __init__(self, n_feats: int, *, conv_layers: int = 2, conv_channels: int = 32, rnn_type: str = "gru",
                 rnn_layers: int = 3, rnn_hidden: int = 256, bidirectional: bool = True, norm: str = "batch",
                 relu_clip: float = 20.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv, self.rnns, self.dropout, self.out_norm = build_stack(
            n_feats, conv_layers, conv_channels, rnn_type, rnn_layers, rnn_hidden, bidirectional, norm, relu_clip,
            dropout)
        self.n_feats, self.out_dim, self.time_reduction = n_feats, rnn_hidden, self.conv.time_reduction

    def forward(self, feats: torch.Tensor, feat_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        packed, lengths, frames = run_stack((self.conv, self.rnns, self.dropout, self.out_norm), feats, feat_lens)
        return unpack(packed, frames), lengths  # (B, T', H)


class DeepSpeech2(CTCObjective):
    """The conv + RNN stack with its own bias-free output layer; its CTC loss keeps zero_infinity off, so an
    impossible alignment shows as a non-finite loss (the trainer counts and skips such steps)."""

    zero_infinity = False
    vocab_layers = ("fc",)

    def __init__(self, n_feats: int, vocab_size: int, *, conv_layers: int = 2, conv_channels: int = 32,
                 rnn_type: str = "gru", rnn_layers: int = 3, rnn_hidden: int = 256, bidirectional: bool = True,
                 norm: str = "batch", relu_clip: float = 20.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv, self.rnns, self.dropout, self.out_norm = build_stack(
            n_feats, conv_layers, conv_channels, rnn_type, rnn_layers, rnn_hidden, bidirectional, norm, relu_clip,
            dropout)
        self.time_reduction = self.conv.time_reduction
        self.fc = nn.Linear(rnn_hidden, vocab_size, bias=False)

    def forward(self, feats: torch.Tensor, feat_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> log_probs (B, T', V) in float32, lengths (B,)."""
        packed, lengths, frames = run_stack((self.conv, self.rnns, self.dropout, self.out_norm), feats, feat_lens)
        logits = unpack(packed._replace(data=self.fc(packed.data)), frames)  # (B, T', V)
        return F.log_softmax(logits.float(), dim=-1), lengths

    def compile_blocks(self) -> list[nn.Module]:
        """The convolution blocks (conv + BatchNorm + clipped ReLU, fused by inductor)."""
        return list(self.conv.blocks)
