"""Configuration: frozen dataclasses, loaded from TOML plus `--set section.key=value` overrides.

Unknown keys are an error that lists the valid ones. A recipe TOML holds only the overrides it needs.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from asrkit.errors import AsrkitError
from asrkit.search import SearchOptions


@dataclass(frozen=True)
class FeatureConfig:
    sample_rate: int = 16000  # Hz; audio is resampled to this rate
    n_mels: int = 80  # mel bins
    win_ms: float = 25.0  # analysis window
    hop_ms: float = 10.0  # frame shift
    normalize: bool = True  # mean/variance normalisation with training-set statistics
    spec_augment: bool = True  # SpecAugment masking while training
    freq_masks: int = 2  # number of frequency masks
    freq_mask_width: int = 15  # max width of each frequency mask (bins)
    time_masks: int = 2  # number of time masks
    time_mask_width: int = 20  # max width of each time mask (frames)
    time_mask_ratio: float = 0.1  # a time mask never covers more than this fraction of the utterance
    time_warp: int = 0  # SpecAugment time warping: max shift W of the warp point, frames (Park et al.: 80); 0 = off
    noise_prob: float = 0.0  # probability of additive noise (DeepSpeech2) per training utterance
    noise_snr_db: tuple[float, float] = (10.0, 30.0)  # SNR range for additive noise
    noise_dir: str = ""  # folder of noise recordings; empty = white noise
    speed_perturb: bool = False  # resample each training utterance by a factor drawn per (seed, epoch, index)
    speed_factors: tuple[float, float, float] = (0.9, 1.0, 1.1)  # the factors (Ko et al. 2015), drawn uniformly


@dataclass(frozen=True)
class TokenizerConfig:
    kind: str = "char"  # char | bpe | unigram (the last two via sentencepiece)
    vocab_size: int = 256  # sentencepiece vocabulary size (without the CTC blank)
    normaliser: str = "default"  # text normaliser of the transcripts (asrkit.data.text); training sets it from DATA


@dataclass(frozen=True)
class ModelConfig:
    family: str = "deepspeech2"  # model family, see asrkit.models.MODELS
    preset: str = "small"  # small | paper: sizes below are applied on top of the preset's
    conv_layers: int = 2  # 2-D convolutions over (frequency, time), 1-3
    conv_channels: int = 32  # channels of every convolution
    rnn_type: str = "gru"  # gru | lstm
    rnn_layers: int = 3  # recurrent layers
    rnn_hidden: int = 256  # hidden units per direction
    bidirectional: bool = True  # False gives a streaming-capable model
    norm: str = "batch"  # batch | layer normalisation before each recurrent layer
    relu_clip: float = 20.0  # clipped ReLU ceiling
    dropout: float = 0.0  # dropout between recurrent layers


@dataclass(frozen=True)
class EncoderConfig:
    """The encoder under the family's objective. kind "" keeps the family's own (DeepSpeech2's convolutions and
    RNNs, the LAS listener, the transducer's LSTMs: sized in [model], [las], [transducer]); "conformer" puts a
    Conformer (asrkit.models.encoders) under any objective, sized by the keys below (or a preset)."""

    kind: str = ""  # "" (the family's own) | conformer | conv_rnn (DeepSpeech2's, sized by [model], any objective)
    preset: str = ""  # conformer sizes: cpu | s | m (the paper's S and M); keys set here override it
    d_model: int = 144  # model width
    layers: int = 8  # Conformer blocks
    heads: int = 4  # attention heads (d_model / heads must be even: rotary positions)
    ff_mult: int = 4  # feed-forward width = ff_mult x d_model
    conv_kernel: int = 15  # depthwise convolution width in encoder frames (odd)
    conv_norm: str = "layer"  # layer | batch (the paper's) normalisation inside the convolution module
    subsampling: int = 4  # front-end time reduction: 4 | 6 | 8 (FastConformer)
    subsampling_channels: int = 0  # channels of the subsampling convolutions (0 = d_model)
    dropout: float = 0.1  # dropout in every block


@dataclass(frozen=True)
class LASConfig:
    """Listen, Attend and Spell sizes (used when model.family = "las")."""

    conv_layers: int = 0  # listener front end: 3x3 convolutions with stride 2 in time and frequency (0-3)
    conv_channels: int = 32  # channels of each of those convolutions
    listener_layers: int = 4  # bidirectional LSTM layers of the listener
    pyramid_layers: int = 3  # the top ones read pairs of frames concatenated: time reduction 2^this (x8)
    listener_hidden: int = 256  # LSTM units per direction (listener output: twice this)
    attention: str = "location"  # dot (Chan et al.) | additive (Bahdanau et al.) | location (Chorowski et al.)
    attention_heads: int = 1  # heads, each with its own weights over the listener frames (Chiu et al.: 4)
    attention_dim: int = 256  # query / key projection size, split between the heads
    location_channels: int = 32  # location-aware: filters over the previous attention weights
    location_kernel: int = 31  # location-aware: width of those filters in listener frames (odd)
    embedding_dim: int = 128  # output-token embedding of the speller
    speller_layers: int = 2  # LSTM layers of the speller
    speller_hidden: int = 512  # LSTM units of the speller
    dropout: float = 0.1  # between LSTM layers of the listener and of the speller
    label_smoothing: float = 0.1  # probability mass spread uniformly over the vocabulary in the loss
    sampling_rate: float = 0.1  # scheduled sampling: highest chance of feeding the model's own sample back
    sampling_start_step: int = 0  # the chance ramps linearly from 0 at this optimiser step ...
    sampling_end_step: int = 2000  # ... to sampling_rate at this one
    ctc_weight: float = 0.0  # CTC head on the listener: loss = (1 - w) attention + w CTC; 0 = no head
    decoder: str = "lstm"  # lstm (the speller and attention above) | transformer (the keys below)
    decoder_dim: int = 256  # transformer decoder width
    decoder_layers: int = 3  # transformer decoder layers
    decoder_heads: int = 4  # transformer decoder attention heads (self and cross)
    decoder_ff: int = 1024  # transformer decoder feed-forward width


@dataclass(frozen=True)
class TransducerConfig:
    """RNN-Transducer sizes (used when model.family = "transducer")."""

    encoder_layers: int = 4  # stacked LSTM layers of the encoder (transcription network)
    encoder_hidden: int = 320  # LSTM units per direction in every encoder layer
    bidirectional: bool = False  # True: better offline accuracy, but the model can no longer stream
    input_stack: int = 3  # feature frames concatenated per encoder input frame (10 ms -> 30 ms)
    time_reduction: int = 2  # frames concatenated by the time-reduction layer (He et al. 2018); 1 = none
    reduction_after: int = 1  # encoder layers below the time-reduction layer (0 = right after input stacking)
    layer_norm: bool = True  # LayerNorm on every encoder layer's output (per frame: streaming-safe)
    predictor_embed: int = 128  # token embedding size of the prediction network (blank = start symbol)
    predictor_layers: int = 1  # LSTM layers of the prediction network
    predictor_hidden: int = 320  # LSTM units of the prediction network
    joint_dim: int = 320  # joint network: encoder and predictor projected to this size, added, tanh, -> vocab
    dropout: float = 0.1  # dropout after encoder layers, on the predictor's embeddings and outputs
    joint_max_elements: int = 50_000_000  # loss sub-batch cap on B*T'*(U+1)*(V+joint_dim); ~8 bytes each
    ctc_weight: float = 0.0  # auxiliary CTC head on the encoder: loss = (1 - w) RNN-T + w CTC; 0 = no head


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 20  # passes over the training set
    max_steps: int = 0  # stop after this many optimiser steps (0 = no limit)
    batch_seconds: float = 120.0  # cap on padded audio seconds per batch (duration-bucketed)
    max_duration: float = 60.0  # skip (and list in EXP/skipped.tsv) utterances longer than this, seconds; 0 = no limit
    max_batch_size: int = 32  # cap on utterances per batch
    sortagrad: bool = True  # first epoch in order of increasing duration
    optimizer: str = "adamw"  # adamw | sgd (Nesterov momentum)
    lr: float = 1e-3  # peak learning rate
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 1e-5  # decoupled (AdamW) or L2 (SGD)
    warmup_steps: int = 100  # linear warm-up
    anneal: float = 0.8  # learning rate x anneal after every epoch (DeepSpeech2: 0.8); schedule = "anneal" only
    schedule: str = "anneal"  # after warm-up: anneal (x anneal per epoch) | noam (inverse sqrt of the step) | cosine
    min_lr: float = 0.0  # cosine: the learning rate it decays to at the last step of train.epochs
    grad_clip: float = 400.0  # max gradient norm (DeepSpeech2: 400)
    seed: int = 1234  # seeds python, torch and the sampler
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32
    num_workers: int = 2  # data-loader worker processes
    features_on: str = "auto"  # log-mel + SpecAugment: auto (device on CUDA) | device (batched, in the step) | workers
    compile: bool = False  # CUDA: torch.compile DeepSpeech2's conv blocks; its packed-sequence RNNs stay eager
    save_every_steps: int = 200  # also write `last` this often inside an epoch (0 = only per epoch)
    log_every_steps: int = 10  # TensorBoard scalars
    max_bad_steps: int = 20  # stop after this many consecutive non-finite losses
    accum_steps: int = 1  # micro-batches (per rank) per optimiser step: global batch = ranks x accum_steps batches
    patience: int = 0  # stop after this many epochs without a new best dev WER (0 = never stop early)
    keep_epochs: int = 0  # keep EXP/epoch-<k>.pt of the last this-many epochs, for `asrkit average` (0 = none)
    select: str = "wer"  # what best.pt, patience and `average --best` rank epochs by: wer | loss
    #                      (wer: dev decoded as [decode] says, greedy unless it sets a beam as the LAS confs do;
    #                      loss: the dev loss per utterance, teacher-forced: steadier on a small dev set, and blind to
    #                      a greedy attention decoder that runs on)


@dataclass(frozen=True)
class DecodeConfig(SearchOptions):
    """How a model decodes: every search setting (asrkit.search.SearchOptions, with its comments) and the batch
    size. Saved in the checkpoint; `asrkit tune` and the transcribe / evaluate options override it."""

    batch_size: int = 16  # utterances per forward pass when transcribing


@dataclass(frozen=True)
class Config:
    features: FeatureConfig = field(default_factory=FeatureConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    las: LASConfig = field(default_factory=LASConfig)
    transducer: TransducerConfig = field(default_factory=TransducerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Model presets: applied before the user's own model keys. "paper" follows DeepSpeech2 (3 conv, 7 biGRU 1280).
PRESETS: dict[str, dict[str, Any]] = {
    "small": {},
    "medium": {"conv_layers": 2, "conv_channels": 32, "rnn_layers": 5, "rnn_hidden": 768},
    "paper": {"conv_layers": 3, "conv_channels": 32, "rnn_layers": 7, "rnn_hidden": 1280},
}

# Conformer sizes (asrkit.models.encoders): "cpu" trains on 2 CPU cores (AN4, FSDD); "s" and "m" are the
# paper's Conformer S (~10 M) and M (~30 M), for GPU boxes.
ENCODER_PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {"kind": "conformer", "d_model": 144, "layers": 8, "heads": 4, "ff_mult": 4, "conv_kernel": 15},
    "s": {"kind": "conformer", "d_model": 144, "layers": 16, "heads": 4, "ff_mult": 4, "conv_kernel": 31},
    "m": {"kind": "conformer", "d_model": 256, "layers": 16, "heads": 4, "ff_mult": 4, "conv_kernel": 31},
}

# The values a choice may take, checked whenever a config is built (TOML, --set, a checkpoint's config).
FAMILIES = ("deepspeech2", "las", "transducer")  # asrkit.models.MODELS has one builder for each
NORMALISERS = ("default", "commonvoice", "commonvoice-de", "commonvoice-en", "commonvoice-es", "commonvoice-fr",
               "commonvoice-it")  # asrkit.data.text.NORMALISERS has one normaliser for each
CHOICES: dict[tuple[str, str], tuple[Any, ...]] = {
    ("tokenizer", "kind"): ("char", "bpe", "unigram"),
    ("tokenizer", "normaliser"): NORMALISERS,
    ("model", "family"): FAMILIES,
    ("model", "rnn_type"): ("gru", "lstm"),
    ("model", "norm"): ("batch", "layer"),
    ("encoder", "kind"): ("", "conformer", "conv_rnn"),
    ("encoder", "conv_norm"): ("layer", "batch"),
    ("encoder", "subsampling"): (4, 6, 8),
    ("las", "attention"): ("dot", "additive", "location"),
    ("las", "decoder"): ("lstm", "transformer"),
    ("train", "optimizer"): ("adamw", "sgd"),
    ("train", "precision"): ("auto", "bf16", "fp32"),
    ("train", "features_on"): ("auto", "device", "workers"),
    ("train", "schedule"): ("anneal", "noam", "cosine"),
}
# The sections (and [model] keys) a model uses; a key set in any other is an error (see `check_used`).
DS2_KEYS = ("conv_layers", "conv_channels", "rnn_type", "rnn_layers", "rnn_hidden", "bidirectional", "norm",
            "relu_clip", "dropout")

# Search settings that lived in a family's section before [decode] held them all: (section, key) -> [decode] key.
# A TOML file that still sets one gets an error naming the new place; an old checkpoint is migrated
# (asrkit.checkpoint). transducer.decoding = "greedy" became decode.beam_size = 1.
MOVED_TO_DECODE: dict[tuple[str, str], str] = {
    **{("las", k): k for k in ("beam_size", "nbest", "length_penalty", "coverage_penalty", "max_len_ratio",
                               "lm_weight")},
    ("las", "lm_path"): "lm",
    ("las", "ctc_decode_weight"): "ctc_weight",
    **{("transducer", k): k for k in ("beam_size", "nbest", "max_symbols")},
    ("transducer", "decoding"): "beam_size",
}

_SECTIONS: dict[str, type] = {
    "features": FeatureConfig,
    "tokenizer": TokenizerConfig,
    "model": ModelConfig,
    "encoder": EncoderConfig,
    "las": LASConfig,
    "transducer": TransducerConfig,
    "train": TrainConfig,
    "decode": DecodeConfig,
}


def _coerce(value: Any, default: Any, key: str) -> Any:
    """Convert a TOML or --set value to the type of the field's default."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise AsrkitError(f"config {key}: expected true or false, got {value!r}")
    if isinstance(default, tuple) and not default:  # a list of strings of any length (decode.hotwords)
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise AsrkitError(f"config {key}: expected a list of strings like [\"word\"], got {value!r}")
        return tuple(value)
    if isinstance(default, tuple):
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise AsrkitError(f"config {key}: expected a list like [10, 30], got {value!r}") from None
        if not isinstance(value, (list, tuple)) or len(value) != len(default):
            raise AsrkitError(f"config {key}: expected a list of {len(default)} numbers, got {value!r}")
        return tuple(_coerce(v, d, key) for v, d in zip(value, default, strict=True))
    for typ in (int, float):
        if type(default) is typ:
            if isinstance(value, bool):
                raise AsrkitError(f"config {key}: expected {typ.__name__}, got {value!r}")
            try:
                out = typ(value)
            except (TypeError, ValueError):
                raise AsrkitError(f"config {key}: expected {typ.__name__}, got {value!r}") from None
            if typ is int and isinstance(value, float) and out != value:
                raise AsrkitError(f"config {key}: expected an integer, got {value!r}")
            return out
    if not isinstance(value, str):
        raise AsrkitError(f"config {key}: expected a string, got {value!r}")
    return value


def build_config(overrides: dict[str, dict[str, Any]]) -> Config:
    """Build a Config from {section: {key: value}}; unknown sections or keys are errors listing valid ones."""
    sections: dict[str, Any] = {}
    for name, values in overrides.items():
        if name not in _SECTIONS:
            raise AsrkitError(f"unknown config section [{name}]; valid sections: {', '.join(_SECTIONS)}")
        if not isinstance(values, dict):
            raise AsrkitError(f"config [{name}] must be a table of key = value")
    for name, cls in _SECTIONS.items():
        values = dict(overrides.get(name, {}))
        if name == "model":
            preset = str(values.get("preset", ModelConfig.preset))
            if preset not in PRESETS:
                raise AsrkitError(f"unknown model.preset {preset!r}; valid presets: {', '.join(PRESETS)}")
            values = {**PRESETS[preset], **values}
        if name == "encoder" and values.get("preset"):
            preset = str(values["preset"])
            if preset not in ENCODER_PRESETS:
                raise AsrkitError(f"unknown encoder.preset {preset!r}; valid presets: {', '.join(ENCODER_PRESETS)}")
            values = {**ENCODER_PRESETS[preset], **values}
        defaults = cls()
        valid = {f.name for f in fields(cls)}
        kwargs = {}
        for key, value in values.items():
            if (name, key) in MOVED_TO_DECODE:
                raise AsrkitError(f"config {name}.{key}: the search settings of every model are in [decode] now; "
                                  f"set decode.{MOVED_TO_DECODE[name, key]} instead"
                                  + (" (greedy: 1)" if key == "decoding" else ""))
            if key not in valid:
                raise AsrkitError(f"unknown config key {name}.{key}; "
                                  f"valid keys in [{name}]: {', '.join(sorted(valid))}")
            kwargs[key] = _coerce(value, getattr(defaults, key), f"{name}.{key}")
            valid_values = CHOICES.get((name, key))
            if valid_values is not None and kwargs[key] not in valid_values:
                raise AsrkitError(f"unknown {name}.{key} {kwargs[key]!r}; valid: "
                                  f"{', '.join(repr(v) if v == '' else str(v) for v in valid_values)}")
        try:
            sections[name] = cls(**kwargs)
        except AsrkitError as err:  # the [decode] checks (asrkit.search.SearchOptions)
            raise AsrkitError(f"config [{name}]: {err}") from None
    return Config(**sections)


def check_used(config: Config, overrides: dict[str, dict[str, Any]], where: str) -> None:
    """A key set (in `overrides`) in a section the model does not use is an error naming the section: [las] keys
    need model.family = "las", [transducer] keys "transducer", [encoder] sizes encoder.kind = "conformer", and
    DeepSpeech2's [model] sizes family "deepspeech2" with its own encoder."""
    family, kind = config.model.family, config.encoder.kind
    unused: list[tuple[str, list[str], str]] = [
        ("las", list(overrides.get("las", {})), f'model.family = "las" (this model is {family!r})'),
        ("transducer", list(overrides.get("transducer", {})),
         f'model.family = "transducer" (this model is {family!r})'),
        ("encoder", [k for k in overrides.get("encoder", {}) if k not in ("kind", "preset")],
         'encoder.kind = "conformer" (this model uses its family\'s own encoder)'),
        ("model", [k for k in overrides.get("model", {}) if k in DS2_KEYS],
         'model.family = "deepspeech2" with its own encoder, or encoder.kind = "conv_rnn"'),
    ]
    for section, keys, needs in unused:
        used = {"las": family == "las", "transducer": family == "transducer", "encoder": kind == "conformer",
                "model": (family == "deepspeech2" and kind == "") or kind == "conv_rnn"}[section]
        if keys and not used:
            raise AsrkitError(f"{where}: [{section}] {', '.join(keys)} set, but this model does not use [{section}]"
                              f"{' ' + section + ' sizes' if section == 'model' else ''}: they apply with {needs}; "
                              f"remove them or change the model")


def parse_sets(sets: list[str]) -> dict[str, dict[str, Any]]:
    """Parse ["train.lr=0.01", ...] into {section: {key: value}}; TOML syntax for values where it parses."""
    out: dict[str, dict[str, Any]] = {}
    for item in sets:
        key, sep, raw = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise AsrkitError(f"--set {item!r}: expected section.key=value, e.g. --set train.lr=0.0005")
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()
        out.setdefault(section, {})[name] = value
    return out


def decode_sets(sets: list[str]) -> dict[str, Any]:
    """transcribe / evaluate `--set decode.KEY=VALUE`: {key: value}, typed as the TOML's would be. Only the search
    settings of [decode] (asrkit.search.SearchOptions)."""
    defaults = SearchOptions()
    valid = {f.name for f in fields(SearchOptions)}
    out: dict[str, Any] = {}
    for section, values in parse_sets(sets).items():
        if section != "decode":
            raise AsrkitError(f"--set {section}.{next(iter(values))}: here --set takes the search settings of "
                              "[decode] only, e.g. --set decode.lm_weight=0.3")
        for key, value in values.items():
            if key not in valid:
                raise AsrkitError(f"unknown decode setting decode.{key}; valid: {', '.join(sorted(valid))}")
            out[key] = _coerce(value, getattr(defaults, key), f"decode.{key}")
    return out


def load_config(path: str | Path | None = None, sets: list[str] | None = None) -> Config:
    """Load a TOML config file (or defaults when None) and apply --set overrides on top."""
    data: dict[str, dict[str, Any]] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise AsrkitError(f"config file {path} not found; pass a TOML file such as "
                              "recipes/fsdd/conf/deepspeech2.toml")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as err:
            raise AsrkitError(f"{path}: invalid TOML ({err})") from None
        for name, section in data.items():
            if not isinstance(section, dict):
                raise AsrkitError(f"{path}: top-level key {name!r} must be a section like [train]; "
                                  f"valid sections: {', '.join(_SECTIONS)}")
    for name, values in parse_sets(sets or []).items():
        data.setdefault(name, {}).update(values)
    where = str(path) if path is not None else "config"
    try:
        config = build_config(data)
    except AsrkitError as err:
        raise AsrkitError(f"{where}: {err}" if path is not None else str(err)) from None
    check_used(config, data, where)
    return config


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a Config saved in a checkpoint (lists become tuples)."""
    return build_config({k: dict(v) for k, v in data.items()})
