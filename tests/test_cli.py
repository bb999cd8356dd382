"""User-facing errors: one line naming the thing and the fix, exit code 2, no traceback."""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import typer
from conftest import ROOT
from typer.testing import CliRunner

from asrkit.cli import app
from asrkit.config import Config, build_config, load_config

runner = CliRunner()


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def write_manifest(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))
    return path


@pytest.fixture
def wav(tmp_path: Path) -> Path:
    path = tmp_path / "a.wav"
    sf.write(path, (0.1 * np.sin(np.arange(8000) / 5)).astype("float32"), 16000)
    return path


def _commands(group: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(path, command) of every command and sub-app under a click group, depth first."""
    for name, command in group.commands.items():
        yield (*path, name), command
        if hasattr(command, "commands"):
            yield from _commands(command, (*path, name))


def test_help_lists_every_command() -> None:
    """Every command and sub-app registered on the app (read from the app itself, so a new one is checked too) has
    a help text, which its parent's --help lists, its own --help shows, and help on each of its parameters."""
    commands = dict(_commands(typer.main.get_command(app)))
    assert {("train",), ("average",), ("prepare", "an4"), ("config", "show"), ("lm", "build")} <= commands.keys()
    for path, command in commands.items():
        what = f"asrkit {' '.join(path)}"
        assert (command.help or "").strip(), f"{what} has no help: give it a docstring (or help= for a sub-app)"
        start = " ".join(command.help.split()[:3])
        code, out = run(*path[:-1], "--help")
        assert code == 0 and re.search(rf"\b{re.escape(path[-1])}\s+{re.escape(start)}", out), (what, out)
        code, out = run(*path, "--help")
        assert code == 0 and "Usage" in out and start in " ".join(out.split()), (what, out)
        for param in command.params:
            assert param.name == "help" or (getattr(param, "help", None) or "").strip(), f"{what}: {param.name}"


def test_config_show_prints_the_resolved_config_as_toml() -> None:
    conf = ROOT / "recipes" / "an4" / "conf" / "transducer_cpu.toml"
    code, out = run("config", "show", str(conf))
    assert code == 0
    assert re.findall(r"^\[(\w+)\]$", out, re.M) == [f.name for f in dataclasses.fields(Config)]  # every section
    assert 'family = "transducer"' in out and "lr = 0.003" in out and "sample_rate = 16000" in out  # + defaults
    assert build_config(tomllib.loads(out)) == load_config(conf)  # TOML that gives the same config back
    code, out = run("config", "show", str(conf), "--set", "train.lr=0.01", "--set", "features.n_mels=40")
    assert code == 0 and "lr = 0.01" in out and "n_mels = 40" in out


@pytest.mark.parametrize(("key", "sets", "value"), [
    ("model.family", [], "transducer"),  # a string, unquoted
    ("train.epochs", ["--set", "train.epochs=7"], "7"),
    ("train.lr", [], "0.003"),
    ("train.keep_epochs", [], "0"),  # a default
    ("features.spec_augment", [], "true"),
    ("features.noise_snr_db", [], "[10.0, 30.0]"),
])
def test_config_show_key_prints_one_value(key: str, sets: list[str], value: str) -> None:
    code, out = run("config", "show", str(ROOT / "recipes" / "an4" / "conf" / "transducer_cpu.toml"), *sets,
                    "--key", key)
    assert code == 0 and out == value + "\n"


def test_config_show_errors(tmp_path: Path) -> None:
    conf = ROOT / "recipes" / "an4" / "conf" / "transducer_cpu.toml"
    code, out = run("config", "show", str(conf), "--key", "model.nope")
    assert code == 2 and "unknown config key model.nope; valid keys in [model]: " in out and "family" in out
    code, out = run("config", "show", str(conf), "--key", "modle.family")
    assert code == 2 and "unknown config section [modle]; valid sections: features, tokenizer, model" in out
    code, out = run("config", "show", str(conf), "--key", "family")
    assert code == 2 and "--key 'family': expected section.key, e.g. --key model.family" in out
    code, out = run("config", "show", str(tmp_path / "nope.toml"))
    assert code == 2 and "nope.toml not found" in out
    (tmp_path / "bad.toml").write_text("[train]\nlr = \n")
    code, out = run("config", "show", str(tmp_path / "bad.toml"), "--key", "train.lr")
    assert code == 2 and "bad.toml: invalid TOML" in out
    (tmp_path / "unknown.toml").write_text("[train]\nlrate = 0.1\n")
    code, out = run("config", "show", str(tmp_path / "unknown.toml"))
    assert code == 2 and "unknown config key train.lrate" in out
    code, out = run("config", "show", str(conf), "--set", "lr=0.1")
    assert code == 2 and "expected section.key=value" in out


def test_unknown_config_key_lists_valid_keys(tmp_path: Path, wav: Path) -> None:
    data = tmp_path / "data"
    write_manifest(data / "train.jsonl", [json.dumps({"audio_filepath": str(wav), "duration": 0.5, "text": "a"})])
    code, out = run("train", "--data", str(data), "--exp", str(tmp_path / "exp"), "--set", "train.lrate=0.1")
    assert code == 2
    assert "unknown config key train.lrate" in out and "lr" in out and "warmup_steps" in out


def test_bad_set_syntax(tmp_path: Path) -> None:
    code, out = run("train", "--data", str(tmp_path), "--set", "lr=0.1")
    assert code == 2 and "expected section.key=value" in out


def test_missing_config_file(tmp_path: Path) -> None:
    code, out = run("train", str(tmp_path / "nope.toml"), "--data", str(tmp_path))
    assert code == 2 and "nope.toml not found" in out


def test_malformed_manifest_line_names_file_and_line(tmp_path: Path, wav: Path) -> None:
    good = json.dumps({"audio_filepath": str(wav), "duration": 0.5, "text": "a"})
    manifest = write_manifest(tmp_path / "data" / "train.jsonl", [good, "{not json"])
    code, out = run("train", "--data", str(tmp_path / "data"), "--exp", str(tmp_path / "exp"))
    assert code == 2 and f"{manifest}:2: not valid JSON" in out


def test_missing_manifest(tmp_path: Path) -> None:
    code, out = run("train", "--data", str(tmp_path / "nodata"), "--exp", str(tmp_path / "exp"))
    assert code == 2 and "train.jsonl: manifest not found" in out and "asrkit prepare" in out


def test_empty_transcript_is_an_error(tmp_path: Path, wav: Path) -> None:
    lines = [json.dumps({"id": "u1", "audio_filepath": str(wav), "duration": 0.5, "text": "abc"}),
             json.dumps({"id": "u2", "audio_filepath": str(wav), "duration": 0.5, "text": ""})]
    write_manifest(tmp_path / "data" / "train.jsonl", lines)
    code, out = run("train", "--data", str(tmp_path / "data"), "--exp", str(tmp_path / "exp"))
    assert code == 2 and "empty transcript in u2" in out


def test_transcribe_missing_model(tmp_path: Path, wav: Path) -> None:
    code, out = run("transcribe", str(tmp_path / "model.pt"), str(wav))
    assert code == 2 and "model.pt not found" in out


def test_evaluate_folder_without_checkpoint(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", [])
    code, out = run("evaluate", str(tmp_path), str(manifest))
    assert code == 2 and "holds no best.pt or last.pt" in out


def test_resume_without_checkpoint(tmp_path: Path, wav: Path) -> None:
    write_manifest(tmp_path / "data" / "train.jsonl",
                   [json.dumps({"audio_filepath": str(wav), "duration": 0.5, "text": "a"})])
    code, out = run("train", "--data", str(tmp_path / "data"), "--exp", str(tmp_path / "exp"), "--resume")
    assert code == 2 and "last.pt not found; start without --resume" in out


def test_prepare_folder_wrong_layout(tmp_path: Path) -> None:
    code, out = run("prepare", "folder", str(tmp_path / "missing"), str(tmp_path / "out"))
    assert code == 2 and "missing" in out


def test_prepare_fsdd_wrong_layout(tmp_path: Path) -> None:
    (tmp_path / "corpus").mkdir()
    code, out = run("prepare", "fsdd", str(tmp_path / "corpus"), str(tmp_path / "out"))
    assert code == 2 and "corpus" in out and "recordings" in out


def test_prepare_fsdd_bad_digit_range(tmp_path: Path) -> None:
    code, out = run("prepare", "fsdd", str(tmp_path), str(tmp_path / "o"), "--min-digits", "4", "--max-digits", "2")
    assert code == 2 and "--min-digits 4" in out


def test_exit_codes_are_distinct_and_documented() -> None:
    from asrkit.cli import EXIT_CRASH, EXIT_OK, EXIT_PARTIAL, EXIT_USER_ERROR

    assert len({EXIT_OK, EXIT_CRASH, EXIT_USER_ERROR, EXIT_PARTIAL}) == 4 and EXIT_CRASH == 1  # Python's traceback
    code, out = run("--help")
    assert code == 0 and "Exit codes:" in out
    flat = " ".join(out.split())
    assert f"{EXIT_PARTIAL} finished, but some inputs failed or were skipped" in flat
    assert f"{EXIT_USER_ERROR} an error in the input" in flat


def test_prepare_with_skipped_files_exits_partial_and_names_them(tmp_path: Path, wav: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    wav.rename(corpus / "good.wav")
    (corpus / "good.txt").write_text("good")
    (corpus / "bad.wav").write_bytes(b"not audio" * 10)
    (corpus / "bad.txt").write_text("bad")
    code, out = run("prepare", "folder", str(corpus), str(tmp_path / "out"))
    assert code == 3
    assert f"skipped {corpus / 'bad.wav'}: cannot read audio (Format not recognised.)" in out
    assert "all: 1 utterances" in out and "skipped 1 input(s)" in out
    (corpus / "bad.wav").unlink()
    code, out = run("prepare", "folder", str(corpus), str(tmp_path / "out"))
    assert code == 0 and "skipped nothing" in out
