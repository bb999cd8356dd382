"""Reliability: unreadable and overlong audio skipped and reported, non-finite losses skipped, SIGKILL + --resume
reproduces an uninterrupted run exactly, a prepare killed while measuring resumes without measuring again."""

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
import soundfile as sf
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
    assert result.exit_code == 3, result.output  # EXIT_PARTIAL: finished, some inputs skipped
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


@pytest.mark.slow
@pytest.mark.parametrize(("features_on", "spec_augment"), [("workers", "false"), ("device", "true")])
def test_sigkill_at_random_points_then_resume_matches_uninterrupted_run(tmp_path: Path, features_on: str,
                                                                        spec_augment: str) -> None:
    data = make_data(tmp_path)
    config = tmp_path / "tiny.toml"
    config.write_text(
        "[model]\nconv_layers = 1\nconv_channels = 4\nrnn_layers = 1\nrnn_hidden = 32\n"
        f"[features]\nn_mels = 40\nspec_augment = {spec_augment}\n"
        "[train]\nepochs = 3\nlr = 3e-3\nwarmup_steps = 2\nbatch_seconds = 0.7\nnum_workers = 0\n"
        f"save_every_steps = 1\nseed = 3\nfeatures_on = \"{features_on}\"\n")
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


def test_utterances_longer_than_max_duration_are_skipped_and_listed(tmp_path: Path) -> None:
    long = {"id": "long", "audio_filepath": str(FSDD_ASSETS / "1_lucas_10.wav"), "duration": 75.0, "text": "one"}
    data = make_data(tmp_path, [long])
    cfg = build_config({**TINY, "train": {**TINY["train"], "max_steps": 1}})
    result = fit(cfg, data, tmp_path / "exp", progress=False)
    assert result.skipped == {"long": "75.0 s is longer than train.max_duration = 60 s; cut the recording into "
                                      "shorter utterances or raise train.max_duration"}
    assert (tmp_path / "exp" / "skipped.tsv").read_text().splitlines()[1].startswith("long\t75.0 s is longer")

    no_limit = build_config({**TINY, "train": {**TINY["train"], "max_steps": 1, "max_duration": 0.0}})
    assert fit(no_limit, data, tmp_path / "exp0", progress=False).skipped == {}
    only_long = make_data(tmp_path / "b", [])
    (only_long / "train.jsonl").write_text(json.dumps(long) + "\n")
    with pytest.raises(AsrkitError, match=r"all 1 utterance\(s\) are longer than train.max_duration = 60 s"):
        fit(cfg, only_long, tmp_path / "exp1", progress=False)


def _fsdd_folder(root: Path, n: int) -> list[str]:
    """`n` FSDD recordings as 00.wav, 01.wav, ... with same-stem transcripts; their names in order."""
    root.mkdir(parents=True)
    names = []
    for i in range(n):
        digit = i % 4
        shutil.copy(FSDD_ASSETS / f"{digit}_lucas_{10 + i // 4}.wav", root / f"{i:02d}.wav")
        (root / f"{i:02d}.txt").write_text(WORDS[digit])
        names.append(f"{i:02d}.wav")
    return names


@pytest.mark.slow
def test_prepare_killed_while_measuring_resumes_where_it_stopped(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from asrkit.prepare import common, folder

    corpus = tmp_path / "corpus"
    names = _fsdd_folder(corpus, 12)
    folder.prepare(corpus, tmp_path / "straight", workers=1)

    # A child `asrkit prepare folder` whose measuring hangs on the 6th file: 5 results are in the cache, then KILL.
    hang = ("import sys, threading, pathlib, asrkit.prepare.common as c\n"
            "real = c.audio_info\n"
            "def audio_info(path, **kw):\n"
            "    if pathlib.Path(path).name == '05.wav':\n"
            "        threading.Event().wait()\n"
            "    return real(path, **kw)\n"
            "c.audio_info = audio_info\n"
            "from asrkit.cli import app\n"
            "app()\n")
    out = tmp_path / "killed"
    cache = out / common.MEASURED_FILE
    proc = subprocess.Popen([sys.executable, "-c", hang, "prepare", "folder", str(corpus), str(out), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (cache.is_file() and cache.read_text().count("\n") >= 5) and time.monotonic() < deadline:
            assert proc.poll() is None, "prepare ended before it was killed"
            time.sleep(0.05)
        time.sleep(0.3)  # nothing more comes: the 6th file hangs
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert [json.loads(line)["path"] for line in cache.read_text().splitlines()] == [
        str(corpus / name) for name in names[:5]]
    assert not list(out.glob("*.jsonl")) and not (out / "all.jsonl.tmp").exists()  # no manifest, not even half
    with cache.open("a") as f:
        f.write('{"path": "' + str(corpus / names[5]) + '", "size": 12')  # a line torn by a kill mid-write

    measured: list[str] = []
    real = common.audio_info

    def counting(path: str | Path, **kwargs: bool) -> tuple[float, int]:
        measured.append(Path(path).name)
        return real(path, **kwargs)

    monkeypatch.setattr(common, "audio_info", counting)
    folder.prepare(corpus, out, workers=1)
    assert measured == names[5:]  # only what the killed run had not measured
    assert (out / "all.jsonl").read_text() == (tmp_path / "straight" / "all.jsonl").read_text()
    torn = [line for line in cache.read_text().splitlines() if not line.endswith("}")]
    assert torn == ['{"path": "' + str(corpus / names[5]) + '", "size": 12']  # the new lines start after it

    measured.clear()
    shutil.copy(FSDD_ASSETS / "3_lucas_17.wav", corpus / names[0])  # a changed file is measured again
    result = folder.prepare(corpus, out, workers=1)
    assert measured == [names[0]]
    assert result.splits["all"][0].duration == pytest.approx(sf.info(str(corpus / names[0])).duration)
