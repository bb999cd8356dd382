"""DeepSpeech2 (Amodei et al. 2016): 2-D convolutions, a stack of recurrent layers, CTC.

Shapes: B batch, T feature frames, F mel bins, C conv channels, T' = ceil(T / 2) output frames,
H hidden units, V vocabulary (blank = 0).

    feats (B, T, F) -> conv (B, C, F', T') -> (B, T', C*F') -> RNN stack (B, T', H) -> FC (B, T', V)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from asrkit.data.tokenizer import Tokenizer
from asrkit.decoding import ctc_decode
from asrkit.models.layers import ASRModel, EncoderModule, RecurrentLayer, length_mask, make_norm, pack, unpack
from asrkit.records import Batch, Emissions, Hypothesis
from asrkit.search import SearchOptions

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
            padding = (kernel[0] // 2, kernel[1] // 2)
            blocks.append(nn.Sequential(
                nn.Conv2d(in_ch, channels, kernel, stride, padding, bias=False),
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
            x = block(x)
            pad = kernel[1] // 2
            lengths = torch.div(lengths + 2 * pad - kernel[1], stride[1], rounding_mode="floor") + 1
            x = x * length_mask(lengths, x.shape[-1])[:, None, None, :].to(x.dtype)
        b, c, f, t = x.shape
        return x.permute(0, 3, 1, 2).reshape(b, t, c * f), lengths  # (B, T', C*F')


class ConvRNNEncoder(EncoderModule):
    """DeepSpeech2's encoder alone (conv front end, recurrent stack, output norm), for another objective
    (`encoder.kind = "conv_rnn"`, sized by [model]): (B, T, F) -> (B, T', H); padded frames are zero."""

    def __init__(self, n_feats: int, *, conv_layers: int = 2, conv_channels: int = 32, rnn_type: str = "gru",
                 rnn_layers: int = 3, rnn_hidden: int = 256, bidirectional: bool = True, norm: str = "batch",
                 relu_clip: float = 20.0, dropout: float = 0.0) -> None:
        super().__init__()
        if rnn_layers < 1:
            raise ValueError(f"rnn_layers must be at least 1, got {rnn_layers}")
        self.conv = ConvFrontEnd(n_feats, conv_layers, conv_channels, relu_clip)
        self.rnns = nn.ModuleList(
            RecurrentLayer(self.conv.out_dim if i == 0 else rnn_hidden, rnn_hidden, rnn_type, bidirectional,
                           norm=None if i == 0 else norm)
            for i in range(rnn_layers)
        )
        self.dropout = nn.Dropout(dropout)
        self.out_norm = make_norm(norm, rnn_hidden)
        self.n_feats, self.out_dim, self.time_reduction = n_feats, rnn_hidden, self.conv.time_reduction

    def forward(self, feats: torch.Tensor, feat_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, lengths = self.conv(feats, feat_lens)  # (B, T', D)
        packed = pack(x, lengths)
        for i, rnn in enumerate(self.rnns):
            if i > 0 and self.dropout.p > 0:
                packed = packed._replace(data=self.dropout(packed.data))
            packed = rnn(packed)
        packed = packed._replace(data=self.out_norm(packed.data))
        return unpack(packed, x.shape[1]), lengths  # (B, T', H)


class DeepSpeech2(ASRModel):
    def __init__(self, n_feats: int, vocab_size: int, *, conv_layers: int = 2, conv_channels: int = 32,
                 rnn_type: str = "gru", rnn_layers: int = 3, rnn_hidden: int = 256, bidirectional: bool = True,
                 norm: str = "batch", relu_clip: float = 20.0, dropout: float = 0.0) -> None:
        super().__init__()
        if rnn_layers < 1:
            raise ValueError(f"rnn_layers must be at least 1, got {rnn_layers}")
        self.conv = ConvFrontEnd(n_feats, conv_layers, conv_channels, relu_clip)
        self.time_reduction = self.conv.time_reduction
        self.rnns = nn.ModuleList(
            RecurrentLayer(self.conv.out_dim if i == 0 else rnn_hidden, rnn_hidden, rnn_type, bidirectional,
                           norm=None if i == 0 else norm)
            for i in range(rnn_layers)
        )
        self.dropout = nn.Dropout(dropout)
        self.out_norm = make_norm(norm, rnn_hidden)
        self.fc = nn.Linear(rnn_hidden, vocab_size, bias=False)

    def forward(self, feats: torch.Tensor, feat_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> log_probs (B, T', V) in float32, lengths (B,)."""
        x, lengths = self.conv(feats, feat_lens)  # (B, T', D)
        packed = pack(x, lengths)
        for i, rnn in enumerate(self.rnns):
            if i > 0 and self.dropout.p > 0:
                packed = packed._replace(data=self.dropout(packed.data))
            packed = rnn(packed)
        packed = packed._replace(data=self.fc(self.out_norm(packed.data)))
        logits = unpack(packed, x.shape[1])  # (B, T', V)
        return F.log_softmax(logits.float(), dim=-1), lengths

    def compile_blocks(self) -> list[nn.Module]:
        """The convolution blocks (conv + BatchNorm + clipped ReLU, fused by inductor)."""
        return list(self.conv.blocks)

    def ctc_emissions(self, feats: torch.Tensor, feat_lens: torch.Tensor, frame_shift: float) -> Emissions:
        """`frame_shift` is the feature hop in seconds; the emissions' is that times the time reduction."""
        log_probs, lengths = self(feats, feat_lens)
        return Emissions(log_probs, lengths, frame_shift * self.time_reduction)

    def loss(self, batch: Batch) -> torch.Tensor:
        """CTC loss summed over each utterance, averaged over the batch."""
        log_probs, lengths = self(batch.feats, batch.feat_lens)
        return F.ctc_loss(log_probs.transpose(0, 1), batch.targets, lengths, batch.target_lens,
                          blank=0, reduction="sum", zero_infinity=False) / len(batch.ids)

    @torch.no_grad()
    def decode(self, feats: torch.Tensor, feat_lens: torch.Tensor, search: SearchOptions, lm: Any = None, *,
               tokenizer: Tokenizer, frame_shift: float = 0.01) -> list[list[Hypothesis]]:
        """Greedy (best path), or beam search over the emissions with search.lm (`lm`: an asrkit.lm.WordLM of it,
        else loaded here once per process)."""
        search = self.resolve_search(search)
        return ctc_decode(self.ctc_emissions(feats, feat_lens, frame_shift), tokenizer, search, lm)
