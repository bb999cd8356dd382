"""Named text normalisers: one registry; prepare records the name beside the manifests, training carries it into the
config (and so the checkpoint), `asrkit lm build` normalises LM text with it: Common Voice's accent folding is the
same in a manifest and in an LM built from raw text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import FSDD_ASSETS, needs_kenlm_tools
from test_prepare_commonvoice import DEV, TEST, TRAIN, make_release
from typer.testing import CliRunner

from asrkit import config as configlib
from asrkit import experiment, lm_files
from asrkit.checkpoint import load_checkpoint
from asrkit.cli import app
from asrkit.config import build_config, config_from_dict
from asrkit.data import text as textlib
from asrkit.data.text import NORMALISER_FILE, get_normaliser, normalize_text, read_normaliser, write_normaliser
from asrkit.errors import AsrkitError
from asrkit.prepare import commonvoice as cv
from asrkit.prepare.common import finish
from asrkit.records import Utterance
from asrkit.train import fit

VALID = "valid: default, commonvoice, commonvoice-de, commonvoice-en, commonvoice-es, commonvoice-fr, commonvoice-it"


def test_the_config_lists_every_normaliser() -> None:
    assert configlib.NORMALISERS == tuple(textlib.NORMALISERS)


def test_default_is_todays_normalize_text() -> None:
    for text in ("  Hello, World!  It\u2019s 3 o'clock. ", "Caf\u00e9 \u00c6sthetics", "Route 66"):
        assert get_normaliser("default")(text) == (normalize_text(text), None)
    assert normalize_text("Caf\u00e9s") == "caf\u00e9s"  # default keeps accents: Common Voice English folds them
    assert get_normaliser("commonvoice-en")("Caf\u00e9s") == ("cafes", None)


def test_unknown_normaliser_is_an_error_listing_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(AsrkitError, match=f"unknown normaliser 'bogus'; {VALID}$"):
        get_normaliser("bogus")
    with pytest.raises(AsrkitError, match=f"unknown tokenizer.normaliser 'bogus'; {VALID}$"):
        build_config({"tokenizer": {"normaliser": "bogus"}})
    (tmp_path / NORMALISER_FILE).write_text('{"normaliser": "bogus"}\n')
    with pytest.raises(AsrkitError, match=f"normaliser.json: unknown normaliser 'bogus'; {VALID}$"):
        read_normaliser(tmp_path)
    text = tmp_path / "lm.txt"
    text.write_text("one two\n")
    result = CliRunner().invoke(app, ["lm", "build", str(text), "--out", str(tmp_path / "lm"), "--normaliser", "bogus"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert f"unknown normaliser 'bogus'; {VALID}" in " ".join(result.output.split())
    with pytest.raises(AsrkitError, match="unknown normaliser 'bogus'"):
        finish(tmp_path / "out", {"train": [Utterance("a", "a.wav", 1.0, "one")]}, [], normaliser="bogus")
    assert not (tmp_path / "out" / "train.jsonl").exists()  # refused before any manifest is written


def test_prepare_records_the_default_normaliser(tmp_path: Path) -> None:
    finish(tmp_path, {"train": [Utterance("a", "a.wav", 1.0, "one")]}, [])
    assert json.loads((tmp_path / NORMALISER_FILE).read_text()) == {"normaliser": "default"}
    assert read_normaliser(tmp_path) == "default"
    assert read_normaliser(tmp_path / "elsewhere") is None  # manifests made by hand record nothing


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cvtext")
    release = make_release(root / "en", {"train": TRAIN, "dev": DEV, "test": TEST})
    cv.prepare(release, root / "data")
    return root / "data"


def _texts(manifest: Path) -> dict[str, str]:
    return {row["id"]: row["text"] for row in map(json.loads, manifest.read_text().splitlines())}


def test_commonvoice_folding_is_the_same_in_prepare_and_lm_build(prepared: Path, tmp_path: Path) -> None:
    assert read_normaliser(prepared) == "commonvoice-en"
    texts = {**_texts(prepared / "train.jsonl"), **_texts(prepared / "test.jsonl")}
    assert texts["common_voice_en_a1"] == "cafes she said it's late"  # café folded
    assert texts["common_voice_en_c1"] == "naive aesthetics"  # naïve folded, æ spelled
    raw = tmp_path / "raw.txt"  # the same sentences as LM text, and two that prepare refuses
    raw.write_text("".join(s + "\n" for _, clip, s, _, _ in TRAIN + TEST if clip in ("a1", "c1", "digits", "cyrillic")),
                   encoding="utf-8")
    manifest = prepared / "train.jsonl"
    name = lm_files.lm_normaliser([raw, manifest])  # recorded beside the manifest: it applies to the raw text too
    assert name == "commonvoice-en" and lm_files.lm_normaliser([raw]) == "default"
    refused = lm_files.Refused()
    lines = list(lm_files.read_lm_text([raw, manifest], name, refused))
    assert lines[:2] == ["cafes she said it's late", "naive aesthetics"]  # as prepare wrote them
    assert lines[2:] == list(_texts(manifest).values())  # the manifest's text, normalised again, is unchanged
    assert refused.lines == 2 and refused.first.startswith(f"{raw}:2: digits 6")
    assert list(lm_files.read_lm_text([raw], "default"))[0] == "caf\u00e9s she said it's late"


@needs_kenlm_tools
def test_lm_build_cli_uses_the_manifests_normaliser(prepared: Path, tmp_path: Path) -> None:
    raw = tmp_path / "raw.txt"
    raw.write_text("Caf\u00e9s, naïve \u00e6sthetics.\nRoute 66.\n" * 3, encoding="utf-8")
    out = tmp_path / "lm" / "cv"
    result = CliRunner().invoke(app, ["lm", "build", str(prepared / "train.jsonl"), str(raw), "--out", str(out),
                                      "--order", "2"])
    assert result.exit_code == 0, result.output
    assert "normalised by commonvoice-en" in result.output and "left out 3 line(s)" in result.output
    words = set(Path(f"{out}.unigrams.txt").read_text(encoding="utf-8").split())
    assert {"cafes", "naive", "aesthetics"} <= words and not any("\u00e9" in w or "66" in w for w in words)
    result = CliRunner().invoke(app, ["lm", "build", str(raw), "--out", str(out), "--order", "2",
                                      "--normaliser", "default"])
    assert result.exit_code == 0, result.output
    assert "caf\u00e9s" in Path(f"{out}.unigrams.txt").read_text(encoding="utf-8").split()


def test_data_normaliser_reaches_the_config(tmp_path: Path) -> None:
    a, b, bare = tmp_path / "a", tmp_path / "b", tmp_path / "bare"
    for folder, name in ((a, "commonvoice-en"), (b, "default")):
        folder.mkdir()
        write_normaliser(folder, name)
    cfg = build_config({})
    assert experiment.with_normaliser(cfg, [a]).tokenizer.normaliser == "commonvoice-en"
    assert experiment.with_normaliser(cfg, [a, bare]).tokenizer.normaliser == "commonvoice-en"
    assert experiment.with_normaliser(cfg, [bare]) is cfg
    with pytest.raises(AsrkitError, match="different text normalisers .*commonvoice-en.*default"):
        experiment.with_normaliser(cfg, [a, b])
    with pytest.raises(AsrkitError, match="tokenizer.normaliser = 'commonvoice-de', but .*records .*'commonvoice-en'"):
        experiment.with_normaliser(build_config({"tokenizer": {"normaliser": "commonvoice-de"}}), [a])
    # a checkpoint written before the field existed loads with the default
    assert config_from_dict({"tokenizer": {"kind": "char", "vocab_size": 256}}).tokenizer.normaliser == "default"


def test_the_checkpoint_carries_the_normaliser(tmp_path: Path) -> None:
    data = tmp_path / "data"
    words = ["zero", "one", "two", "three"]
    finish(data, {"train": [Utterance(w, str(FSDD_ASSETS / f"{d}_lucas_10.wav"), 0.5, w) for d, w in enumerate(words)]},
           [], normaliser="commonvoice-en")
    cfg = build_config({"model": {"conv_layers": 1, "conv_channels": 4, "rnn_layers": 1, "rnn_hidden": 16},
                        "features": {"n_mels": 40},
                        "train": {"epochs": 1, "max_steps": 1, "num_workers": 0, "save_every_steps": 0,
                                  "batch_seconds": 2.0}})
    fit(cfg, data, tmp_path / "exp", progress=False)
    assert load_checkpoint(tmp_path / "exp" / "last.pt").config.tokenizer.normaliser == "commonvoice-en"
    assert json.loads((tmp_path / "exp" / "config.json").read_text())["tokenizer"]["normaliser"] == "commonvoice-en"
