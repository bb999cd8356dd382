"""DistributedDataParallel on the CPU (gloo), through the documented command: `python -m torch.distributed.run
--nproc-per-node 2 -m asrkit train ...`. Two ranks accumulating two batches each per step train exactly like one
process accumulating four; a DDP run stopped by max_steps and resumed equals an uninterrupted one."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import FSDD_ASSETS

from asrkit.config import config_from_dict, load_config
from asrkit.data.audio import audio_info
from asrkit.models import build_model
from asrkit.train import fit

pytestmark = pytest.mark.slow  # torchrun subprocesses (gloo); `make test-fast` leaves them out

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven"]
# 8 utterances in batches of 1: 2 steps per epoch on 2 ranks with accum_steps = 2 (or 1 rank with 4).
TINY = """[model]
conv_layers = 1
conv_channels = 4
rnn_layers = 1
rnn_hidden = 32
[features]
n_mels = 40
[train]
epochs = 2
optimizer = "sgd"  # unlike Adam, SGD shows a wrongly scaled gradient
lr = 0.01
warmup_steps = 2
batch_seconds = 10.0
max_batch_size = 1
accum_steps = 2
num_workers = 0
save_every_steps = 1
keep_epochs = 1
seed = 5
"""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ddp")
    (root / "data").mkdir()

    def lines(take: int, digits: range) -> str:
        out = []
        for d in digits:
            wav = FSDD_ASSETS / f"{d}_jackson_{take}.wav"
            out.append(json.dumps({"id": f"{d}-{take}", "audio_filepath": str(wav), "duration": audio_info(wav)[0],
                                   "text": WORDS[d]}) + "\n")
        return "".join(out)

    (root / "data" / "train.jsonl").write_text(lines(1, range(8)))
    (root / "data" / "dev.jsonl").write_text(lines(0, range(2)))
    (root / "tiny.toml").write_text(TINY)
    return root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Signs that the free port was taken by another process before torchrun bound it: then it is tried again.
PORT_TAKEN = ("Address already in use", "EADDRINUSE", "DistNetworkError", "RendezvousConnectionError")


def torchrun(root: Path, exp: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for attempt in range(2):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--rdzv-backend", "c10d",
               "--rdzv-endpoint", f"127.0.0.1:{_free_port()}", "-m", "asrkit", "train", str(root / "tiny.toml"),
               "--data", str(root / "data"), "--exp", str(root / exp), "--no-progress", *args]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        output = proc.stdout + proc.stderr
        if proc.returncode == 0 or attempt or not any(sign in output for sign in PORT_TAKEN):
            break
    assert proc.returncode == 0, output
    return proc


@pytest.fixture(scope="module")
def ddp_run(corpus: Path) -> tuple[Path, str]:
    proc = torchrun(corpus, "ddp")
    return corpus / "ddp", proc.stderr


def _parameters(path: Path) -> dict[str, torch.Tensor]:
    """The trainable tensors only: BatchNorm running statistics legitimately differ (per-rank batches)."""
    data = torch.load(path, weights_only=True)
    cfg = config_from_dict(data["config"])
    names = {n for n, _ in build_model(cfg, cfg.features.n_mels, vocab_size=10).named_parameters()}
    return {k: v for k, v in data["model"].items() if k in names}


def test_two_ranks_equal_one_process_accumulating_all_their_batches(corpus: Path, ddp_run: tuple[Path, str],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    exp, stderr = ddp_run
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    cfg = load_config(corpus / "tiny.toml", ["train.accum_steps=4"])
    single = fit(cfg, corpus / "data", corpus / "single", progress=False)
    assert single.steps == 4 and single.epochs == 2
    a, b = _parameters(corpus / "single" / "last.pt"), _parameters(exp / "last.pt")
    assert a.keys() == b.keys() and len(a) > 5
    for key, value in a.items():
        torch.testing.assert_close(b[key], value, rtol=0, atol=1e-5, msg=key)
    ddp_state = torch.load(exp / "last.pt", weights_only=True)["train"]
    assert ddp_state["step"] == 4 and ddp_state["world_size"] == 2 and len(ddp_state["rng_ranks"]) == 2
    # Rank 0 alone decodes dev, prints and writes: one line per epoch, the files once.
    assert stderr.count("epoch 1 step 2 dev WER") == 1 and stderr.count("epoch 2 step 4 dev WER") == 1, stderr
    history = [json.loads(line) for line in (exp / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2] and all("dev_wer" in h for h in history)
    assert sorted(p.name for p in exp.glob("*.pt")) == ["best.pt", "epoch-2.pt", "last.pt"]
    assert not [p.name for p in exp.iterdir() if ".tmp" in p.name]


def test_ddp_run_stopped_then_resumed_equals_uninterrupted(corpus: Path, ddp_run: tuple[Path, str]) -> None:
    exp, _ = ddp_run
    torchrun(corpus, "resumed", "--set", "train.max_steps=3")  # stops inside epoch 2
    stopped = torch.load(corpus / "resumed" / "last.pt", weights_only=True)["train"]
    assert (stopped["step"], stopped["epoch"], stopped["batch_in_epoch"]) == (3, 1, 2)  # per rank
    torchrun(corpus, "resumed", "--resume")
    a = torch.load(exp / "last.pt", weights_only=True)
    b = torch.load(corpus / "resumed" / "last.pt", weights_only=True)
    assert a["train"]["step"] == b["train"]["step"] == 4
    assert a["train"]["history"] == b["train"]["history"]
    for key, value in a["model"].items():  # BatchNorm statistics too: averaged over the ranks at every save
        torch.testing.assert_close(b["model"][key], value, rtol=0, atol=1e-6, msg=key)
