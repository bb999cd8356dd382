"""Features made on the training device, batched: the loader workers only decode audio (train.features_on).

The workers return waveforms already padded the way a centred STFT pads them (`centre_pad`: each one by its own
reflection), zero-padded to a batch. On the device, the per-utterance `Featurizer`'s own log-mel core (`LogMel`)
runs once over the batch and gives exactly its frames; normalisation with the stored training statistics and the
SpecAugment masks the workers drew (from the same per-utterance RNG as in worker mode) follow, batched.

Shapes: B batch, S samples of the longest padded waveform, T frames, F mel bins, K masks per utterance.

    waves (B, S) -> LogMel (B, T, F) -> (x - mean) / std -> masks -> Batch
"""

from __future__ import annotations

import torch

from asrkit.data.features import Featurizer, apply_masks
from asrkit.data.features import centre_pad as centre_pad  # the loader pads with it; it lives beside LogMel
from asrkit.records import Batch, WaveBatch


class DeviceFeaturizer:
    """Batched `Featurizer` on `device`: (B, S) centre-padded waveforms -> normalised, masked log-mel (B, T, F)."""

    def __init__(self, featurizer: Featurizer, device: torch.device) -> None:
        if featurizer.cfg.normalize and (featurizer.mean is None or featurizer.std is None):
            raise RuntimeError("normalisation statistics missing: call fit_stats() first")
        self.cfg, self.device = featurizer.cfg, device
        self.featurizer = featurizer.to(device)  # its core (window, filterbank) and statistics on the device

    def __call__(self, waves: torch.Tensor, feat_lens: torch.Tensor, masks: torch.Tensor | None = None,
                 max_frames: int | None = None) -> torch.Tensor:
        """waves (B, S) centre-padded and zero-padded, feat_lens (B,), masks (B, K, 3) or None, on the device ->
        feats (B, max(feat_lens), F) in float32; frames past an utterance's length are 0, as collate pads them.
        `max_frames` = max(feat_lens), when known on the host (it saves waiting for the device)."""
        if max_frames is None:
            max_frames = int(feat_lens.max())
        with torch.no_grad(), torch.autocast(self.device.type, enabled=False):  # float32 whatever the precision
            feats = self.featurizer.normalise(self.featurizer.core(waves, max_frames))  # (B, T, F)
            if masks is not None and masks.numel():
                feats = apply_masks(feats, masks, feat_lens)
            valid = torch.arange(max_frames, device=feats.device)[None, :] < feat_lens.to(feats.device)[:, None]
            return feats.masked_fill(~valid[:, :, None], 0.0).contiguous()

    def batch(self, batch: WaveBatch) -> Batch:
        """The training `Batch`, on the device, of a `WaveBatch` on the host (copied without blocking: pinned
        memory makes that asynchronous)."""
        max_frames = int(batch.feat_lens.max())
        batch = batch.to(self.device, non_blocking=True)
        feats = self(batch.waves, batch.feat_lens, batch.masks, max_frames)
        return Batch(batch.ids, feats, batch.feat_lens, batch.targets, batch.target_lens, batch.texts, batch.failed)
