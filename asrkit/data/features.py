"""Log-mel features, mean/variance normalisation, SpecAugment and additive noise (DeepSpeech2).

`LogMel` is the one log-mel core: the CPU `Featurizer` here, the batched `DeviceFeaturizer` (device_features.py)
and the `StreamingFeaturizer` (stream.py) all wrap it, so they compute the same features by the same operations.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Iterable
from pathlib import Path

import torch

from asrkit.config import FeatureConfig
from asrkit.errors import AsrkitError

LOG_FLOOR = 1e-6


def centre_pad(wave: torch.Tensor, n_fft: int) -> torch.Tensor:
    """(samples,) -> (max(samples, n_fft // 2 + 1) + 2 * (n_fft // 2),): the signal as a centred STFT reads it
    (zeros up to n_fft // 2 + 1 samples for very short audio, which reflect padding needs, then the reflection of
    n_fft // 2 samples at both ends), so that `LogMel`'s uncentred STFT of the result gives centred frames."""
    half = n_fft // 2
    if len(wave) < half + 1:
        wave = torch.nn.functional.pad(wave, (0, half + 1 - len(wave)))
    return torch.nn.functional.pad(wave[None, None], (half, half), mode="reflect")[0, 0]


class LogMel:
    """The log-mel core: padded waveforms (..., S) -> log(mel power + LOG_FLOOR) (..., T, F), one frame per hop.

    An uncentred STFT (Hann window of `win_length` inside `n_fft`), power, HTK mel filterbank without
    normalisation (as torchaudio's MelSpectrogram), natural log; in float32 whatever the autocast precision.
    The callers pad: `centre_pad` for whole utterances, the streaming front end with what has arrived.
    Shapes: S samples, T = 1 + (S - n_fft) // hop_length frames, F = n_mels bins, n_fft // 2 + 1 STFT bins.
    """

    def __init__(self, sample_rate: int, n_fft: int, win_length: int, hop_length: int, n_mels: int) -> None:
        import torchaudio.functional as taf

        self.n_fft, self.win_length, self.hop_length = n_fft, win_length, hop_length
        self.window = torch.hann_window(win_length)  # (win_length,)
        # (n_fft // 2 + 1, F): torchaudio's MelScale defaults (f_min 0, f_max Nyquist, HTK scale, no norm)
        self.fb = taf.melscale_fbanks(n_fft // 2 + 1, 0.0, float(sample_rate // 2), n_mels, sample_rate)

    def to(self, device: torch.device | str) -> LogMel:
        """A copy whose window and filterbank are on `device`."""
        moved = copy.copy(self)
        moved.window, moved.fb = self.window.to(device), self.fb.to(device)
        return moved

    @torch.no_grad()
    def __call__(self, padded: torch.Tensor, max_frames: int | None = None) -> torch.Tensor:
        """padded (..., S) -> (..., T, F), or its first `max_frames` frames (the others are not computed)."""
        with torch.autocast(padded.device.type, enabled=False):
            spec = torch.stft(padded.float(), self.n_fft, self.hop_length, self.win_length, self.window,
                              center=False, return_complex=True)  # (..., n_fft // 2 + 1, T)
            power = spec[..., :max_frames].abs().pow(2.0)
            return torch.log(torch.matmul(power.transpose(-1, -2), self.fb) + LOG_FLOOR)  # (..., T, F)


class Featurizer:
    """Waveform (samples,) -> log-mel (T, n_mels). Holds the normalisation statistics (stored in checkpoints)."""

    def __init__(self, cfg: FeatureConfig, mean: torch.Tensor | None = None, std: torch.Tensor | None = None):
        self.cfg = cfg
        self.win_length = round(cfg.sample_rate * cfg.win_ms / 1000)
        self.hop_length = round(cfg.sample_rate * cfg.hop_ms / 1000)
        self.n_fft = 1 << max(self.win_length - 1, 1).bit_length()
        self.core = LogMel(cfg.sample_rate, self.n_fft, self.win_length, self.hop_length, cfg.n_mels)
        self.mean = mean
        self.std = std

    @property
    def frame_shift(self) -> float:
        """Seconds between feature frames."""
        return self.hop_length / self.cfg.sample_rate

    def num_frames(self, num_samples: int) -> int:
        return 1 + num_samples // self.hop_length

    def log_mel(self, wave: torch.Tensor) -> torch.Tensor:
        """(samples,) -> (T, n_mels) without normalisation: the core on the centre-padded wave."""
        return self.core(centre_pad(wave, self.n_fft), self.num_frames(len(wave)))

    def normalise(self, feats: torch.Tensor) -> torch.Tensor:
        """(..., T, n_mels) log-mel -> (feats - mean) / std with the training statistics (unchanged without
        features.normalize)."""
        if self.cfg.normalize:
            if self.mean is None or self.std is None:
                raise RuntimeError("normalisation statistics missing: call fit_stats() first")
            feats = (feats - self.mean) / self.std
        return feats

    def to(self, device: torch.device | str) -> Featurizer:
        """A copy whose log-mel core and statistics are on `device` (the batched front end's)."""
        moved = copy.copy(self)
        moved.core = self.core.to(device)
        if self.mean is not None and self.std is not None:
            moved.mean, moved.std = self.mean.to(device), self.std.to(device)
        return moved

    def __call__(self, wave: torch.Tensor) -> torch.Tensor:
        return self.normalise(self.log_mel(wave))

    def fit_stats(self, waves: Iterable[torch.Tensor]) -> None:
        """Per-mel-bin mean and standard deviation over all frames of `waves` (float64 accumulation)."""
        total = torch.zeros(self.cfg.n_mels, dtype=torch.float64)
        total_sq = torch.zeros_like(total)
        count = 0
        for wave in waves:
            feats = self.log_mel(wave).double()
            total += feats.sum(0)
            total_sq += (feats**2).sum(0)
            count += feats.shape[0]
        if count == 0:
            raise AsrkitError("cannot compute feature statistics: the training set has no audio")
        mean = total / count
        var = (total_sq / count - mean**2).clamp_min(1e-8)
        self.mean, self.std = mean.float(), var.sqrt().float()

    def state(self) -> dict[str, torch.Tensor]:
        return {} if self.mean is None or self.std is None else {"mean": self.mean, "std": self.std}


def spec_augment(feats: torch.Tensor, cfg: FeatureConfig, rng: random.Random) -> torch.Tensor:
    """SpecAugment (Park et al. 2019) on (T, F): time warping when features.time_warp > 0, then frequency and time
    masks; masked values become 0 (the mean)."""
    masks = draw_masks(feats.shape[0], feats.shape[1], cfg, rng)
    return apply_masks(feats[None], masks[None])[0]


def draw_masks(num_frames: int, num_bins: int, cfg: FeatureConfig, rng: random.Random) -> torch.Tensor:
    """SpecAugment of one utterance as (K, 3) rows (axis, start, width): axis 0 masks mel bins, axis 1 frames;
    with features.time_warp = W > 0 a last row (2, c, d) moves frame c to d (|d - c| <= W, W <= c < T - W,
    0 < d < T - 1; none when the utterance is shorter than 2W + 2 frames). Drawn on the CPU (in a loader worker)
    and applied where the features are made. The masks are drawn first, so time_warp = 0 draws what it did before."""
    rows = []
    for _ in range(cfg.freq_masks):
        width = rng.randint(0, min(cfg.freq_mask_width, num_bins))
        rows.append((0, rng.randint(0, num_bins - width), width))
    max_time = min(cfg.time_mask_width, int(num_frames * cfg.time_mask_ratio))
    for _ in range(cfg.time_masks):
        width = rng.randint(0, max(max_time, 0))
        rows.append((1, rng.randint(0, num_frames - width), width))
    w = cfg.time_warp
    if w > 0 and num_frames >= 2 * w + 2:
        centre = rng.randint(w, num_frames - w - 1)
        rows.append((2, centre, min(max(centre + rng.randint(-w, w), 1), num_frames - 2)))  # the ends stay put
    return torch.tensor(rows, dtype=torch.long).reshape(-1, 3)


def apply_masks(feats: torch.Tensor, masks: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """feats (B, T, F) time-warped and masked by the rows (B, K, 3) of `draw_masks`, batched (on any device); a new
    tensor. `lengths` (B,): the utterances' frames (default T), the span a time warp stretches."""
    if masks.numel() == 0:
        return feats.clone()
    masks = masks.to(feats.device)
    if bool((masks[..., 0] == 2).any()):
        feats = time_warp(feats, masks, lengths)
    axis, start, end = masks[..., 0:1], masks[..., 1:2], masks[..., 1:2] + masks[..., 2:3]  # (B, K, 1) each
    frames = torch.arange(feats.shape[1], device=feats.device)
    bins = torch.arange(feats.shape[2], device=feats.device)
    in_time = ((axis == 1) & (frames >= start) & (frames < end)).any(1)  # (B, T)
    in_freq = ((axis == 0) & (bins >= start) & (bins < end)).any(1)  # (B, F)
    return feats.masked_fill(in_time[:, :, None] | in_freq[:, None, :], 0.0)


def time_warp(feats: torch.Tensor, masks: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """SpecAugment's time warping, batched: each utterance with a row (2, c, d) is resampled along time (linear
    interpolation) so that its frame c lands on d, frames 0 and n - 1 stay, the two sides stretched or squeezed
    linearly; the length n does not change. Utterances without such a row, and frames past n, are unchanged."""
    b, t, _ = feats.shape
    warp = masks[..., 0] == 2  # (B, K)
    has = warp.any(1)  # (B,)
    centre = (masks[..., 1] * warp).sum(1).to(feats.dtype)  # (B,)
    dest = (masks[..., 2] * warp).sum(1).to(feats.dtype)
    n = (torch.full((b,), t, device=feats.device) if lengths is None else lengths.to(feats.device)).to(feats.dtype)
    out = torch.arange(t, device=feats.device, dtype=feats.dtype)[None, :].expand(b, t)  # (B, T) output frames
    left = out * centre[:, None] / dest.clamp(min=1)[:, None]
    right = centre[:, None] + (out - dest[:, None]) * ((n - 1 - centre) / (n - 1 - dest).clamp(min=1))[:, None]
    source = torch.where(out < dest[:, None], left, right)
    source = torch.where(has[:, None] & (out < n[:, None]), source, out).clamp(0, t - 1)
    low = source.floor().long()
    high = torch.minimum(low + 1, (n.long() - 1).clamp(min=0)[:, None].expand(b, t)).clamp(0, t - 1)
    frac = (source - low.to(feats.dtype))[:, :, None]
    take = lambda idx: feats.gather(1, idx[:, :, None].expand(-1, -1, feats.shape[2]))  # noqa: E731
    return take(low) * (1 - frac) + take(high) * frac


class NoiseSource:
    """Additive noise at a random SNR: from recordings in `noise_dir`, or white noise when none are given."""

    def __init__(self, cfg: FeatureConfig) -> None:
        self.cfg = cfg
        self.files: list[Path] = []
        if cfg.noise_dir:
            folder = Path(cfg.noise_dir)
            if not folder.is_dir():
                raise AsrkitError(f"features.noise_dir {folder} is not a folder of noise recordings")
            exts = {".wav", ".flac", ".ogg", ".mp3"}
            self.files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in exts)
            if not self.files:
                raise AsrkitError(f"features.noise_dir {folder} holds no .wav/.flac/.ogg/.mp3 files")

    def __call__(self, wave: torch.Tensor, rng: random.Random) -> torch.Tensor:
        if rng.random() >= self.cfg.noise_prob:
            return wave
        noise = self._noise(len(wave), rng)
        snr_db = rng.uniform(*self.cfg.noise_snr_db)
        signal_power = wave.pow(2).mean().clamp_min(1e-10)
        noise_power = noise.pow(2).mean().clamp_min(1e-10)
        scale = math.sqrt(float(signal_power / noise_power) / (10 ** (snr_db / 10)))
        return wave + scale * noise

    def _noise(self, length: int, rng: random.Random) -> torch.Tensor:
        if not self.files:
            gen = torch.Generator().manual_seed(rng.getrandbits(32))
            return torch.randn(length, generator=gen)
        from asrkit.data.audio import load_audio

        noise = load_audio(rng.choice(self.files), self.cfg.sample_rate)
        if len(noise) < length:
            noise = noise.repeat(length // len(noise) + 1)
        start = rng.randint(0, len(noise) - length)
        return noise[start : start + length]
