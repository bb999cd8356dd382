"""Features on the training device (train.features_on): the batched DeviceFeaturizer gives the per-utterance
Featurizer's features and lengths, augmentation included; training runs in both modes (and agrees); the optimiser
and torch.compile options of the single-GPU data path."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import FSDD_ASSETS

from asrkit import experiment
from asrkit.config import FeatureConfig, build_config
from asrkit.data.device_features import DeviceFeaturizer
from asrkit.data.features import Featurizer, apply_masks, centre_pad, draw_masks, spec_augment
from asrkit.data.loader import SpeechDataset, collate, collate_waves
from asrkit.data.tokenizer import CharTokenizer
from asrkit.errors import AsrkitError
from asrkit.models import build_model
from asrkit.records import Batch, Utterance, WaveBatch
from asrkit.train import fit

CPU = torch.device("cpu")


def wave_batch(waves: list[torch.Tensor], n_fft: int) -> torch.Tensor:
    padded = [centre_pad(w, n_fft) for w in waves]
    out = torch.zeros(len(padded), max(len(p) for p in padded))
    for i, p in enumerate(padded):
        out[i, : len(p)] = p
    return out


@pytest.mark.parametrize("sample_rate", [8000, 16000, 22050])
def test_batched_log_mel_equals_per_utterance(sample_rate: int) -> None:
    featurizer = Featurizer(FeatureConfig(sample_rate=sample_rate, n_mels=40, normalize=False))
    half = featurizer.n_fft // 2
    lengths = [1, 100, half, half + 1, 3000, sample_rate + 1, 7777]  # shorter than the reflection, too
    gen = torch.Generator().manual_seed(sample_rate)
    waves = [0.1 * torch.randn(n, generator=gen) for n in lengths]
    feat_lens = torch.tensor([featurizer.num_frames(n) for n in lengths])
    feats = DeviceFeaturizer(featurizer, CPU)(wave_batch(waves, featurizer.n_fft), feat_lens)
    assert feats.shape == (len(waves), int(feat_lens.max()), 40) and feats.dtype == torch.float32
    for i, wave in enumerate(waves):
        ref = featurizer.log_mel(wave)
        assert ref.shape[0] == feat_lens[i]
        torch.testing.assert_close(feats[i, : len(ref)], ref, rtol=1e-5, atol=1e-5)
        assert (feats[i, len(ref):] == 0).all()  # padded frames are 0, as collate pads them


def test_centre_pad_is_what_the_centred_stft_reads() -> None:
    wave = torch.arange(1.0, 11.0)
    padded = centre_pad(wave, 8)
    assert padded.tolist() == [5, 4, 3, 2, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 9, 8, 7, 6]  # reflection, no edge repeat
    short = centre_pad(torch.ones(2), 8)  # zeros up to n_fft // 2 + 1 first, as Featurizer.log_mel does
    assert short.tolist() == [0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 1, 1]


def test_normalisation_and_masks_on_the_device() -> None:
    cfg = FeatureConfig(n_mels=40, freq_masks=2, freq_mask_width=8, time_masks=2, time_mask_ratio=0.3)
    featurizer = Featurizer(cfg)
    gen = torch.Generator().manual_seed(1)
    waves = [0.1 * torch.randn(n, generator=gen) for n in (4000, 9000, 2500)]
    featurizer.fit_stats(waves)
    lens = [featurizer.num_frames(len(w)) for w in waves]
    masks = [draw_masks(n, 40, cfg, random.Random(i)) for i, n in enumerate(lens)]
    feats = DeviceFeaturizer(featurizer, CPU)(wave_batch(waves, featurizer.n_fft), torch.tensor(lens),
                                              torch.stack(masks))
    for i, wave in enumerate(waves):
        ref = spec_augment(featurizer(wave), cfg, random.Random(i))  # the same draws as draw_masks
        torch.testing.assert_close(feats[i, : lens[i]], ref, rtol=1e-5, atol=1e-5)
        assert torch.equal(feats[i, : lens[i]] == 0, ref == 0)


def test_apply_masks_batched_matches_one_by_one() -> None:
    cfg = FeatureConfig(n_mels=20, freq_masks=3, freq_mask_width=5, time_masks=3, time_mask_width=9)
    feats = torch.rand(4, 60, 20) + 1
    masks = torch.stack([draw_masks(60, 20, cfg, random.Random(s)) for s in range(4)])
    batched = apply_masks(feats, masks)
    for i in range(4):
        assert torch.equal(batched[i], spec_augment(feats[i], cfg, random.Random(i)))
    assert torch.equal(apply_masks(feats, torch.zeros(4, 0, 3, dtype=torch.long)), feats)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[Utterance]:
    """Utterances of different lengths, sample rates and channel counts (the dataset resamples to 16 kHz)."""
    folder = tmp_path_factory.mktemp("wavs")
    rng = np.random.default_rng(0)
    utts = []
    for i, (seconds, rate, channels, text) in enumerate([(0.5, 16000, 1, "one"), (0.8, 8000, 1, "two three"),
                                                         (0.3, 44100, 2, "four"), (0.01, 16000, 1, "five"),
                                                         (1.1, 22050, 1, "six seven")]):
        path = folder / f"u{i}.wav"
        sf.write(path, (0.1 * rng.standard_normal((int(seconds * rate), channels))).astype(np.float32), rate)
        utts.append(Utterance(f"u{i}", str(path), seconds, text))
    return utts


@pytest.mark.parametrize("augment", [False, True])
def test_device_batches_equal_worker_batches(corpus: list[Utterance], augment: bool) -> None:
    cfg = FeatureConfig(n_mels=40, noise_prob=0.5, time_mask_ratio=0.3)
    featurizer = Featurizer(cfg)
    from asrkit.data.audio import load_audio

    featurizer.fit_stats(load_audio(u.audio_filepath, 16000) for u in corpus)
    tok = CharTokenizer.train(u.text for u in corpus)
    workers = SpeechDataset(corpus, featurizer, tok, augment=augment, seed=5)
    device = SpeechDataset(corpus, featurizer, tok, augment=augment, seed=5, waveforms=True)
    for epoch in (0, 1):
        keys = [(epoch, i) for i in range(len(corpus))]
        ref = collate([workers[k] for k in keys])  # type: ignore[misc]
        waves = collate_waves([device[k] for k in keys])  # type: ignore[misc]
        assert isinstance(waves, WaveBatch) and waves.masks.shape == (5, 4 if augment else 0, 3)
        got = DeviceFeaturizer(featurizer, CPU).batch(waves)
        assert isinstance(got, Batch) and got.ids == ref.ids and got.texts == ref.texts
        assert torch.equal(got.feat_lens, ref.feat_lens)
        assert torch.equal(got.targets, ref.targets) and torch.equal(got.target_lens, ref.target_lens)
        torch.testing.assert_close(got.feats, ref.feats, rtol=1e-5, atol=1e-5)
        assert torch.equal(got.feats == 0, ref.feats == 0)  # the same masks and padding


def test_collate_waves_leaves_out_unreadable_audio(corpus: list[Utterance], tmp_path: Path) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio")
    utts = [corpus[0], Utterance("bad", str(bad), 0.5, "one")]
    ds = SpeechDataset(utts, Featurizer(FeatureConfig(n_mels=40, normalize=False)), None, waveforms=True)
    batch = collate_waves([ds[0], ds[1]])  # type: ignore[list-item]
    assert batch.ids == ["u0"] and batch.failed[0][0] == "bad" and "bad.wav" in batch.failed[0][1]
    assert batch.waves.shape == (1, 8000 + 512) and batch.feat_lens.tolist() == [51]
    empty = collate_waves([ds[1]])  # type: ignore[list-item]
    assert empty.ids == [] and empty.waves.shape[0] == 0 and len(empty.failed) == 1
    pinned_ok = batch.to(CPU, non_blocking=True)
    assert torch.equal(pinned_ok.waves, batch.waves)


WORDS = ["zero", "one", "two", "three"]
TINY: dict[str, dict[str, Any]] = {
    "model": {"conv_layers": 1, "conv_channels": 4, "rnn_layers": 1, "rnn_hidden": 32},
    "features": {"n_mels": 40, "time_mask_ratio": 0.2},
    "train": {"epochs": 2, "lr": 3e-3, "warmup_steps": 2, "batch_seconds": 0.7, "num_workers": 0,
              "save_every_steps": 0, "seed": 3, "max_steps": 4},
}


def make_data(root: Path) -> Path:
    data = root / "data"
    data.mkdir(parents=True)
    lines = [{"id": w, "audio_filepath": str(FSDD_ASSETS / f"{d}_lucas_10.wav"), "duration": 0.5, "text": w}
             for d, w in enumerate(WORDS)]
    (data / "train.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return data


def test_training_in_both_modes_gives_the_same_model(tmp_path: Path) -> None:
    data = make_data(tmp_path)
    states = {}
    for mode in ("workers", "device"):
        cfg = build_config({**TINY, "train": {**TINY["train"], "features_on": mode}})
        result = fit(cfg, data, tmp_path / mode, progress=False)
        assert result.steps == 4 and result.audio_seconds > 0
        states[mode] = torch.load(tmp_path / mode / "last.pt", weights_only=True)["model"]
    for key, value in states["workers"].items():  # SpecAugment on: the same masks in both modes
        torch.testing.assert_close(states["device"][key], value, rtol=1e-4, atol=1e-5, msg=key)


def test_unknown_features_on_is_an_error(tmp_path: Path) -> None:
    """Checked when the config is built, before any work."""
    with pytest.raises(AsrkitError, match="unknown train.features_on 'gpu'; valid: auto, device, workers"):
        build_config({**TINY, "train": {**TINY["train"], "features_on": "gpu"}})


def test_compile_is_skipped_on_the_cpu_with_a_note(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = build_config({**TINY, "train": {**TINY["train"], "compile": True, "max_steps": 2,
                                          "features_on": "device"}})
    assert fit(cfg, make_data(tmp_path), tmp_path / "exp", progress=False).steps == 2
    said = capsys.readouterr()
    assert "train.compile applies on CUDA only" in said.err + said.out


def test_compile_on_cuda_compiles_the_convolution_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    compiled: list[tuple[str, dict]] = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: compiled.append((type(self).__name__, kw)))
    cfg = build_config({**TINY, "model": {**TINY["model"], "conv_layers": 2}})
    model = build_model(cfg, 40, 10)
    experiment.compile_model(model, torch.device("cuda"), print)
    assert compiled == [("Sequential", {"dynamic": True})] * 2
    assert not any("_orig_mod" in key for key in model.state_dict())  # checkpoints keep the plain keys


def test_compile_without_blocks_to_compile_is_skipped_with_a_note(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    cfg = build_config({**TINY, "model": {"family": "transducer"},
                        "transducer": {"encoder_layers": 1, "encoder_hidden": 16, "predictor_hidden": 16,
                                       "joint_dim": 16, "predictor_embed": 8},
                        "train": {**TINY["train"], "compile": True, "max_steps": 1}})
    assert fit(cfg, make_data(tmp_path), tmp_path / "exp", progress=False).steps == 1
    said = capsys.readouterr()
    assert "train.compile: this model (Transducer) has no blocks to compile" in said.err + said.out


def test_resumed_optimizer_keeps_this_runs_implementation() -> None:
    params = [torch.nn.Parameter(torch.randn(3))]
    saved = torch.optim.AdamW(params, lr=0.1, foreach=True)  # e.g. written by a run elsewhere
    params[0].grad = torch.ones(3)
    saved.step()
    here = torch.optim.AdamW(params, lr=0.1)
    experiment.load_optimizer(here, saved.state_dict())
    assert here.param_groups[0]["foreach"] is None and here.param_groups[0]["fused"] is None
    assert torch.equal(here.state_dict()["state"][0]["exp_avg"], saved.state_dict()["state"][0]["exp_avg"])


@pytest.mark.parametrize("kind", [Batch, WaveBatch])
def test_records_move_every_tensor_field_and_keep_the_rest(kind: type[Batch] | type[WaveBatch]) -> None:
    values = {f.name: torch.ones(2, 3) for f in dataclasses.fields(kind) if f.type in ("torch.Tensor", torch.Tensor)}
    batch = kind(ids=["a", "b"], texts=["x", "y"], failed=[("c", "unreadable")], **values)  # type: ignore[arg-type]
    moved = batch.to("meta")
    for name in values:
        assert getattr(moved, name).device.type == "meta", name
        assert getattr(batch, name).device.type == "cpu", name  # a new record; the old one is unchanged
    assert (moved.ids, moved.texts, moved.failed) == (batch.ids, batch.texts, batch.failed)
    assert len(values) == (4 if kind is Batch else 5)


def test_bf16_autocast_trains_float32_weights_close_to_fp32(tmp_path: Path) -> None:
    """train.precision = bf16 (the default on CUDA) through the same loop on the CPU, with device features: the
    step runs under autocast (the weights move differently from an fp32 run) and the saved weights stay float32."""
    data = make_data(tmp_path)
    states = {}
    for precision in ("fp32", "bf16"):
        cfg = build_config({**TINY, "train": {**TINY["train"], "features_on": "device", "precision": precision}})
        result = fit(cfg, data, tmp_path / precision, progress=False)
        assert result.steps == 4 and not result.skipped
        states[precision] = torch.load(tmp_path / precision / "last.pt", weights_only=True)["model"]
    moved = 0.0
    for key, value in states["fp32"].items():
        other = states["bf16"][key]
        assert other.dtype == value.dtype, key  # master weights and BatchNorm statistics in float32
        if value.is_floating_point():
            torch.testing.assert_close(other, value, rtol=0, atol=2e-2, msg=key)
            moved = max(moved, float((other - value).abs().max()))
    assert moved > 1e-4  # bf16 rounding changed the steps: autocast was on


@pytest.mark.parametrize(("precision", "native", "warned", "autocast"),
                         [("bf16", False, True, True), ("bf16", True, False, True), ("auto", False, False, False),
                          ("fp32", False, False, False)])
def test_bf16_on_a_cpu_without_native_bf16_warns(monkeypatch: pytest.MonkeyPatch, precision: str, native: bool,
                                                 warned: bool, autocast: bool) -> None:
    """Emulated bf16 runs 10-50x slower than fp32 (and can fail in LSTMs): one warning line, no error; "auto" stays
    fp32 on the CPU."""
    monkeypatch.setattr(experiment, "cpu_has_bf16", lambda: native)
    said: list[str] = []
    context = experiment.autocast(precision, torch.device("cpu"), said.append)
    assert isinstance(context, torch.autocast) == autocast
    assert len(said) == int(warned)
    assert all("train.precision = bf16 on a CPU without native bf16" in line and "\n" not in line for line in said)


def test_unknown_precision_is_an_error(tmp_path: Path) -> None:
    """Checked when the config is built, before any work."""
    with pytest.raises(AsrkitError, match="unknown train.precision 'fp16'; valid: auto, bf16, fp32"):
        build_config({**TINY, "train": {**TINY["train"], "precision": "fp16"}})
