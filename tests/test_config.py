"""Config: defaults, TOML loading, `--set` parsing and coercion, presets, errors that list valid keys."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from asrkit.config import (
    PRESETS,
    Config,
    FeatureConfig,
    ModelConfig,
    TrainConfig,
    build_config,
    config_from_dict,
    load_config,
    parse_sets,
)
from asrkit.errors import AsrkitError


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "conf.toml"
    path.write_text(text, encoding="utf-8")
    return path


# --- defaults -------------------------------------------------------------------------------------------


def test_defaults_match_dataclass_defaults() -> None:
    cfg = load_config()
    assert cfg == Config()
    assert cfg == build_config({})
    assert cfg.features == FeatureConfig()
    assert cfg.model == ModelConfig()
    assert cfg.train == TrainConfig()
    assert cfg.model.preset == "small"
    assert cfg.features.noise_snr_db == (10.0, 30.0)


def test_config_is_frozen() -> None:
    cfg = build_config({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.lr = 1.0  # type: ignore[misc]


# --- TOML -----------------------------------------------------------------------------------------------


def test_load_toml_overrides_only_given_keys(tmp_path: Path) -> None:
    path = write_toml(tmp_path, """
[train]
lr = 0.0005
epochs = 3
sortagrad = false

[features]
n_mels = 40
noise_snr_db = [5, 20]
noise_dir = "noise"

[model]
rnn_type = "lstm"
""")
    cfg = load_config(path)
    assert cfg.train.lr == 0.0005
    assert cfg.train.epochs == 3 and type(cfg.train.epochs) is int
    assert cfg.train.sortagrad is False
    assert cfg.features.n_mels == 40
    assert cfg.features.noise_snr_db == (5.0, 20.0)
    assert all(type(v) is float for v in cfg.features.noise_snr_db)
    assert cfg.features.noise_dir == "noise"
    assert cfg.model.rnn_type == "lstm"
    # untouched keys keep their defaults
    assert cfg.train.batch_seconds == TrainConfig.batch_seconds
    assert cfg.features.hop_ms == FeatureConfig.hop_ms


def test_sets_apply_on_top_of_toml(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[train]\nlr = 0.1\nepochs = 3\n")
    cfg = load_config(path, ["train.lr=0.01"])
    assert cfg.train.lr == 0.01
    assert cfg.train.epochs == 3


def test_missing_toml_file_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(AsrkitError, match="not found") as info:
        load_config(missing)
    assert str(missing) in str(info.value)


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[train\nlr = \n")
    with pytest.raises(AsrkitError, match="invalid TOML") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_top_level_scalar_in_toml_lists_sections(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "lr = 0.1\n")
    with pytest.raises(AsrkitError) as info:
        load_config(path)
    msg = str(info.value)
    assert "'lr'" in msg
    for section in ("features", "tokenizer", "model", "las", "transducer", "train", "decode"):
        assert section in msg


def test_unknown_key_in_toml_lists_valid_keys(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[train]\nlrate = 0.1\n")
    with pytest.raises(AsrkitError) as info:
        load_config(path)
    msg = str(info.value)
    assert "unknown config key train.lrate" in msg
    for key in ("lr", "warmup_steps", "batch_seconds", "max_batch_size"):
        assert key in msg


# --- --set parsing --------------------------------------------------------------------------------------


def test_parse_sets_types() -> None:
    out = parse_sets([
        "train.lr=0.01",
        "train.epochs=5",
        "train.sortagrad=false",
        "features.noise_snr_db=[5, 15]",
        "model.rnn_type=lstm",
        'model.norm="layer"',
        "train.device=cuda:1",
        " decode.batch_size = 4 ",
    ])
    assert out["train"] == {"lr": 0.01, "epochs": 5, "sortagrad": False, "device": "cuda:1"}
    assert type(out["train"]["epochs"]) is int
    assert out["features"] == {"noise_snr_db": [5, 15]}
    assert out["model"] == {"rnn_type": "lstm", "norm": "layer"}
    assert out["decode"] == {"batch_size": 4}


def test_parse_sets_value_may_contain_equals() -> None:
    assert parse_sets(["features.noise_dir=a=b"]) == {"features": {"noise_dir": "a=b"}}


@pytest.mark.parametrize("item", ["lr=0.1", "train.lr", "train.=3", "=3", "train"])
def test_parse_sets_bad_syntax(item: str) -> None:
    with pytest.raises(AsrkitError, match="expected section.key=value"):
        parse_sets([item])


def test_sets_coerce_to_field_types() -> None:
    cfg = load_config(None, ["train.lr=1", "train.epochs=7.0", "train.sortagrad=no"])
    assert cfg.train.lr == 1.0 and type(cfg.train.lr) is float  # int -> float
    assert cfg.train.epochs == 7 and type(cfg.train.epochs) is int  # integral float -> int
    assert cfg.train.sortagrad is False  # yes/no strings


@pytest.mark.parametrize("raw,expected", [("true", True), ("false", False), ('"yes"', True), ('"no"', False),
                                          ('"1"', True), ('"0"', False), ('"TRUE"', True)])
def test_bool_coercion(raw: str, expected: bool) -> None:
    cfg = load_config(None, [f"model.bidirectional={raw}"])
    assert cfg.model.bidirectional is expected


def test_string_numbers_coerce() -> None:
    cfg = build_config({"train": {"lr": "0.002", "epochs": "4"}, "features": {"noise_snr_db": "[1, 2]"}})
    assert cfg.train.lr == 0.002
    assert cfg.train.epochs == 4
    assert cfg.features.noise_snr_db == (1.0, 2.0)


def test_tuple_from_set_is_tuple_of_floats() -> None:
    cfg = load_config(None, ["features.noise_snr_db=[0, 12.5]"])
    assert cfg.features.noise_snr_db == (0.0, 12.5)
    assert isinstance(cfg.features.noise_snr_db, tuple)


# --- bad values name the key ----------------------------------------------------------------------------


@pytest.mark.parametrize("section,key,value,fragment", [
    ("train", "lr", "fast", "expected float"),
    ("train", "epochs", "many", "expected int"),
    ("train", "epochs", 2.5, "expected an integer"),
    ("train", "sortagrad", "maybe", "expected true or false"),
    ("train", "sortagrad", 1, "expected true or false"),
    ("features", "noise_snr_db", [1, 2, 3], "expected a list of 2 numbers"),
    ("features", "noise_snr_db", "[1, 2", "expected a list like"),
    ("features", "noise_snr_db", ["a", 2], "expected float, got 'a'"),
    ("features", "noise_snr_db", 10, "expected a list of 2 numbers"),
    ("model", "rnn_type", 3, "expected a string"),
    ("train", "lr", [1], "expected float"),
])
def test_bad_value_names_the_key(section: str, key: str, value: object, fragment: str) -> None:
    with pytest.raises(AsrkitError) as info:
        build_config({section: {key: value}})
    msg = str(info.value)
    assert f"{section}.{key}" in msg
    assert fragment in msg
    assert repr(value) in msg or isinstance(value, list)  # a bad list element is named on its own


def test_bad_value_from_set_names_the_key() -> None:
    with pytest.raises(AsrkitError, match=r"train\.epochs.*expected int.*'abc'"):
        load_config(None, ["train.epochs=abc"])


@pytest.mark.parametrize("key", ["lr", "epochs"])
def test_bool_for_number_is_rejected(key: str) -> None:
    with pytest.raises(AsrkitError, match=f"train.{key}"):
        build_config({"train": {key: True}})


# --- unknown sections and keys --------------------------------------------------------------------------


def test_unknown_section_lists_valid_sections() -> None:
    with pytest.raises(AsrkitError) as info:
        build_config({"optim": {"lr": 0.1}})
    msg = str(info.value)
    assert "unknown config section [optim]" in msg
    assert "valid sections: features, tokenizer, model, encoder, las, transducer, train, decode" in msg


def test_unknown_section_from_set() -> None:
    with pytest.raises(AsrkitError, match=r"unknown config section \[trian\]"):
        load_config(None, ["trian.lr=0.1"])


@pytest.mark.parametrize("section,cls", [("train", TrainConfig), ("features", FeatureConfig),
                                         ("model", ModelConfig)])
def test_unknown_key_lists_every_valid_key(section: str, cls: type) -> None:
    with pytest.raises(AsrkitError) as info:
        build_config({section: {"bogus_key": 1}})
    msg = str(info.value)
    assert f"unknown config key {section}.bogus_key" in msg
    assert f"valid keys in [{section}]" in msg
    for f in dataclasses.fields(cls):
        assert f.name in msg


def test_section_must_be_a_table() -> None:
    with pytest.raises(AsrkitError, match=r"config \[train\] must be a table"):
        build_config({"train": 3})  # type: ignore[dict-item]


# --- presets --------------------------------------------------------------------------------------------


def test_paper_preset() -> None:
    cfg = build_config({"model": {"preset": "paper"}})
    assert cfg.model.preset == "paper"
    assert cfg.model.conv_layers == 3
    assert cfg.model.rnn_layers == 7
    assert cfg.model.rnn_hidden == 1280


def test_paper_preset_from_set() -> None:
    cfg = load_config(None, ["model.preset=paper"])
    assert (cfg.model.conv_layers, cfg.model.rnn_layers, cfg.model.rnn_hidden) == (3, 7, 1280)


def test_explicit_keys_override_preset(tmp_path: Path) -> None:
    cfg = build_config({"model": {"preset": "paper", "rnn_hidden": 512, "conv_layers": 2}})
    assert cfg.model.rnn_hidden == 512
    assert cfg.model.conv_layers == 2
    assert cfg.model.rnn_layers == 7  # still from the preset
    path = write_toml(tmp_path, '[model]\npreset = "paper"\n')
    cfg = load_config(path, ["model.rnn_layers=4"])
    assert (cfg.model.rnn_layers, cfg.model.rnn_hidden) == (4, 1280)


def test_every_preset_builds() -> None:
    for name, values in PRESETS.items():
        cfg = build_config({"model": {"preset": name}})
        for key, value in values.items():
            assert getattr(cfg.model, key) == value


def test_unknown_preset_lists_valid_presets() -> None:
    with pytest.raises(AsrkitError) as info:
        build_config({"model": {"preset": "huge"}})
    msg = str(info.value)
    assert "'huge'" in msg
    for name in PRESETS:
        assert name in msg


# --- round trip -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides", [
    {},
    {"model": {"preset": "paper"}},
    {"model": {"preset": "paper", "rnn_hidden": 64}, "features": {"noise_snr_db": [3, 9], "n_mels": 40}},
    {"train": {"lr": 0.5, "sortagrad": False, "device": "cpu"}, "tokenizer": {"kind": "bpe", "vocab_size": 64}},
])
def test_round_trip(overrides: dict) -> None:
    cfg = build_config(overrides)
    data = cfg.to_dict()
    assert set(data) == {"features", "tokenizer", "model", "encoder", "las", "transducer", "train", "decode"}
    assert config_from_dict(data) == cfg


def test_round_trip_with_lists_from_a_checkpoint() -> None:
    cfg = build_config({"features": {"noise_snr_db": [4, 8]}})
    data = cfg.to_dict()
    data["features"]["noise_snr_db"] = list(data["features"]["noise_snr_db"])  # as if it came back as a list
    assert config_from_dict(data) == cfg
