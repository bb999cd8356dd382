"""Building blocks shared by the model families."""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from asrkit.data.tokenizer import Tokenizer
from asrkit.records import Batch, Emissions, Hypothesis
from asrkit.search import SearchOptions, resolve

RNNS: dict[str, type[nn.GRU] | type[nn.LSTM]] = {"gru": nn.GRU, "lstm": nn.LSTM}


class Stream(Protocol):
    """One utterance decoded as its normalised feature frames arrive (`ASRModel.start_stream`)."""

    def accept(self, feats: torch.Tensor) -> None:
        """Feature frames (t, F) of the next stretch of audio."""

    def finish(self) -> None:
        """End of audio."""

    def best(self) -> tuple[int, ...]:
        """Tokens of the best hypothesis so far."""
        ...

    def stable(self) -> tuple[int, ...]:
        """The token prefix no later audio can change."""
        ...

    def hypotheses(self, tokenizer: Tokenizer, frame_shift: float = 0.01) -> list[Hypothesis]:
        """The n-best list, best first; `frame_shift`: the feature hop in seconds."""
        ...


class ASRModel(nn.Module):
    """The contract of every model family: the trainer, inference and the CLI never branch on the family, only on
    what this declares. Decoding is stateless: every setting comes in a SearchOptions, an LM comes loaded."""

    time_reduction: int = 1  # feature frames per output frame
    objective: ClassVar[str] = "ctc"  # ctc | attention | transducer: what its search reads (asrkit.search.SETTINGS)
    # Modules whose weights are indexed by token along their first dimension (output layers, embeddings): `train
    # --init` copies their rows by token when the two models' vocabularies differ (experiment.init_weights).
    vocab_layers: tuple[str, ...] = ()

    def fusion_units(self, search: SearchOptions) -> str:
        """The LM `decode` takes for `search`: "tokens" (asrkit.lm.UnitLM), "words" (asrkit.lm.WordLM), or "" (none:
        a CTC model's beam search loads search.lm itself, once per process)."""
        return ""

    def on_step(self, step: int) -> None:
        """Called by the trainer before every optimiser step, for schedules inside a model (e.g. the
        sampling rate of scheduled sampling). Most models ignore it."""

    def loss(self, batch: Batch) -> torch.Tensor:
        """Scalar training loss of a padded batch."""
        raise NotImplementedError

    def resolve_search(self, search: SearchOptions) -> SearchOptions:
        """The search `decode` runs for `search` (asrkit.search.resolve): beam_size 0 made this model's default; a
        setting it does not read is an AsrkitError that says so."""
        return resolve(search, self.objective)

    def decode(self, feats: torch.Tensor, feat_lens: torch.Tensor, search: SearchOptions, lm: Any = None, *,
               tokenizer: Tokenizer, frame_shift: float = 0.01) -> list[list[Hypothesis]]:
        """N-best lists (best first, up to search.nbest) of (B, T, F) features; `lm`: the LM `fusion_units` names,
        loaded once by the caller (asrkit.lm.load_fusion_lm); `frame_shift`: the feature hop in seconds."""
        raise NotImplementedError

    def ctc_emissions(self, feats: torch.Tensor, feat_lens: torch.Tensor, frame_shift: float) -> Emissions | None:
        """The CTC head's log-probs (B, T', V), or None for a model without a CTC head."""
        return None

    def compile_blocks(self) -> list[nn.Module]:
        """The submodules worth torch.compile (train.compile; compiled in place with dynamic shapes). None by default:
        recurrent layers on packed sequences stay eager, and decoders loop over output steps in Python."""
        return []

    @property
    def streaming(self) -> bool:
        """Can `start_stream` decode audio chunk by chunk?"""
        return False

    def start_stream(self, search: SearchOptions) -> Stream:
        """Decoding state for one utterance fed chunk by chunk (where `streaming` is true)."""
        raise ValueError(f"a {type(self).__name__} cannot stream; train a transducer with its own unidirectional "
                         "LSTM encoder (transducer.bidirectional = false) to stream")

    def attention_weights(self, feats: torch.Tensor, feat_lens: torch.Tensor, search: SearchOptions, lm: Any = None,
                          *, tokenizer: Tokenizer) -> list[tuple[Hypothesis, torch.Tensor]] | None:
        """The best hypothesis of each utterance and its attention (U', T') over the encoder frames, for
        `--plot-attention`; None for a model without attention."""
        return None


class EncoderModule(nn.Module):
    """What every encoder is to the objectives: (B, T, F) feats, (B,) lengths -> (B, T', D), (B,) lengths.
    Recurrent encoders that run chunk by chunk override `init_stream` and `step` (transducer.Encoder)."""

    n_feats: int  # F
    out_dim: int  # D
    time_reduction: int  # T / T'
    streaming: bool = False  # runs chunk by chunk (init_stream, step)

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
