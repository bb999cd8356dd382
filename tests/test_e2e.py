"""End to end: prepare a tiny real corpus, train a small DeepSpeech2 until it transcribes its training
utterances, resume, then `transcribe` and `evaluate` through the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import FSDD_ASSETS
from typer.testing import CliRunner

from asrkit.cli import app
from asrkit.config import build_config
from asrkit.data.manifest import read_manifest
from asrkit.train import fit

WORDS = ["zero", "one", "two", "three"]

TINY = {
    "model": {"conv_layers": 1, "conv_channels": 8, "rnn_layers": 2, "rnn_hidden": 64},
    "features": {"n_mels": 40, "spec_augment": False},
    "train": {"epochs": 60, "lr": 3e-3, "warmup_steps": 10, "anneal": 1.0, "batch_seconds": 10.0,
              "num_workers": 0, "save_every_steps": 0, "seed": 7},
}

pytestmark = pytest.mark.slow  # trains to convergence (60 epochs); `make test-fast` leaves it out


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four real recordings (one speaker, digits 0-3), transcripts as same-stem .txt files."""
    corpus = tmp_path_factory.mktemp("corpus")
    for digit, word in enumerate(WORDS):
        shutil.copy(FSDD_ASSETS / f"{digit}_jackson_5.wav", corpus / f"{word}.wav")
        (corpus / f"{word}.txt").write_text(word.upper() + "\n")
    return corpus


@pytest.fixture(scope="module")
def trained(tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    data = tmp_path_factory.mktemp("data")
    result = CliRunner().invoke(app, ["prepare", "folder", str(tiny_corpus), str(data), "--name", "train"])
    assert result.exit_code == 0, result.output
    shutil.copy(data / "train.jsonl", data / "dev.jsonl")
    exp = tmp_path_factory.mktemp("exp")
    out = fit(build_config(TINY), data, exp, progress=False)
    assert out.epochs == 60
    return data, exp


def test_trained_model_transcribes_its_training_utterances(trained: tuple[Path, Path]) -> None:
    data, exp = trained
    history = [json.loads(line) for line in (exp / "history.jsonl").read_text().splitlines()]
    assert history[-1]["epoch"] == 60
    assert min(h["dev_wer"] for h in history) == 0.0
    assert (exp / "best.pt").is_file() and (exp / "last.pt").is_file()
    assert list((exp / "tb").iterdir()), "TensorBoard scalars were written"


def test_cli_transcribe_and_evaluate(trained: tuple[Path, Path], tiny_corpus: Path, tmp_path: Path) -> None:
    data, exp = trained
    runner = CliRunner()
    wavs = [str(tiny_corpus / f"{w}.wav") for w in WORDS]
    result = runner.invoke(app, ["transcribe", str(exp), *wavs])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert [line.split("\t")[1] for line in lines] == WORDS
    out = tmp_path / "hyp.jsonl"
    result = runner.invoke(app, ["transcribe", str(exp / "best.pt"), wavs[1], "--format", "jsonl", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rec = json.loads(out.read_text())
    assert rec["text"] == "one" and rec["words"][0]["word"] == "one"
    assert 0 <= rec["words"][0]["start"] < rec["words"][0]["end"] <= 1.0
    report = tmp_path / "report.json"
    result = runner.invoke(app, ["evaluate", str(exp), str(data / "train.jsonl"), "--report", str(report)])
    assert result.exit_code == 0, result.output
    assert "WER 0.00%" in result.stdout
    body = json.loads(report.read_text())
    assert body["wer"] == 0.0 and len(body["utterances"]) == 4


def test_resume_continues_where_it_stopped(tiny_corpus: Path, tmp_path: Path) -> None:
    """Stopping at max_steps then resuming gives the same parameters as one uninterrupted run."""
    import torch

    data = tmp_path / "data"
    assert CliRunner().invoke(app, ["prepare", "folder", str(tiny_corpus), str(data), "--name", "train"]).exit_code == 0
    short = {**TINY, "train": {**TINY["train"], "epochs": 3, "batch_seconds": 1.2}}
    cfg = build_config(short)
    fit(cfg, data, tmp_path / "straight", progress=False)
    stopped = build_config({**short, "train": {**short["train"], "max_steps": 4}})
    fit(stopped, data, tmp_path / "resumed", progress=False)
    fit(cfg, data, tmp_path / "resumed", resume=True, progress=False)
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)
    assert a["train"]["step"] == b["train"]["step"]
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, msg=key)


def test_manifest_from_prepare_is_normalised(trained: tuple[Path, Path]) -> None:
    data, _ = trained
    assert sorted(u.text for u in read_manifest(data / "train.jsonl")) == sorted(WORDS)
