"""Reliability: unreadable audio skipped and reported, non-finite losses skipped, SIGKILL + --resume
reproduces an uninterrupted run exactly."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import FSDD_ASSETS
from typer.testing import CliRunner

from asrkit.cli import app
from asrkit.config import build_config
from asrkit.errors import AsrkitError
from asrkit.models.deepspeech2 import DeepSpeech2
from asrkit.train import fit

WORDS = ["zero", "one", "two", "three"]
TINY = {
    "model": {"conv_layers": 1, "conv_channels": 4, "rnn_layers": 1, "rnn_hidden": 32},
    "features": {"n_mels": 40, "spec_augment": False},
    "train": {"epochs": 2, "lr": 3e-3, "warmup_steps": 2, "batch_seconds": 0.7, "num_workers": 0,
              "save_every_steps": 1, "seed": 3},
}


def make_data(root: Path, extra: list[dict] | None = None) -> Path:
    data = root / "data"
    data.mkdir(parents=True)
    lines = []
    for digit, word in enumerate(WORDS):
        wav = FSDD_ASSETS / f"{digit}_lucas_10.wav"
        lines.append({"id": word, "audio_filepath": str(wav), "duration": 0.5, "text": word})
    lines += extra or []
    (data / "train.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return data


def test_unreadable_training_audio_is_skipped_and_reported(tmp_path: Path) -> None:
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF....not really a wave file")
    data = make_data(tmp_path, [{"id": "broken", "audio_filepath": str(bad), "duration": 0.5, "text": "one"}])
    result = CliRunner().invoke(app, ["train", "--data", str(data), "--exp", str(tmp_path / "exp"),
                                      "--set", "train.epochs=1", "--set", "model.rnn_hidden=16",
                                      "--set", "train.num_workers=0", "--no-progress"])
    assert result.exit_code == 1, result.output
    assert "skipping broken:" in result.output and "broken.wav" in result.output
    assert "1 utterance(s) skipped" in result.output
    report = (tmp_path / "exp" / "skipped.tsv").read_text().splitlines()
    assert report[0] == "id\treason" and report[1].startswith("broken\t")
    assert (tmp_path / "exp" / "last.pt").is_file()


def test_non_finite_losses_are_skipped_then_stop_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = make_data(tmp_path)
    real_loss = DeepSpeech2.loss
    calls = {"n": 0}

    def flaky_loss(self: DeepSpeech2, batch: object) -> torch.Tensor:
        calls["n"] += 1
        loss = real_loss(self, batch)  # type: ignore[arg-type]
        return loss * float("nan") if calls["n"] == 2 else loss

    monkeypatch.setattr(DeepSpeech2, "loss", flaky_loss)
    result = fit(build_config(TINY), data, tmp_path / "exp", progress=False)
    assert result.steps == 7  # 8 batches, one skipped
    state = torch.load(tmp_path / "exp" / "last.pt", weights_only=True)
    assert state["train"]["nonfinite"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())

    monkeypatch.setattr(DeepSpeech2, "loss", lambda self, batch: real_loss(self, batch) * float("nan"))
    cfg = build_config({**TINY, "train": {**TINY["train"], "max_bad_steps": 3}})
    with pytest.raises(AsrkitError, match="3 non-finite losses in a row"):
        fit(cfg, data, tmp_path / "exp2", progress=False)


def _train_cmd(data: Path, exp: Path, config: Path, resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "asrkit", "train", str(config), "--data", str(data), "--exp", str(exp),
           "--no-progress"]
    return cmd + (["--resume"] if resume else [])


def test_sigkill_at_random_points_then_resume_matches_uninterrupted_run(tmp_path: Path) -> None:
    data = make_data(tmp_path)
    config = tmp_path / "tiny.toml"
    config.write_text(
        "[model]\nconv_layers = 1\nconv_channels = 4\nrnn_layers = 1\nrnn_hidden = 32\n"
        "[features]\nn_mels = 40\nspec_augment = false\n"
        "[train]\nepochs = 3\nlr = 3e-3\nwarmup_steps = 2\nbatch_seconds = 0.7\nnum_workers = 0\n"
        "save_every_steps = 1\nseed = 3\n")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    straight = tmp_path / "straight"
    subprocess.run(_train_cmd(data, straight, config, False), check=True, env=env, capture_output=True)

    killed = tmp_path / "killed"
    rng = random.Random(11)
    kills = 0
    for _ in range(3):
        proc = subprocess.Popen(_train_cmd(data, killed, config, (killed / "last.pt").is_file()), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while not (killed / "last.pt").is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.5))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        leftovers = [p.name for p in killed.iterdir() if ".tmp" in p.name and p.suffix != ".jsonl"]
        assert not any(name.startswith(".last.pt") for name in leftovers) or (killed / "last.pt").is_file()
        torch.load(killed / "last.pt", weights_only=True)  # never half-written: always loads
    assert kills >= 1
    subprocess.run(_train_cmd(data, killed, config, True), check=True, env=env, capture_output=True)

    a = torch.load(straight / "last.pt", weights_only=True)
    b = torch.load(killed / "last.pt", weights_only=True)
    assert a["train"]["step"] == b["train"]["step"] == 12
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=0, atol=0, msg=key)
    shutil.rmtree(straight)
