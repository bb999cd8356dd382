"""A training run stopped by SIGTERM or Ctrl-C finishes its step, writes last.pt, exits 130, and --resume then
matches an uninterrupted run exactly; SIGINT inherited as ignored stays ignored; loader workers survive a signal
to the whole process group."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from test_reliability import TINY, _train_cmd, make_data

from asrkit.cli import EXIT_INTERRUPTED
from asrkit.stop import StopSignals

CONFIG = ("[model]\nconv_layers = 1\nconv_channels = 4\nrnn_layers = 1\nrnn_hidden = 32\n"
          "[features]\nn_mels = 40\nspec_augment = false\n"
          "[train]\nepochs = 200\nlr = 3e-3\nwarmup_steps = 2\nbatch_seconds = 0.7\nnum_workers = 1\n"
          "save_every_steps = 1\nseed = 3\n")


@pytest.fixture
def default_handlers():
    """SIGTERM and SIGINT as in a fresh `python` (whatever the test runner inherited), put back afterwards."""
    before = signal.signal(signal.SIGTERM, signal.SIG_DFL), signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGTERM, before[0])
    signal.signal(signal.SIGINT, before[1])


def test_first_signal_asks_second_interrupts_and_handlers_come_back(default_handlers: None) -> None:
    with StopSignals() as stop:
        assert stop.requested is None
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)  # Python runs the handler between bytecodes of the main thread
        assert stop.requested == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_ignored_sigint_stays_ignored(default_handlers: None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as for a job started with `nohup ... &`
    with StopSignals() as stop:
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        assert stop.requested is None
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_a_signal_to_a_loader_worker_does_not_kill_it(tmp_path: Path) -> None:
    """Ctrl-C or `kill -- -PGID` reaches the workers too: they ignore it (quiet_worker), so the main process still
    gets the batch of the step it finishes before it stops, instead of meeting a dead worker."""
    from conftest import FSDD_ASSETS

    from asrkit.config import FeatureConfig
    from asrkit.data.features import Featurizer
    from asrkit.data.loader import DurationBatchSampler, SpeechDataset, make_loader
    from asrkit.data.tokenizer import CharTokenizer
    from asrkit.records import Utterance

    utts = [Utterance(f"u{i}", str(FSDD_ASSETS / f"{i % 4}_lucas_10.wav"), 0.5, "one") for i in range(12)]
    features = Featurizer(FeatureConfig(n_mels=40, normalize=False))
    dataset = SpeechDataset(utts, features, CharTokenizer.train(["one"]), augment=False)
    sampler = DurationBatchSampler([u.duration for u in utts], 0.6, 1, seed=0)  # one utterance a batch
    batches = iter(make_loader(dataset, sampler, num_workers=1))
    got = [next(batches).ids]
    for worker in batches._workers:  # type: ignore[attr-defined]
        os.kill(worker.pid, signal.SIGTERM)
        os.kill(worker.pid, signal.SIGINT)
    time.sleep(0.3)
    got += [b.ids for b in batches]
    assert sorted(i for ids in got for i in ids) == sorted(u.id for u in utts)


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as for a job started with `nohup ... &`


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # Python then turns it into KeyboardInterrupt, as in a terminal


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_to_the_process_group_saves_last_pt_and_resume_matches(tmp_path: Path, sig: signal.Signals) -> None:
    data = make_data(tmp_path)
    config = tmp_path / "tiny.toml"
    config.write_text(CONFIG)
    stopped = tmp_path / "stopped"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # its own process group, as a shell job: the signal reaches the loader worker too, which must not die of it
    proc = subprocess.Popen(_train_cmd(data, stopped, config, False), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=_ignore_sigint if sig == signal.SIGTERM else _default_sigint)
    try:
        deadline = time.monotonic() + 120
        while not (stopped / "last.pt").is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # last.pt after the first step (save_every_steps = 1)
        time.sleep(0.5)  # 200 epochs take far longer: it is training
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        os.killpg(proc.pid, sig)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == EXIT_INTERRUPTED, out
    said = re.search(rf"stopped by {sig.name} at step (\d+); `last.pt` saved", out)
    assert said, out
    state = torch.load(stopped / "last.pt", weights_only=True)["train"]
    step = int(said.group(1))
    assert state["step"] == step > 0
    if sig != signal.SIGTERM:
        return  # the resumed weights are compared once (the same last.pt either way)

    # --resume to a few steps further matches a run that went straight there (same cosine horizon: train.epochs)
    limit = ["--set", f"train.max_steps={step + 3}"]
    subprocess.run(_train_cmd(data, stopped, config, True) + limit, check=True, env=env, capture_output=True)
    straight = tmp_path / "straight"
    subprocess.run(_train_cmd(data, straight, config, False) + limit, check=True, env=env, capture_output=True)
    a = torch.load(straight / "last.pt", weights_only=True)
    b = torch.load(stopped / "last.pt", weights_only=True)
    assert a["train"]["step"] == b["train"]["step"] == step + 3
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=0, atol=0, msg=key)


def test_train_without_a_signal_reports_no_stop(tmp_path: Path, default_handlers: None) -> None:
    from asrkit.config import build_config
    from asrkit.train import fit

    cfg = build_config({**TINY, "train": {**TINY["train"], "max_steps": 2}})
    result = fit(cfg, make_data(tmp_path), tmp_path / "exp", progress=False)
    assert result.stopped_by is None and result.steps == 2
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # put back
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
