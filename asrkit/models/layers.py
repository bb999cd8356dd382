"""Building blocks shared by the model families."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from asrkit.data.tokenizer import Tokenizer
from asrkit.records import Batch, Hypothesis

RNNS: dict[str, type[nn.GRU] | type[nn.LSTM]] = {"gru": nn.GRU, "lstm": nn.LSTM}


class ASRModel(nn.Module):
    """The contract of every model family: the trainer and `transcribe` never branch on the family."""

    time_reduction: int = 1  # feature frames per output frame

    def on_step(self, step: int) -> None:
        """Called by the trainer before every optimiser step, for schedules inside a model (e.g. the
        sampling rate of scheduled sampling). Most models ignore it."""

    def loss(self, batch: Batch) -> torch.Tensor:
        """Scalar training loss of a padded batch."""
        raise NotImplementedError

    def decode(self, feats: torch.Tensor, feat_lens: torch.Tensor, tokenizer: Tokenizer,
               frame_shift: float = 0.01) -> list[Hypothesis]:
        """Transcripts of (B, T, F) features; `frame_shift` is the feature hop in seconds."""
        raise NotImplementedError

    def search_name(self) -> str:
        """How `decode` searches, for reports: "greedy" (CTC), or the model's own search and its settings."""
        return "greedy"

    def set_search(self, beam_size: int, nbest: int = 1) -> None:
        """Make `decode` / `decode_nbest` use the model's own search with this beam (1: greedy) and n-best list
        length, in place of the ones in its config (`asrkit evaluate/transcribe --beam-size/--nbest` on LAS and
        RNN-T). CTC models have no search of their own: their emissions are beam-searched by asrkit.decoding."""
        raise NotImplementedError(f"{type(self).__name__} has no search of its own")


class EncoderModule(nn.Module):
    """What every encoder is to the objectives: (B, T, F) feats, (B,) lengths -> (B, T', D), (B,) lengths.
    Recurrent encoders that run chunk by chunk override `init_stream` and `step` (transducer.Encoder)."""

    n_feats: int  # F
    out_dim: int  # D
    time_reduction: int  # T / T'

    def init_stream(self, device: torch.device) -> list:
        raise ValueError(f"a {type(self).__name__} needs the whole utterance and cannot stream; train a transducer "
                         "with its own unidirectional LSTM encoder (transducer.bidirectional = false) to stream")

    def step(self, feats: torch.Tensor, state: list, final: bool = False) -> tuple[torch.Tensor, list]:
        raise ValueError(f"a {type(self).__name__} cannot stream")


def make_norm(kind: str, dim: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm1d(dim)
    if kind == "layer":
        return nn.LayerNorm(dim)
    raise ValueError(f"unknown norm {kind!r}; valid: batch, layer")


class RecurrentLayer(nn.Module):
    """[norm ->] RNN over a packed sequence; the two directions are summed (DeepSpeech2).

    The norm runs on the packed data, i.e. on real frames only: padding never changes statistics.
    """

    def __init__(self, input_size: int, hidden: int, rnn_type: str, bidirectional: bool,
                 norm: str | None) -> None:
        super().__init__()
        if rnn_type not in RNNS:
            raise ValueError(f"unknown rnn_type {rnn_type!r}; valid: {', '.join(RNNS)}")
        self.norm = make_norm(norm, input_size) if norm else None
        self.rnn = RNNS[rnn_type](input_size, hidden, batch_first=True, bidirectional=bidirectional)
        self.bidirectional = bidirectional
        self.hidden = hidden

    def forward(self, x: PackedSequence) -> PackedSequence:
        if self.norm is not None:
            x = PackedSequence(self.norm(x.data), x.batch_sizes, x.sorted_indices, x.unsorted_indices)
        out, _ = self.rnn(x)
        if self.bidirectional:
            data = out.data.view(-1, 2, self.hidden).sum(1)  # (N, 2H) -> (N, H)
            out = PackedSequence(data, out.batch_sizes, out.sorted_indices, out.unsorted_indices)
        return out


def pack(x: torch.Tensor, lengths: torch.Tensor) -> PackedSequence:
    return pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)


def unpack(x: PackedSequence, total_length: int) -> torch.Tensor:
    out, _ = pad_packed_sequence(x, batch_first=True, total_length=total_length)
    return out


def length_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B,) -> (B, max_len) bool, True on real frames."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]
