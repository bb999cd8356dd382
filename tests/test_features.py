"""Log-mel features, statistics, SpecAugment, additive noise, and audio loading (formats, errors)."""

from __future__ import annotations

import dataclasses
import math
import random
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from asrkit.config import FeatureConfig
from asrkit.data.audio import audio_info, load_audio, resample
from asrkit.data.features import Featurizer, NoiseSource, spec_augment
from asrkit.errors import AsrkitError, AudioError

SR = 16000
CFG = FeatureConfig(n_mels=40)
RAW = FeatureConfig(n_mels=40, normalize=False)


@pytest.fixture(scope="module")
def raw_featurizer() -> Featurizer:
    return Featurizer(RAW)


def tone(seconds: float, freq: float = 440.0, sr: int = SR, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def noisy(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(n, generator=gen)


# --- log-mel --------------------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(n=st.integers(min_value=400, max_value=40000))
def test_frame_count_matches_num_frames(raw_featurizer: Featurizer, n: int) -> None:
    feats = raw_featurizer.log_mel(noisy(n, n))
    assert feats.shape == (raw_featurizer.num_frames(n), 40)
    assert feats.dtype == torch.float32
    assert torch.isfinite(feats).all()


@pytest.mark.parametrize("n", [257, 320, 16000, 16159, 16160, 16161])
def test_frame_count_fixed_lengths(raw_featurizer: Featurizer, n: int) -> None:
    assert raw_featurizer.log_mel(noisy(n, 0)).shape[0] == raw_featurizer.num_frames(n)


@pytest.mark.parametrize("n", [1, 100, 256])
def test_very_short_audio(raw_featurizer: Featurizer, n: int) -> None:
    try:
        feats = raw_featurizer.log_mel(noisy(n, 0))
    except AsrkitError:
        return
    assert feats.shape == (raw_featurizer.num_frames(n), 40)


def test_n_mels_and_frame_shift() -> None:
    for n_mels in (20, 64, 80):
        feat = Featurizer(FeatureConfig(n_mels=n_mels, normalize=False))
        assert feat.log_mel(noisy(8000, 1)).shape[1] == n_mels
    feat = Featurizer(RAW)
    assert feat.hop_length == 160 and feat.win_length == 400
    assert feat.frame_shift == pytest.approx(0.01)
    feat8k = Featurizer(FeatureConfig(sample_rate=8000, hop_ms=20.0, normalize=False))
    assert feat8k.frame_shift == pytest.approx(0.02)


def test_silence_is_finite(raw_featurizer: Featurizer) -> None:
    feats = raw_featurizer.log_mel(torch.zeros(4000))
    assert torch.isfinite(feats).all()
    assert torch.allclose(feats, torch.full_like(feats, math.log(1e-6)))


def test_normalize_without_stats_raises() -> None:
    with pytest.raises(RuntimeError, match="fit_stats"):
        Featurizer(CFG)(noisy(4000, 0))


def test_fit_stats_normalises_to_zero_mean_unit_std() -> None:
    feat = Featurizer(CFG)
    waves = [torch.from_numpy(tone(0.5, f)) + noisy(8000, i) for i, f in enumerate((200.0, 700.0, 1500.0))]
    feat.fit_stats(waves)
    assert feat.mean is not None and feat.std is not None
    assert feat.mean.shape == (40,) and feat.std.shape == (40,)
    assert set(feat.state()) == {"mean", "std"}
    allf = torch.cat([feat(w) for w in waves])
    assert allf.mean(0).abs().max() < 1e-3
    assert (allf.std(0, unbiased=False) - 1).abs().max() < 1e-3


def test_fit_stats_on_nothing_is_an_error() -> None:
    with pytest.raises(AsrkitError, match="no audio"):
        Featurizer(CFG).fit_stats([])


def test_state_empty_without_stats() -> None:
    assert Featurizer(CFG).state() == {}


# --- SpecAugment ----------------------------------------------------------------------------------------


def masked_rows_cols(out: torch.Tensor) -> tuple[int, int]:
    zero = out == 0
    return int(zero.all(1).sum()), int(zero.all(0).sum())


@pytest.mark.parametrize("seed", range(20))
def test_spec_augment_masks_within_limits(seed: int) -> None:
    cfg = FeatureConfig(n_mels=40, freq_masks=2, freq_mask_width=6, time_masks=3, time_mask_width=20,
                        time_mask_ratio=0.1)
    feats = torch.rand(150, 40) + 1.0  # never 0 before masking
    original = feats.clone()
    out = spec_augment(feats, cfg, random.Random(seed))
    assert out.shape == feats.shape
    assert torch.equal(feats, original)  # input not modified in place
    changed = out != feats
    assert (out[changed] == 0).all()  # masked values become 0, nothing else changes
    rows, cols = masked_rows_cols(out)
    # only whole rows / columns are masked
    assert int(changed.sum()) == rows * 40 + cols * 150 - rows * cols
    assert cols <= cfg.freq_masks * cfg.freq_mask_width
    max_time = min(cfg.time_mask_width, int(150 * cfg.time_mask_ratio))
    assert rows <= cfg.time_masks * max_time


def test_spec_augment_time_ratio_caps_short_utterances() -> None:
    cfg = FeatureConfig(n_mels=40, freq_masks=0, time_masks=5, time_mask_width=50, time_mask_ratio=0.1)
    for seed in range(30):
        out = spec_augment(torch.rand(9, 40) + 1, cfg, random.Random(seed))  # int(0.9) = 0 -> no time mask
        assert (out != 0).all()


def test_spec_augment_is_deterministic_for_a_seed() -> None:
    feats = torch.randn(200, 40)
    a = spec_augment(feats, CFG, random.Random(7))
    b = spec_augment(feats, CFG, random.Random(7))
    assert torch.equal(a, b)
    others = [spec_augment(feats, CFG, random.Random(s)) for s in range(8, 14)]
    assert any(not torch.equal(a, o) for o in others)


def test_spec_augment_no_masks_is_identity() -> None:
    cfg = FeatureConfig(n_mels=40, freq_masks=0, time_masks=0)
    feats = torch.randn(50, 40)
    assert torch.equal(spec_augment(feats, cfg, random.Random(0)), feats)


# --- noise ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("snr", [0.0, 10.0, 25.0])
def test_white_noise_reaches_requested_snr(snr: float) -> None:
    cfg = FeatureConfig(noise_prob=1.0, noise_snr_db=(snr, snr))
    source = NoiseSource(cfg)
    wave = torch.from_numpy(tone(1.0))
    out = source(wave, random.Random(3))
    assert out.shape == wave.shape
    added = out - wave
    measured = 10 * math.log10(float(wave.pow(2).mean() / added.pow(2).mean()))
    assert abs(measured - snr) < 1.0


def test_noise_snr_within_range() -> None:
    cfg = FeatureConfig(noise_prob=1.0, noise_snr_db=(5.0, 15.0))
    source = NoiseSource(cfg)
    wave = torch.from_numpy(tone(0.5))
    for seed in range(10):
        added = source(wave, random.Random(seed)) - wave
        measured = 10 * math.log10(float(wave.pow(2).mean() / added.pow(2).mean()))
        assert 4.0 < measured < 16.0


def test_noise_prob_zero_returns_input() -> None:
    source = NoiseSource(FeatureConfig(noise_prob=0.0))
    wave = torch.from_numpy(tone(0.5))
    for seed in range(10):
        assert source(wave, random.Random(seed)) is wave


def test_noise_is_deterministic_for_a_seed() -> None:
    source = NoiseSource(FeatureConfig(noise_prob=1.0))
    wave = torch.from_numpy(tone(0.25))
    assert torch.equal(source(wave, random.Random(5)), source(wave, random.Random(5)))
    assert not torch.equal(source(wave, random.Random(5)), source(wave, random.Random(6)))


def test_noise_from_recordings(tmp_path: Path) -> None:
    noise_dir = tmp_path / "noise"
    noise_dir.mkdir()
    rng = np.random.default_rng(0)
    sf.write(noise_dir / "n1.wav", (0.3 * rng.standard_normal(1000)).astype(np.float32), SR)  # shorter than wave
    sf.write(noise_dir / "ignored.txt", np.zeros(10), SR, format="WAV")  # wrong extension: ignored
    cfg = FeatureConfig(noise_prob=1.0, noise_snr_db=(12.0, 12.0), noise_dir=str(noise_dir))
    source = NoiseSource(cfg)
    assert [p.name for p in source.files] == ["n1.wav"]
    wave = torch.from_numpy(tone(0.5))
    added = source(wave, random.Random(1)) - wave
    measured = 10 * math.log10(float(wave.pow(2).mean() / added.pow(2).mean()))
    assert abs(measured - 12.0) < 1.0


def test_noise_dir_missing(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_dir"
    with pytest.raises(AsrkitError, match="noise_dir") as info:
        NoiseSource(FeatureConfig(noise_prob=0.5, noise_dir=str(missing)))
    assert str(missing) in str(info.value)


def test_noise_dir_without_audio(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("nothing here")
    with pytest.raises(AsrkitError, match="holds no"):
        NoiseSource(FeatureConfig(noise_prob=0.5, noise_dir=str(tmp_path)))


# --- audio loading --------------------------------------------------------------------------------------


def test_resample_8k_to_16k(tmp_path: Path) -> None:
    path = tmp_path / "a8k.wav"
    sf.write(path, tone(0.5, sr=8000), 8000)
    wave = load_audio(path, SR)
    assert wave.dtype == torch.float32 and wave.ndim == 1
    assert abs(len(wave) / 4000 - 2.0) < 0.01
    # the tone survives resampling
    ref = torch.from_numpy(tone(0.5))
    assert torch.allclose(wave[200:-200], ref[200:-200], atol=0.02)


def test_resample_same_rate_is_identity() -> None:
    wave = torch.randn(100)
    assert resample(wave, SR, SR) is wave
    assert abs(len(resample(torch.randn(4410), 44100, SR)) - 1600) <= 1


def test_stereo_is_averaged(tmp_path: Path) -> None:
    left = tone(0.1, 300)
    right = tone(0.1, 900, amp=0.2)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), SR, subtype="FLOAT")
    wave = load_audio(path, SR)
    assert wave.shape == (len(left),)
    np.testing.assert_allclose(wave.numpy(), (left + right) / 2, atol=1e-6)


@pytest.mark.parametrize("fmt,subtype,atol", [
    ("WAV", "PCM_16", 1e-4), ("WAV", "PCM_24", 1e-6), ("WAV", "FLOAT", 1e-7), ("FLAC", "PCM_16", 1e-4),
    ("FLAC", "PCM_24", 1e-6),
])
def test_formats_load_as_float32_mono(tmp_path: Path, fmt: str, subtype: str, atol: float) -> None:
    data = tone(0.2)
    path = tmp_path / f"a.{fmt.lower()}"
    sf.write(path, data, SR, format=fmt, subtype=subtype)
    wave = load_audio(path, SR)
    assert wave.dtype == torch.float32
    assert wave.shape == (len(data),)
    np.testing.assert_allclose(wave.numpy(), data, atol=atol)
    duration, sr = audio_info(path)
    assert sr == SR and duration == pytest.approx(0.2)


def test_multichannel_flac_at_other_rate(tmp_path: Path) -> None:
    path = tmp_path / "a.flac"
    data = np.stack([tone(0.3, sr=22050)] * 3, axis=1)
    sf.write(path, data, 22050, subtype="PCM_16")
    wave = load_audio(path, SR)
    assert wave.ndim == 1 and abs(len(wave) - int(0.3 * SR)) <= 2


def assert_audio_error(path: Path, fragment: str) -> None:
    with pytest.raises(AudioError) as info:
        load_audio(path, SR)
    assert str(path) in str(info.value)
    assert info.value.path == str(path)
    assert fragment in str(info.value)
    assert isinstance(info.value, AsrkitError)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    assert_audio_error(path, "cannot decode audio")


def test_wav_without_samples(tmp_path: Path) -> None:
    path = tmp_path / "zero.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), SR)
    assert_audio_error(path, "no samples")
    with pytest.raises(AudioError, match="no samples"):
        audio_info(path)


def test_non_audio_bytes(tmp_path: Path) -> None:
    path = tmp_path / "notes.wav"
    path.write_bytes(b"this is a text file, not audio\n" * 20)
    assert_audio_error(path, "cannot decode audio")
    with pytest.raises(AudioError, match="cannot read audio"):
        audio_info(path)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.wav"
    with pytest.raises(AudioError) as info:
        load_audio(path, SR)
    assert str(path) in str(info.value)
    with pytest.raises(AudioError) as info:
        audio_info(path)
    assert str(path) in str(info.value)


def test_audio_error_survives_pickling() -> None:
    """DataLoader workers pickle exceptions back to the main process: path and reason must survive."""
    import pickle

    err = pickle.loads(pickle.dumps(AudioError("/data/x.wav", "file not found")))
    assert isinstance(err, AudioError)
    assert err.path == "/data/x.wav" and err.reason == "file not found"
    assert str(err) == "/data/x.wav: file not found"


def test_nan_samples(tmp_path: Path) -> None:
    path = tmp_path / "nan.wav"
    data = tone(0.1)
    data[5] = np.nan
    sf.write(path, data, SR, subtype="FLOAT")
    assert_audio_error(path, "NaN")


def test_feature_config_is_hashable_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        CFG.n_mels = 3  # type: ignore[misc]


@pytest.mark.parametrize("sample_rate", [8000, 16000, 22050])
def test_log_mel_core_equals_torchaudio_mel_spectrogram(sample_rate: int) -> None:
    """The one log-mel core (`LogMel`, which the CPU, device and streaming front ends wrap) gives torchaudio's
    centred MelSpectrogram, bit for bit: the features trained checkpoints were fitted on."""
    import torchaudio

    feat = Featurizer(FeatureConfig(sample_rate=sample_rate, n_mels=40, normalize=False))
    mel = torchaudio.transforms.MelSpectrogram(sample_rate=sample_rate, n_fft=feat.n_fft, win_length=feat.win_length,
                                               hop_length=feat.hop_length, n_mels=40, center=True, power=2.0)
    for n in (feat.n_fft // 2 + 1, 3000, sample_rate + 7):
        wave = noisy(n, n)
        assert torch.equal(feat.log_mel(wave), torch.log(mel(wave) + 1e-6).transpose(0, 1))
