"""The models as traceable modules for torch.onnx: the same weights and the same operations as their `forward`,
with the recurrent layers run on padded batches instead of packed sequences (which ONNX cannot express).

A unidirectional RNN on a right-padded batch gives the packed result on every real frame (padding comes after
them). The backward direction of a bidirectional RNN reads each sequence reversed *within its length*
(`reverse_within`), so padding never reaches a real frame either. Outputs on padded frames are not defined: the
callers read each utterance up to its length, as they do for the PyTorch models.

Shapes: B batch, T feature frames, F mel bins, T' encoder frames, D encoder output, J joint size, V vocabulary,
N hypotheses, L predictor layers, P predictor units.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from asrkit.errors import AsrkitError
from asrkit.models.ctc import CTCModel
from asrkit.models.deepspeech2 import ConvRNNEncoder, DeepSpeech2
from asrkit.models.encoders import ConformerEncoder, ConvSubsampling
from asrkit.models.layers import ASRModel, RecurrentLayer
from asrkit.models.transducer import Encoder, EncoderLayer, Joiner, Predictor, Transducer


def reverse_within(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(B, T, D): each sequence's first lengths[b] frames in reverse order, the padding after them left in place."""
    t = torch.arange(x.shape[1], device=x.device)[None, :]  # (1, T)
    n = lengths[:, None].to(t.dtype)
    index = torch.where(t < n, n - 1 - t, t)  # (B, T)
    return x.gather(1, index[:, :, None].expand(-1, -1, x.shape[2]))


def _direction(rnn: nn.LSTM | nn.GRU, suffix: str) -> nn.Module:
    """One direction of a one-layer (bidirectional) RNN as a unidirectional RNN with its weights."""
    single = type(rnn)(rnn.input_size, rnn.hidden_size, batch_first=True, bias=rnn.bias)
    single.load_state_dict({name: getattr(rnn, name + suffix) for name, _ in single.named_parameters()})
    return single


class PaddedRNN(nn.Module):
    """An nn.LSTM / nn.GRU (batch_first) on a right-padded batch: (B, T, D), (B,) -> forward and backward outputs
    (B, T, H) each (backward None for a unidirectional RNN)."""

    def __init__(self, rnn: nn.LSTM | nn.GRU) -> None:
        super().__init__()
        if rnn.bidirectional and rnn.num_layers != 1:
            raise AsrkitError(f"a bidirectional {type(rnn).__name__} of {rnn.num_layers} layers cannot be exported "
                              "(asrkit's models use one layer per recurrent module)")
        self.forward_rnn = _direction(rnn, "") if rnn.bidirectional else rnn
        self.backward_rnn = _direction(rnn, "_reverse") if rnn.bidirectional else None

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        fwd, _ = self.forward_rnn(x)
        if self.backward_rnn is None:
            return fwd, None
        bwd, _ = self.backward_rnn(reverse_within(x, lengths))
        return fwd, reverse_within(bwd, lengths)


def _per_frame(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A norm that PyTorch runs on packed frames (N, D) (BatchNorm1d in eval mode, LayerNorm), on (B, T, D)."""
    return norm(x.reshape(-1, x.shape[-1])).reshape(x.shape)


class ConvRNNGraph(nn.Module):
    """DeepSpeech2's encoder (conv front end, recurrent stack summing its directions, output norm):
    (B, T, F), (B,) -> (B, T', H), (B,)."""

    def __init__(self, conv: nn.Module, rnns: nn.ModuleList, out_norm: nn.Module) -> None:
        super().__init__()
        self.conv, self.out_norm = conv, out_norm
        self.norms = nn.ModuleList(layer.norm if layer.norm is not None else nn.Identity() for layer in rnns
                                   if isinstance(layer, RecurrentLayer))
        self.rnns = nn.ModuleList(PaddedRNN(layer.rnn) for layer in rnns if isinstance(layer, RecurrentLayer))

    def forward(self, feats: torch.Tensor, feat_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, lengths = self.conv(feats, feat_lens)
        for norm, rnn in zip(self.norms, self.rnns, strict=True):
            fwd, bwd = rnn(_per_frame(norm, x), lengths)
            x = fwd if bwd is None else fwd + bwd
        return _per_frame(self.out_norm, x), lengths


class _LayerGraph(nn.Module):
    """transducer.EncoderLayer on a padded batch: LSTM (directions concatenated) -> norm."""

    def __init__(self, layer: EncoderLayer) -> None:
        super().__init__()
        self.rnn, self.norm = PaddedRNN(layer.rnn), layer.norm

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fwd, bwd = self.rnn(x, lengths)
        return self.norm(fwd if bwd is None else torch.cat([fwd, bwd], dim=-1)), lengths


class TransducerEncoderGraph(nn.Module):
    """The transducer's own encoder (frame stacking, LSTM layers concatenating their directions):
    (B, T, F), (B,) -> (B, T', D), (B,)."""

    def __init__(self, encoder: Encoder) -> None:
        super().__init__()
        self.stages = nn.ModuleList(_LayerGraph(s) if isinstance(s, EncoderLayer) else s for s in encoder.stages)

    def forward(self, feats: torch.Tensor, feat_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, lengths = feats, feat_lens
        for stage in self.stages:  # Stack (frame stacking, traceable as it is) or _LayerGraph
            x, lengths = stage(x, lengths)
        return x, lengths


ENCODER_GRAPHS: dict[type, Callable[[Any], nn.Module]] = {  # encoder class -> its traceable form
    ConformerEncoder: lambda e: e,  # masks, no packing: traceable as it is
    ConvRNNEncoder: lambda e: ConvRNNGraph(e.conv, e.rnns, e.out_norm),
    Encoder: TransducerEncoderGraph,
}


def encoder_graph(encoder: nn.Module) -> nn.Module:
    """The traceable form of an encoder (ENCODER_GRAPHS); an AsrkitError for one without."""
    for cls, build in ENCODER_GRAPHS.items():
        if type(encoder) is cls:
            return build(encoder)
    raise AsrkitError(f"a {type(encoder).__name__} encoder cannot be exported to ONNX yet; exportable encoders: "
                      f"{', '.join(c.__name__ for c in ENCODER_GRAPHS)}")


class CTCGraph(nn.Module):
    """feats (B, T, F) float32, feat_lens (B,) int64 -> log_probs (B, T', V) float32, lengths (B,) int64."""

    def __init__(self, encoder: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, feats: torch.Tensor, feat_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        enc, lengths = self.encoder(feats, feat_lens)
        return F.log_softmax(self.head(enc).float(), dim=-1), lengths


def ctc_graph(model: ASRModel) -> CTCGraph:
    """A CTC model (DeepSpeech2, or an encoder with a CTC head) as one traceable graph."""
    if isinstance(model, DeepSpeech2):
        return CTCGraph(ConvRNNGraph(model.conv, model.rnns, model.out_norm), model.fc)
    if isinstance(model, CTCModel):
        return CTCGraph(encoder_graph(model.encoder), model.head)
    raise AsrkitError(f"a {type(model).__name__} (CTC objective) cannot be exported to ONNX yet")


class TransducerEncoderProjected(nn.Module):
    """feats (B, T, F), feat_lens (B,) -> the encoder output through the joiner's encoder projection (B, T', J),
    lengths (B,): what the searches consume (asrkit.models.transducer_search)."""

    def __init__(self, model: Transducer) -> None:
        super().__init__()
        self.encoder, self.enc_proj = encoder_graph(model.encoder), model.joiner.enc_proj

    def forward(self, feats: torch.Tensor, feat_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        enc, lengths = self.encoder(feats, feat_lens)
        return self.enc_proj(enc), lengths


class PredictorStep(nn.Module):
    """One token per hypothesis: tokens (N,) int64, h, c (L, N, P) -> projected output (N, J), h, c."""

    def __init__(self, predictor: Predictor, joiner: Joiner) -> None:
        super().__init__()
        self.predictor, self.pred_proj = predictor, joiner.pred_proj

    def forward(self, tokens: torch.Tensor, h: torch.Tensor,
                c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out, (h, c) = self.predictor.rnn(self.predictor.embed(tokens[:, None]), (h, c))
        return self.pred_proj(out[:, 0]), h, c


class JointLogProbs(nn.Module):
    """enc (N, J), pred (N, J) (both projected) -> log-probabilities (N, V) float32."""

    def __init__(self, joiner: Joiner) -> None:
        super().__init__()
        self.joiner = joiner

    def forward(self, enc: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.joiner(enc, pred).float(), dim=-1)


def min_frames(model: nn.Module) -> int:
    """The fewest feature frames the graph takes: a Conformer's 'valid' subsampling convolutions need a few (its
    `forward` pads shorter inputs with zeros; the runtime pads them so instead)."""
    need = 1
    for module in model.modules():
        if isinstance(module, ConvSubsampling):
            frames = 1
            for k, s in reversed(module.specs):
                frames = (frames - 1) * s + k
            need = max(need, frames)
    return need
