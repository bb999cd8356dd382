"""Speed perturbation (asrkit.data.augment): durations scale by the factor, the factor is a pure function of
(seed, epoch, index) in both feature modes and in the sampler's bucketing, and a resumed run stays exact.
Also the learning-rate schedules (asrkit.schedule)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from conftest import FSDD_ASSETS

from asrkit.config import FeatureConfig, TrainConfig, build_config
from asrkit.data.audio import load_audio
from asrkit.data.augment import perturb_speed, speed_factor
from asrkit.data.features import Featurizer
from asrkit.data.loader import DurationBatchSampler, SpeechDataset
from asrkit.data.tokenizer import CharTokenizer
from asrkit.records import Utterance
from asrkit.schedule import learning_rate
from asrkit.train import fit

WAV = FSDD_ASSETS / "3_jackson_5.wav"


@pytest.mark.parametrize("factor", [0.9, 1.0, 1.1])
def test_duration_scales_by_the_factor(factor: float) -> None:
    wave = load_audio(WAV, 16000)
    out = perturb_speed(wave, factor)
    assert abs(len(out) - len(wave) / factor) <= 2


def test_pitch_moves_with_the_factor() -> None:
    """A 440 Hz tone played 1.1x faster peaks at 484 Hz (tempo and pitch change together, like sox speed)."""
    t = torch.arange(16000) / 16000
    tone = torch.sin(2 * torch.pi * 440 * t)
    spectrum = torch.fft.rfft(perturb_speed(tone, 1.1)).abs()
    peak_hz = int(spectrum.argmax()) * 16000 / (2 * (len(spectrum) - 1))
    assert abs(peak_hz - 484) < 3


def test_factor_is_a_pure_function_of_seed_epoch_index() -> None:
    factors = (0.9, 1.0, 1.1)
    draws = [speed_factor(factors, 3, e, i) for e in range(4) for i in range(50)]
    assert draws == [speed_factor(factors, 3, e, i) for e in range(4) for i in range(50)]
    assert set(draws) == set(factors)  # all three are drawn ...
    assert all(draws.count(f) > 40 for f in factors)  # ... about a third each
    assert draws != [speed_factor(factors, 4, e, i) for e in range(4) for i in range(50)]


def _dataset(waveforms: bool) -> SpeechDataset:
    cfg = FeatureConfig(n_mels=40, speed_perturb=True, spec_augment=False, normalize=False)
    utts = [Utterance(f"u{i}", str(FSDD_ASSETS / f"{i}_jackson_5.wav"), 0.4, "x") for i in range(6)]
    return SpeechDataset(utts, Featurizer(cfg), CharTokenizer(["x"]), augment=True, seed=5, waveforms=waveforms)


@pytest.mark.parametrize("waveforms", [False, True])
def test_dataset_perturbs_by_the_drawn_factor_in_both_modes(waveforms: bool) -> None:
    plain = _dataset(waveforms)
    for epoch in range(3):
        for index in range(6):
            item = plain[(epoch, index)]
            again = plain[(epoch, index)]
            factor = speed_factor((0.9, 1.0, 1.1), 5, epoch, index)
            wave = load_audio(FSDD_ASSETS / f"{index}_jackson_5.wav", 16000)
            expect = Featurizer(plain.featurizer.cfg).num_frames(len(perturb_speed(wave, factor)))
            frames = item.frames if waveforms else item.feats.shape[0]  # type: ignore[union-attr]
            assert frames == expect
            if waveforms:
                assert torch.equal(item.wave, again.wave)  # type: ignore[union-attr]
            else:
                assert torch.equal(item.feats, again.feats)  # type: ignore[union-attr]


def test_sampler_buckets_the_perturbed_durations() -> None:
    durations = [1.0 + 0.01 * i for i in range(40)]
    factors = (0.9, 1.0, 1.1)
    sampler = DurationBatchSampler(durations, 4.0, 32, seed=1, speed_factors=factors, speed_seed=9)
    for epoch in range(3):
        perturbed = sampler.epoch_durations(epoch)
        assert perturbed == [d / speed_factor(factors, 9, epoch, i) for i, d in enumerate(durations)]
        for batch in sampler.batches(epoch):  # the cap holds for the audio the model will really see
            assert max(perturbed[i] for i in batch) * len(batch) <= 4.0 + 1e-9
    plain = DurationBatchSampler(durations, 4.0, 32, seed=1)
    assert plain.batches(0) != sampler.batches(0)


def test_resume_with_speed_perturbation_is_exact(tmp_path: Path) -> None:
    """Stopping at max_steps then resuming gives the same parameters as one uninterrupted run."""
    from typer.testing import CliRunner

    from asrkit.cli import app

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for digit, word in enumerate(["zero", "one", "two", "three"]):
        shutil.copy(FSDD_ASSETS / f"{digit}_jackson_5.wav", corpus / f"{word}.wav")
        (corpus / f"{word}.txt").write_text(word + "\n")
    data = tmp_path / "data"
    assert CliRunner().invoke(app, ["prepare", "folder", str(corpus), str(data), "--name", "train"]).exit_code == 0
    sections = {"features": {"n_mels": 20, "speed_perturb": True},
                "encoder": {"kind": "conformer", "d_model": 16, "layers": 1, "heads": 2, "ff_mult": 2,
                            "conv_kernel": 3, "subsampling_channels": 4},
                "train": {"epochs": 3, "batch_seconds": 1.2, "num_workers": 0, "save_every_steps": 0,
                          "schedule": "cosine", "warmup_steps": 2}}
    fit(build_config(sections), data, tmp_path / "straight", progress=False)
    stopped = {**sections, "train": {**sections["train"], "max_steps": 3}}
    fit(build_config(stopped), data, tmp_path / "resumed", progress=False)
    fit(build_config(sections), data, tmp_path / "resumed", resume=True, progress=False)
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)
    assert a["train"]["step"] == b["train"]["step"] > 3
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, msg=key, rtol=0, atol=0)


def test_schedules() -> None:
    anneal = TrainConfig(lr=1.0, warmup_steps=10, anneal=0.5)
    assert learning_rate(anneal, 4, 0, 100) == pytest.approx(0.5)
    assert learning_rate(anneal, 50, 2, 100) == pytest.approx(0.25)
    noam = TrainConfig(lr=1.0, warmup_steps=100, schedule="noam")
    assert learning_rate(noam, 49, 0, 1000) == pytest.approx(0.5)
    assert learning_rate(noam, 99, 0, 1000) == pytest.approx(1.0)  # the peak is train.lr
    assert learning_rate(noam, 399, 3, 1000) == pytest.approx(0.5)  # 1 / sqrt(step / warmup)
    cosine = TrainConfig(lr=1.0, warmup_steps=100, schedule="cosine", min_lr=0.1)
    assert learning_rate(cosine, 99, 0, 1100) == pytest.approx(1.0)
    assert learning_rate(cosine, 599, 0, 1100) == pytest.approx(0.55)  # half way: the mean of lr and min_lr
    assert learning_rate(cosine, 1099, 0, 1100) == pytest.approx(0.1)
    assert learning_rate(cosine, 5000, 0, 1100) == pytest.approx(0.1)  # past the planned end: stays at min_lr
    with pytest.raises(Exception, match="train.schedule"):
        build_config({"train": {"schedule": "step"}})
