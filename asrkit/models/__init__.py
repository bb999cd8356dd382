"""Model families: family -> builder (the registry). Every model keeps the contract of asrkit.models.layers.ASRModel
(`loss`, `decode(feats, feat_lens, search, lm)`, `ctc_emissions`, `streaming`)."""

from __future__ import annotations

from collections.abc import Callable

from asrkit.config import Config
from asrkit.errors import AsrkitError
from asrkit.models.ctc import CTCModel
from asrkit.models.deepspeech2 import ConvRNNEncoder, DeepSpeech2
from asrkit.models.encoders import ConformerEncoder
from asrkit.models.las import build_las
from asrkit.models.layers import ASRModel, EncoderModule
from asrkit.models.transducer import Encoder, Joiner, Predictor, Transducer

ENCODERS = ("", "conformer", "conv_rnn")  # "": the family's own encoder; conv_rnn: DeepSpeech2's, sized by [model]


def _encoder(config: Config, n_feats: int) -> EncoderModule | None:
    """The [encoder] the config asks for, or None for the family's own."""
    e, m = config.encoder, config.model
    if e.kind == "":
        return None
    if e.kind == "conv_rnn":
        return ConvRNNEncoder(n_feats, conv_layers=m.conv_layers, conv_channels=m.conv_channels, rnn_type=m.rnn_type,
                              rnn_layers=m.rnn_layers, rnn_hidden=m.rnn_hidden, bidirectional=m.bidirectional,
                              norm=m.norm, relu_clip=m.relu_clip, dropout=m.dropout)
    return ConformerEncoder(n_feats, d_model=e.d_model, layers=e.layers, heads=e.heads, ff_mult=e.ff_mult,
                            conv_kernel=e.conv_kernel, subsampling=e.subsampling,
                            subsampling_channels=e.subsampling_channels, conv_norm=e.conv_norm, dropout=e.dropout)


def _deepspeech2(config: Config, n_feats: int, vocab_size: int) -> ASRModel:
    encoder = _encoder(config, n_feats)
    if encoder is not None:
        return CTCModel(encoder, vocab_size)
    cfg = config.model
    return DeepSpeech2(n_feats, vocab_size, conv_layers=cfg.conv_layers, conv_channels=cfg.conv_channels,
                       rnn_type=cfg.rnn_type, rnn_layers=cfg.rnn_layers, rnn_hidden=cfg.rnn_hidden,
                       bidirectional=cfg.bidirectional, norm=cfg.norm, relu_clip=cfg.relu_clip,
                       dropout=cfg.dropout)


def _las(config: Config, n_feats: int, vocab_size: int) -> ASRModel:
    return build_las(config.las, n_feats, vocab_size, listener=_encoder(config, n_feats))


def _transducer(config: Config, n_feats: int, vocab_size: int) -> ASRModel:
    cfg = config.transducer
    encoder: EncoderModule | None = _encoder(config, n_feats)
    if encoder is None:
        encoder = Encoder(n_feats, layers=cfg.encoder_layers, hidden=cfg.encoder_hidden,
                          bidirectional=cfg.bidirectional, input_stack=cfg.input_stack,
                          time_reduction=cfg.time_reduction, reduction_after=cfg.reduction_after,
                          layer_norm=cfg.layer_norm, dropout=cfg.dropout)
    predictor = Predictor(vocab_size, embed=cfg.predictor_embed, layers=cfg.predictor_layers,
                          hidden=cfg.predictor_hidden, dropout=cfg.dropout)
    joiner = Joiner(encoder.out_dim, predictor.out_dim, cfg.joint_dim, vocab_size)
    return Transducer(encoder, predictor, joiner, joint_max_elements=cfg.joint_max_elements,
                      ctc_weight=cfg.ctc_weight)


MODELS: dict[str, Callable[[Config, int, int], ASRModel]] = {
    "deepspeech2": _deepspeech2,
    "transducer": _transducer,
    "las": _las,
}


def build_model(config: Config, n_feats: int, vocab_size: int) -> ASRModel:
    """The model `config.model.family` names, sized by `config` (its [model] and family section)."""
    family = config.model.family
    if family not in MODELS:
        raise AsrkitError(f"unknown model.family {family!r}; valid families: {', '.join(MODELS)}")
    if config.encoder.kind not in ENCODERS:
        raise AsrkitError(f"unknown encoder.kind {config.encoder.kind!r}; valid kinds: "
                          f"{', '.join(repr(k) for k in ENCODERS)} (\"\" = the family's own encoder)")
    try:
        model = MODELS[family](config, n_feats, vocab_size)
    except ValueError as err:
        raise AsrkitError(f"invalid [model] config: {err}") from None
    try:
        model.resolve_search(config.decode.search_options())  # [decode] settings this model cannot use: say so now
    except AsrkitError as err:
        raise AsrkitError(f"config [decode]: {err}") from None
    return model
