"""Model families. Every model has `loss(batch) -> Tensor` and `decode(feats, feat_lens, tokenizer, ...)`."""

from __future__ import annotations

from collections.abc import Callable

from asrkit.config import Config
from asrkit.errors import AsrkitError
from asrkit.models.deepspeech2 import DeepSpeech2
from asrkit.models.layers import ASRModel


def _deepspeech2(config: Config, n_feats: int, vocab_size: int) -> ASRModel:
    cfg = config.model
    return DeepSpeech2(n_feats, vocab_size, conv_layers=cfg.conv_layers, conv_channels=cfg.conv_channels,
                       rnn_type=cfg.rnn_type, rnn_layers=cfg.rnn_layers, rnn_hidden=cfg.rnn_hidden,
                       bidirectional=cfg.bidirectional, norm=cfg.norm, relu_clip=cfg.relu_clip,
                       dropout=cfg.dropout)


MODELS: dict[str, Callable[[Config, int, int], ASRModel]] = {
    "deepspeech2": _deepspeech2,
}


def build_model(config: Config, n_feats: int, vocab_size: int) -> ASRModel:
    """The model `config.model.family` names, sized by `config` (its [model] and family section)."""
    family = config.model.family
    if family not in MODELS:
        raise AsrkitError(f"unknown model.family {family!r}; valid families: {', '.join(MODELS)}")
    try:
        return MODELS[family](config, n_feats, vocab_size)
    except ValueError as err:
        raise AsrkitError(f"invalid [model] config: {err}") from None
