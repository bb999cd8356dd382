"""Checkpoint averaging (`asrkit.average`) on hand-made checkpoints, per-epoch checkpoints kept by training,
and early stopping on dev WER (train.patience)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from conftest import FSDD_ASSETS

from asrkit.average import average, epoch_checkpoints
from asrkit.checkpoint import load_checkpoint, save_checkpoint
from asrkit.config import build_config
from asrkit.data.features import Featurizer
from asrkit.data.tokenizer import CharTokenizer
from asrkit.errors import AsrkitError
from asrkit.models import build_model
from asrkit.train import _Loop, fit

MODEL = {"conv_layers": 1, "conv_channels": 4, "rnn_layers": 1, "rnn_hidden": 16}


def _save_epoch(exp: Path, epoch: int, fill: float | None = None, model_cfg: dict | None = None,
                dev_wer: float | None = None) -> dict:
    cfg = build_config({"model": model_cfg or MODEL, "features": {"n_mels": 40},
                        "train": {"epochs": epoch}})  # only the newest file's config should survive
    tok = CharTokenizer.train(["one two"])
    model = build_model(cfg, 40, len(tok.vocab))
    torch.manual_seed(epoch)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                tensor.fill_(10 * epoch)
            elif fill is not None:
                tensor.fill_(fill)
            else:
                tensor.copy_(torch.randn_like(tensor))
    state: dict = {"step": 5 * epoch, "epoch": epoch}
    if dev_wer is not None:  # as training records it: the history of every epoch so far, this one last
        earlier = [{"epoch": k, "step": 5 * k, "dev_wer": 0.0, "dev_cer": 0.0} for k in range(1, epoch)]
        state["history"] = [*earlier, {"epoch": epoch, "step": 5 * epoch, "dev_wer": dev_wer, "dev_cer": 0.1}]
    save_checkpoint(exp / f"epoch-{epoch}.pt", config=cfg, tokenizer=tok, featurizer=Featurizer(cfg.features),
                    model=model, train_state=state)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_average_of_the_last_n_epochs(tmp_path: Path) -> None:
    for epoch in (1, 2, 3, 4):
        _save_epoch(tmp_path, epoch, fill=float(epoch))
    (tmp_path / "epoch-x.pt").write_bytes(b"not a checkpoint, and not an epoch name")
    assert [k for k, _ in epoch_checkpoints(tmp_path)] == [1, 2, 3, 4]
    out = average(tmp_path, 3)
    assert out == tmp_path / "averaged-last3.pt"
    loaded = load_checkpoint(out)  # what transcribe / evaluate read
    for name, tensor in loaded.model.state_dict().items():
        expected = 40 if name.endswith("num_batches_tracked") else 3.0  # integers: the newest's; floats: (2+3+4)/3
        assert torch.all(tensor == expected), name
    assert loaded.config.train.epochs == 4
    assert loaded.state["averaged"] == ["epoch-2.pt", "epoch-3.pt", "epoch-4.pt"]
    assert loaded.state["step"] == 20


def test_average_of_random_weights_is_their_mean(tmp_path: Path) -> None:
    states = [_save_epoch(tmp_path, epoch) for epoch in (7, 8, 10)]
    out = average(tmp_path, 2, out=tmp_path / "avg.pt")
    got = torch.load(out, weights_only=True)["model"]
    for name, tensor in got.items():
        if tensor.is_floating_point():
            torch.testing.assert_close(tensor, (states[1][name] + states[2][name]) / 2, msg=name)
        else:
            assert torch.equal(tensor, states[2][name]), name


def test_average_errors_name_the_problem(tmp_path: Path) -> None:
    _save_epoch(tmp_path, 1)
    _save_epoch(tmp_path, 2)
    with pytest.raises(AsrkitError, match=r"2 epoch checkpoint\(s\) \(epoch-1.pt, epoch-2.pt\), fewer than --last 3; "
                                          r"train with --set train.keep_epochs=3"):
        average(tmp_path, 3)
    (tmp_path / "empty").mkdir()
    with pytest.raises(AsrkitError, match=r"0 epoch checkpoint\(s\) \(none\)"):
        average(tmp_path / "empty", 1)
    with pytest.raises(AsrkitError, match="experiment folder .*missing not found"):
        average(tmp_path / "missing", 1)
    _save_epoch(tmp_path, 3, model_cfg={**MODEL, "rnn_hidden": 24})
    with pytest.raises(AsrkitError, match="epoch-2.pt: its weights do not match epoch-3.pt"):
        average(tmp_path, 2)


def test_average_of_the_best_n_epochs_by_dev_wer(tmp_path: Path) -> None:
    wers = {1: 0.5, 2: 0.2, 3: 0.4, 4: 0.1, 5: 0.3}  # the history's earlier records say 0.0: only epoch k's counts
    for epoch, wer in wers.items():
        _save_epoch(tmp_path, epoch, fill=float(epoch), dev_wer=wer)
    out = average(tmp_path, best=2)
    assert out == tmp_path / "averaged-best2.pt"
    loaded = load_checkpoint(out)
    assert loaded.state["averaged"] == ["epoch-2.pt", "epoch-4.pt"]
    for name, tensor in loaded.model.state_dict().items():
        expected = 40 if name.endswith("num_batches_tracked") else 3.0  # integers: the newest averaged (4); (2+4)/2
        assert torch.all(tensor == expected), name
    assert loaded.config.train.epochs == 4 and loaded.state["step"] == 20
    got = load_checkpoint(average(tmp_path, best=3, out=tmp_path / "b3.pt"))
    assert got.state["averaged"] == ["epoch-2.pt", "epoch-4.pt", "epoch-5.pt"]
    assert all(torch.allclose(t, torch.full_like(t, 11 / 3)) for t in got.model.state_dict().values()
               if t.is_floating_point())
    _save_epoch(tmp_path, 6, fill=6.0, dev_wer=0.1)  # ties epoch 4: the newer epoch wins
    assert load_checkpoint(average(tmp_path, best=1)).state["averaged"] == ["epoch-6.pt"]


def test_average_best_errors_say_what_to_do(tmp_path: Path) -> None:
    _save_epoch(tmp_path, 1, dev_wer=0.3)
    _save_epoch(tmp_path, 2, dev_wer=0.2)
    with pytest.raises(AsrkitError, match=r"2 epoch checkpoint\(s\) \(epoch-1.pt, epoch-2.pt\), fewer than --best 3; "
                                          r"train with --set train.keep_epochs=3"):
        average(tmp_path, best=3)
    with pytest.raises(AsrkitError, match="--last 2 and --best 2 are mutually exclusive"):
        average(tmp_path, 2, best=2)
    with pytest.raises(AsrkitError, match=r"give --last N .* or --best N"):
        average(tmp_path)
    with pytest.raises(AsrkitError, match="--best 0: average at least 1 checkpoint"):
        average(tmp_path, best=0)
    _save_epoch(tmp_path, 3)  # no dev WER recorded (trained without a dev.jsonl)
    with pytest.raises(AsrkitError, match=r"no dev WER recorded in epoch-3.pt, so --best cannot rank it; train with a "
                                          r"dev.jsonl .* or average the newest ones with --last 1"):
        average(tmp_path, best=1)
    assert not list(tmp_path.glob("averaged-*"))


def test_average_cli(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from asrkit.cli import app

    def run(*args: str) -> tuple[int, str]:
        result = CliRunner().invoke(app, ["average", str(tmp_path), *args])
        assert "Traceback" not in result.output
        return result.exit_code, result.output

    for epoch, wer in ((1, 0.2), (2, 0.5), (3, 0.1)):
        _save_epoch(tmp_path, epoch, fill=float(epoch), dev_wer=wer)
    code, out = run("--best", "2")
    assert code == 0 and f"averaged the 2 best-on-dev epoch checkpoint(s) of {tmp_path} into " in out
    assert load_checkpoint(tmp_path / "averaged-best2.pt").state["averaged"] == ["epoch-1.pt", "epoch-3.pt"]
    code, out = run("--last", "2", "--out", str(tmp_path / "l2.pt"))
    assert code == 0 and f"averaged the last 2 epoch checkpoint(s) of {tmp_path} into {tmp_path / 'l2.pt'}" in out
    code, out = run("--last", "2", "--best", "2")
    assert code == 2 and "--last 2 and --best 2 are mutually exclusive" in out
    code, out = run()
    assert code == 2 and "give --last N" in out
    code, out = run("--best", "0")
    assert code == 2 and "--best 0 must be at least 1" in out
    code, out = run("--best", "4")
    assert code == 2 and "fewer than --best 4; train with --set train.keep_epochs=4" in out


def _data(root: Path) -> Path:
    data = root / "data"
    data.mkdir()
    words = ["zero", "one", "two", "three"]
    lines = [{"id": w, "audio_filepath": str(FSDD_ASSETS / f"{d}_lucas_10.wav"), "duration": 0.5, "text": w}
             for d, w in enumerate(words)]
    text = "".join(json.dumps(x) + "\n" for x in lines)
    (data / "train.jsonl").write_text(text)
    (data / "dev.jsonl").write_text(text)
    return data


def test_early_stopping_and_kept_epochs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wers = iter([0.5, 0.4, 0.45, 0.4, 0.41])  # best at epoch 2; no better after it (a tie is not better)
    monkeypatch.setattr(_Loop, "evaluate", lambda self: {"dev_wer": next(wers), "dev_cer": 0.1})
    cfg = build_config({"model": MODEL, "features": {"n_mels": 40, "spec_augment": False},
                        "train": {"epochs": 10, "patience": 2, "keep_epochs": 2, "batch_seconds": 1.0,
                                  "num_workers": 0, "save_every_steps": 0, "warmup_steps": 1}})
    data = _data(tmp_path)
    result = fit(cfg, data, tmp_path / "exp", progress=False)
    assert result.stopped_early and result.epochs == 4 and result.best_wer == 0.4
    assert [h["dev_wer"] for h in result.history] == [0.5, 0.4, 0.45, 0.4]
    assert [k for k, _ in epoch_checkpoints(tmp_path / "exp")] == [3, 4]
    assert load_checkpoint(tmp_path / "exp" / "best.pt").state["epoch"] == 2
    assert load_checkpoint(average(tmp_path / "exp", 2)).state["epoch"] == 4
    # --best reads the dev WER training recorded in each kept checkpoint: epochs 3 and 4 had 0.45 and 0.4.
    assert load_checkpoint(average(tmp_path / "exp", best=1)).state["averaged"] == ["epoch-4.pt"]
    # Resuming a run that stopped early does not train on: the history says it is out of patience.
    again = fit(cfg, data, tmp_path / "exp", resume=True, progress=False)
    assert again.stopped_early and again.epochs == 4 and again.steps == result.steps
    # ... unless the patience is raised (a resume may change it): one more epoch, still no better, stops.
    more = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, patience=3))
    assert fit(more, data, tmp_path / "exp", resume=True, progress=False).epochs == 5


def test_patience_off_trains_every_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_Loop, "evaluate", lambda self: {"dev_wer": 0.5, "dev_cer": 0.5})
    cfg = build_config({"model": MODEL, "features": {"n_mels": 40}, "train": {"epochs": 3, "batch_seconds": 2.0,
                                                                             "num_workers": 0}})
    result = fit(cfg, _data(tmp_path), tmp_path / "exp", progress=False)
    assert not result.stopped_early and result.epochs == 3
    assert epoch_checkpoints(tmp_path / "exp") == []


def test_select_by_dev_loss(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """train.select = "loss": best.pt, patience and `average --best` follow the dev loss, not the WER."""
    records = iter([(0.5, 3.0), (0.4, 2.5), (0.3, 2.6), (0.2, 2.7)])  # WER keeps falling, the loss is best at 2

    def evaluate(self: _Loop) -> dict:
        wer, loss = next(records)
        return {"dev_wer": wer, "dev_cer": 0.1, "dev_loss": loss}

    monkeypatch.setattr(_Loop, "evaluate", evaluate)
    cfg = build_config({"model": MODEL, "features": {"n_mels": 40, "spec_augment": False},
                        "train": {"epochs": 10, "patience": 2, "keep_epochs": 3, "batch_seconds": 1.0,
                                  "num_workers": 0, "save_every_steps": 0, "warmup_steps": 1, "select": "loss"}})
    result = fit(cfg, _data(tmp_path), tmp_path / "exp", progress=False)
    assert result.stopped_early and result.epochs == 4  # epochs 3 and 4 were no better than 2 by loss
    assert result.best_wer == 0.4  # the WER of the best epoch by loss, not the lowest WER (0.2)
    assert load_checkpoint(tmp_path / "exp" / "best.pt").state["epoch"] == 2
    # the run's own train.select ranks the kept epochs 2-4 by loss (2.5, 2.6, 2.7); --by wer overrides it
    assert load_checkpoint(average(tmp_path / "exp", best=1)).state["averaged"] == ["epoch-2.pt"]
    assert load_checkpoint(average(tmp_path / "exp", best=1, by="wer")).state["averaged"] == ["epoch-4.pt"]
    with pytest.raises(AsrkitError, match="--by 'acc': rank by wer or loss"):
        average(tmp_path / "exp", best=1, by="acc")


def test_unknown_select_is_a_config_error(tmp_path: Path) -> None:
    cfg = build_config({"model": MODEL, "features": {"n_mels": 40}, "train": {"select": "cer"}})
    with pytest.raises(AsrkitError, match="unknown train.select 'cer'; valid: wer, loss"):
        fit(cfg, _data(tmp_path), tmp_path / "exp", progress=False)


def test_dev_loss_is_the_mean_loss_per_dev_utterance(tmp_path: Path) -> None:
    """The recorded dev loss equals the model's loss on each dev utterance alone (eval mode), averaged; an
    utterance whose loss is not finite (DeepSpeech2 keeps CTC's inf: a transcript too long for its audio) is named
    and left out instead of making the mean inf."""
    data = _data(tmp_path)
    long_text = "three" * 14  # 70 characters in 0.5 s of audio: more labels than CTC frames
    dev = (data / "dev.jsonl").read_text() + "".join(json.dumps(
        {"id": name, "audio_filepath": str(FSDD_ASSETS / "3_lucas_10.wav"), "duration": 0.5, "text": text}) + "\n"
        for name, text in (("too_long", long_text), ("accented", "thrée")))
    (data / "dev.jsonl").write_text(dev)
    cfg = build_config({"model": MODEL, "features": {"n_mels": 40, "spec_augment": False},
                        "train": {"epochs": 1, "batch_seconds": 2.0, "num_workers": 0, "warmup_steps": 1}})
    lines: list[str] = []
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr("asrkit.train.say", lines.append)
    try:
        result = fit(cfg, data, tmp_path / "exp", progress=False)
    finally:
        monkeypatch.undo()
    recorded = result.history[0]["dev_loss"]
    assert any("dev loss leaves out 1 utterance(s) whose loss is not finite: too_long" in line for line in lines)
    assert any("dev loss leaves out utterances with characters the tokenizer cannot encode: 'é' in accented" in line
               for line in lines)
    loaded = load_checkpoint(tmp_path / "exp" / "last.pt")
    from asrkit.data.loader import SpeechDataset, collate
    from asrkit.data.manifest import read_manifest

    utts = [u for u in read_manifest(data / "dev.jsonl") if u.id not in ("too_long", "accented")]
    dataset = SpeechDataset(utts, loaded.featurizer, loaded.tokenizer)
    loaded.model.eval()
    with torch.no_grad():
        alone = [float(loaded.model.loss(collate([dataset[i]]))) for i in range(len(utts))]
    assert recorded == pytest.approx(sum(alone) / len(alone), rel=1e-4)
    assert 0 < recorded < float("inf")
