"""Features made on the training device, batched: the loader workers only decode audio (train.features_on).

The workers return waveforms already padded the way a centred STFT pads them (`centre_pad`: each one by its own
reflection), zero-padded to a batch. On the device, one uncentred STFT over the batch then gives exactly the
frames of the per-utterance `Featurizer`; log-mel, normalisation with the stored training statistics and the
SpecAugment masks the workers drew (from the same per-utterance RNG as in worker mode) follow, batched.

Shapes: B batch, S samples of the longest padded waveform, T frames, F mel bins, K masks per utterance.

    waves (B, S) -> STFT (B, n_fft/2+1, T) -> |.|^2 -> mel (B, T, F) -> log -> (x - mean) / std -> masks -> Batch
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from asrkit.data.features import LOG_FLOOR, Featurizer, apply_masks
from asrkit.records import Batch, WaveBatch


def centre_pad(wave: torch.Tensor, n_fft: int) -> torch.Tensor:
    """(samples,) -> (max(samples, n_fft // 2 + 1) + 2 * (n_fft // 2),): what `Featurizer.log_mel` does before its
    centred STFT (zeros up to n_fft // 2 + 1 samples for very short audio, then reflect padding at both ends), so
    that an uncentred STFT of the result gives the same frames."""
    half = n_fft // 2
    if len(wave) < half + 1:
        wave = F.pad(wave, (0, half + 1 - len(wave)))
    return F.pad(wave[None, None], (half, half), mode="reflect")[0, 0]


class DeviceFeaturizer:
    """Batched `Featurizer` on `device`: (B, S) centre-padded waveforms -> normalised, masked log-mel (B, T, F)."""

    def __init__(self, featurizer: Featurizer, device: torch.device) -> None:
        cfg = featurizer.cfg
        self.cfg, self.device = cfg, device
        self.n_fft, self.hop_length, self.win_length = featurizer.n_fft, featurizer.hop_length, featurizer.win_length
        spectrogram = featurizer.mel.spectrogram
        if not (spectrogram.center and spectrogram.pad_mode == "reflect" and spectrogram.power == 2.0):
            raise ValueError("DeviceFeaturizer reproduces a centred, reflect-padded power spectrogram only")
        self.window = spectrogram.window.to(device)  # (win_length,) Hann
        self.fb = featurizer.mel.mel_scale.fb.to(device)  # (n_fft // 2 + 1, F)
        self.mean = self.std = None
        if cfg.normalize:
            if featurizer.mean is None or featurizer.std is None:
                raise RuntimeError("normalisation statistics missing: call fit_stats() first")
            self.mean, self.std = featurizer.mean.to(device), featurizer.std.to(device)

    @torch.no_grad()
    def __call__(self, waves: torch.Tensor, feat_lens: torch.Tensor, masks: torch.Tensor | None = None,
                 max_frames: int | None = None) -> torch.Tensor:
        """waves (B, S) centre-padded and zero-padded, feat_lens (B,), masks (B, K, 3) or None, on the device ->
        feats (B, max(feat_lens), F) in float32; frames past an utterance's length are 0, as collate pads them.
        `max_frames` = max(feat_lens), when known on the host (it saves waiting for the device)."""
        if max_frames is None:
            max_frames = int(feat_lens.max())
        with torch.autocast(self.device.type, enabled=False):  # features in float32 whatever the training precision
            spec = torch.stft(waves.float(), self.n_fft, self.hop_length, self.win_length, self.window,
                              center=False, return_complex=True)  # (B, n_fft // 2 + 1, T)
            power = spec[..., :max_frames].abs().pow(2.0)
            feats = torch.log(torch.matmul(power.transpose(1, 2), self.fb) + LOG_FLOOR)  # (B, T, F)
            if self.mean is not None and self.std is not None:
                feats = (feats - self.mean) / self.std
            if masks is not None and masks.numel():
                feats = apply_masks(feats, masks)
            valid = torch.arange(max_frames, device=feats.device)[None, :] < feat_lens.to(feats.device)[:, None]
            return feats.masked_fill(~valid[:, :, None], 0.0).contiguous()

    def batch(self, batch: WaveBatch) -> Batch:
        """The training `Batch`, on the device, of a `WaveBatch` on the host (copied without blocking: pinned
        memory makes that asynchronous)."""
        max_frames = int(batch.feat_lens.max())
        batch = batch.to(self.device, non_blocking=True)
        feats = self(batch.waves, batch.feat_lens, batch.masks, max_frames)
        return Batch(batch.ids, feats, batch.feat_lens, batch.targets, batch.target_lens, batch.texts, batch.failed)
