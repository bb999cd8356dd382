"""Checkpoints: round trip, atomic writes, refusing untrusted pickles, clear errors, folder resolution."""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path

import pytest
import torch

from asrkit.checkpoint import (
    VERSION,
    load_checkpoint,
    pick_device,
    read_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)
from asrkit.config import Config, build_config
from asrkit.data.features import Featurizer
from asrkit.data.tokenizer import CharTokenizer, Tokenizer, train_tokenizer
from asrkit.errors import AsrkitError
from asrkit.models import build_model

N_MELS = 40


def small_config(**model: object) -> Config:
    return build_config({"model": {"rnn_hidden": 32, "rnn_layers": 2, "conv_channels": 4, **model},
                         "features": {"n_mels": N_MELS}, "train": {"lr": 0.003}})


def make_parts(tokenizer: Tokenizer | None = None, **model: object):
    cfg = small_config(**model)
    tok = tokenizer or CharTokenizer.train(["hello world"])
    feat = Featurizer(cfg.features)
    gen = torch.Generator().manual_seed(0)
    feat.fit_stats([0.1 * torch.randn(8000, generator=gen) for _ in range(2)])
    torch.manual_seed(0)
    net = build_model(cfg, N_MELS, len(tok.vocab))
    # non-trivial BatchNorm running statistics, so they must be saved too
    net.train()
    with torch.no_grad():
        net(torch.randn(2, 30, N_MELS) + 1.0, torch.tensor([30, 20]))
    net.eval()
    return cfg, tok, feat, net


def save(path: Path, parts, train_state: dict | None = None) -> None:
    cfg, tok, feat, net = parts
    save_checkpoint(path, config=cfg, tokenizer=tok, featurizer=feat, model=net, train_state=train_state)


@pytest.fixture(scope="module")
def parts():
    return make_parts()


# --- round trip -----------------------------------------------------------------------------------------


def test_round_trip(tmp_path: Path, parts) -> None:
    cfg, tok, feat, net = parts
    path = tmp_path / "model.pt"
    save(path, parts, {"step": 7, "epoch": 2, "opt": {"lr": torch.tensor(0.5)}})
    loaded = load_checkpoint(path)
    assert loaded.path == path
    assert loaded.config == cfg
    assert loaded.config.train.lr == 0.003
    assert loaded.tokenizer.vocab == tok.vocab
    assert loaded.tokenizer.encode("hello") == tok.encode("hello")
    assert torch.equal(loaded.featurizer.mean, feat.mean)
    assert torch.equal(loaded.featurizer.std, feat.std)
    assert loaded.state["step"] == 7 and loaded.state["epoch"] == 2
    assert not loaded.model.training
    feats = torch.randn(2, 33, N_MELS)
    lens = torch.tensor([33, 17])
    with torch.no_grad():
        want, want_lens = net(feats, lens)
        got, got_lens = loaded.model(feats, lens)
    assert torch.equal(want_lens, got_lens)
    assert torch.equal(want, got)
    wave = 0.1 * torch.randn(4000)
    assert torch.equal(loaded.featurizer(wave), feat(wave))


def test_round_trip_sentencepiece_and_variant(tmp_path: Path) -> None:
    rng = random.Random(0)
    words = "zero one two three four five six seven eight nine".split()
    texts = [" ".join(rng.choice(words) for _ in range(4)) for _ in range(200)]
    tok = train_tokenizer("unigram", texts, vocab_size=30)
    p = make_parts(tok, rnn_type="lstm", norm="layer", conv_layers=3)
    path = tmp_path / "sp.pt"
    save(path, p)
    loaded = load_checkpoint(path)
    assert loaded.tokenizer.kind == "unigram"
    for text in texts[:10]:
        assert loaded.tokenizer.encode(text) == tok.encode(text)
    assert loaded.config.model.rnn_type == "lstm"
    feats = torch.randn(1, 25, N_MELS)
    with torch.no_grad():
        assert torch.equal(loaded.model(feats, torch.tensor([25]))[0], p[3](feats, torch.tensor([25]))[0])


def test_round_trip_without_feature_stats(tmp_path: Path) -> None:
    cfg = build_config({"model": {"rnn_hidden": 16, "rnn_layers": 1, "conv_channels": 2},
                        "features": {"n_mels": N_MELS, "normalize": False}})
    tok = CharTokenizer.train(["ab"])
    net = build_model(cfg, N_MELS, len(tok.vocab))
    path = tmp_path / "m.pt"
    save_checkpoint(path, config=cfg, tokenizer=tok, featurizer=Featurizer(cfg.features), model=net)
    loaded = load_checkpoint(path)
    assert loaded.featurizer.mean is None and loaded.state == {}


def test_payload_is_plain_data(tmp_path: Path, parts) -> None:
    path = tmp_path / "model.pt"
    save(path, parts)
    data = read_checkpoint(path)
    assert data["version"] == VERSION
    assert set(data) >= {"version", "config", "tokenizer", "features", "model", "train"}
    assert isinstance(data["config"], dict) and isinstance(data["tokenizer"], dict)
    assert all(isinstance(v, torch.Tensor) for v in data["model"].values())


# --- atomic writes --------------------------------------------------------------------------------------


def test_save_leaves_no_temp_file(tmp_path: Path, parts) -> None:
    save(tmp_path / "last.pt", parts)
    save(tmp_path / "last.pt", parts)  # overwrite
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_failed_save_keeps_existing_file(tmp_path: Path, parts, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "best.pt"
    save(path, parts, {"step": 1})
    good = path.read_bytes()

    def exploding_save(obj: object, f) -> None:
        f.write(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", exploding_save)
    with pytest.raises(OSError, match="disk full"):
        save(path, parts, {"step": 2})
    monkeypatch.undo()
    assert path.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]
    assert load_checkpoint(path).state == {"step": 1}


def test_failed_first_save_leaves_nothing(tmp_path: Path, parts, monkeypatch: pytest.MonkeyPatch) -> None:
    def exploding_save(obj: object, f) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", exploding_save)
    with pytest.raises(KeyboardInterrupt):
        save(tmp_path / "last.pt", parts)
    assert list(tmp_path.iterdir()) == []


# --- untrusted files ------------------------------------------------------------------------------------


class Exploit:
    """Unpickling this would run os.system and create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class WriteMarker:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


@pytest.mark.parametrize("payload_cls", [Exploit, WriteMarker])
@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_untrusted_checkpoint_is_refused(tmp_path: Path, payload_cls: type, writer: str) -> None:
    marker = tmp_path / "marker"
    payload = {"version": 1, "model": {}, "config": {}, "tokenizer": {}, "evil": payload_cls(marker)}
    path = tmp_path / "evil.pt"
    if writer == "torch":
        torch.save(payload, path)
    else:
        with path.open("wb") as f:
            pickle.dump(payload, f, protocol=2)
    with pytest.raises(AsrkitError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert "refused" in msg
    assert str(path) in msg
    assert not marker.exists()


def test_exploit_payload_is_real(tmp_path: Path) -> None:
    """Sanity check of the test itself: an unrestricted load does run the payload."""
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    torch.save({"evil": WriteMarker(marker)}, path)
    torch.load(path, weights_only=False)
    assert marker.read_text() == "pwned"


def test_untrusted_checkpoint_in_folder_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    torch.save({"version": 1, "model": {}, "x": Exploit(marker)}, tmp_path / "best.pt")
    with pytest.raises(AsrkitError, match="refused"):
        load_checkpoint(tmp_path)
    assert not marker.exists()


# --- bad files ------------------------------------------------------------------------------------------


def test_truncated_file(tmp_path: Path, parts) -> None:
    path = tmp_path / "model.pt"
    save(path, parts)
    data = path.read_bytes()
    for cut in (20, 200, len(data) // 2, len(data) - 50):
        path.write_bytes(data[:cut])
        with pytest.raises(AsrkitError) as info:
            load_checkpoint(path)
        assert str(path) in str(info.value)
        assert "not a readable checkpoint" in str(info.value)


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 not really a zip"])
def test_empty_or_fake_zip_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(AsrkitError, match="not a readable checkpoint") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_text_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(b"hello, this is not a checkpoint\n" * 10)
    with pytest.raises(AsrkitError) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_random_bytes_are_not_reported_as_malicious(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(random.Random(0).randbytes(2000).replace(b"PK", b"pk"))
    with pytest.raises(AsrkitError) as info:
        load_checkpoint(path)
    assert "malicious" not in str(info.value)
    assert "not a readable checkpoint" in str(info.value)


@pytest.mark.parametrize("payload,fragment", [
    ([1, 2, 3], "not an asrkit checkpoint"),
    ({"model": {}}, "not an asrkit checkpoint"),
    ({"version": 1}, "not an asrkit checkpoint"),
    ({"version": VERSION + 1, "model": {}}, f"checkpoint format {VERSION + 1} was written by a newer asrkit"),
])
def test_not_an_asrkit_checkpoint(tmp_path: Path, payload: object, fragment: str) -> None:
    path = tmp_path / "x.pt"
    torch.save(payload, path)
    with pytest.raises(AsrkitError, match=fragment):
        load_checkpoint(path)


def test_weights_that_do_not_match_the_config(tmp_path: Path, parts) -> None:
    path = tmp_path / "model.pt"
    save(path, parts)
    data = torch.load(path, weights_only=True)
    data["config"]["model"]["rnn_hidden"] = 48
    torch.save(data, path)
    with pytest.raises(AsrkitError, match="weights do not match") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


# --- resolve_checkpoint ---------------------------------------------------------------------------------


def test_resolve_prefers_best_then_last(tmp_path: Path, parts) -> None:
    exp = tmp_path / "exp"
    exp.mkdir()
    save(exp / "last.pt", parts, {"which": "last"})
    assert resolve_checkpoint(exp) == exp / "last.pt"
    assert load_checkpoint(exp).state == {"which": "last"}
    save(exp / "best.pt", parts, {"which": "best"})
    assert resolve_checkpoint(exp) == exp / "best.pt"
    assert load_checkpoint(exp).state == {"which": "best"}
    assert load_checkpoint(exp).path == exp / "best.pt"
    assert resolve_checkpoint(exp / "last.pt") == exp / "last.pt"


def test_resolve_folder_without_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "epoch3.pt").write_bytes(b"")
    with pytest.raises(AsrkitError) as info:
        resolve_checkpoint(tmp_path)
    msg = str(info.value)
    assert str(tmp_path) in msg and "best.pt" in msg and "last.pt" in msg


def test_resolve_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pt"
    with pytest.raises(AsrkitError, match="not found") as info:
        load_checkpoint(missing)
    assert str(missing) in str(info.value)


@pytest.mark.parametrize(("name", "message"), [
    ("gpu", "unknown device 'gpu'; valid: auto, cpu, cuda, cuda:N"),
    ("cuda:x", "unknown device 'cuda:x'; valid: auto, cpu, cuda, cuda:N"),
])
def test_pick_device_names_a_bad_device(name: str, message: str) -> None:
    with pytest.raises(AsrkitError, match=message):
        pick_device(name)


def test_pick_device_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    assert pick_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu")
    with pytest.raises(AsrkitError, match="CUDA is not available here; use --device cpu"):
        pick_device("cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert pick_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(AsrkitError, match="'cuda:2': this machine has 2 GPU"):
        pick_device("cuda:2")
