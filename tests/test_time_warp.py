"""SpecAugment time warping (features.time_warp): the warp point moves where drawn, the ends and the length stay,
padding and utterances without a warp are untouched, both feature modes agree, and time_warp = 0 draws exactly the
masks it drew before the option existed."""

from __future__ import annotations

import random

import pytest
import torch
from test_device_features import CPU, wave_batch

from asrkit.config import FeatureConfig, build_config
from asrkit.data.device_features import DeviceFeaturizer
from asrkit.data.features import Featurizer, apply_masks, draw_masks, spec_augment, time_warp
from asrkit.errors import AsrkitError
from asrkit.experiment import check_train_config

NO_MASKS = {"freq_masks": 0, "time_masks": 0}


def test_the_warp_point_lands_where_drawn_and_the_ends_stay() -> None:
    n, t = 50, 64  # one utterance of 50 frames padded to 64, one of 64 without a warp
    ramp = torch.arange(t, dtype=torch.float32)[None, :, None].repeat(2, 1, 3)  # feats[b, i] = i
    masks = torch.tensor([[[2, 20, 26]], [[0, 0, 0]]])  # frame 20 -> 26 in the first; a no-op row in the second
    out = time_warp(ramp, masks, torch.tensor([n, t]))
    first = out[0, :, 0]
    assert first[26] == pytest.approx(20.0) and first[0] == 0 and first[n - 1] == pytest.approx(n - 1)
    assert bool((first[1:n] >= first[: n - 1]).all())  # a monotone resampling: nothing reordered
    assert first[13] == pytest.approx(10.0)  # the left side stretched by 26 / 20
    assert torch.equal(out[0, n:], ramp[0, n:])  # padding untouched
    assert torch.equal(out[1], ramp[1])  # no warp row: unchanged


def test_draws_stay_within_bounds_and_short_utterances_get_none() -> None:
    cfg = FeatureConfig(time_warp=5, **NO_MASKS)
    for seed in range(200):
        n = random.Random(seed).randint(12, 80)  # 2 W + 2 frames or more
        rows = draw_masks(n, 40, cfg, random.Random(seed))
        ((axis, c, d),) = rows.tolist()
        assert axis == 2 and 5 <= c < n - 5 and abs(d - c) <= 5 and 0 < d < n - 1
    assert draw_masks(11, 40, cfg, random.Random(0)).shape == (0, 3)  # 11 < 2 W + 2


def test_time_warp_zero_draws_what_it_drew_before() -> None:
    old, new = FeatureConfig(), FeatureConfig(time_warp=4)
    for seed in range(20):
        before = draw_masks(300, 80, old, random.Random(seed))
        after = draw_masks(300, 80, new, random.Random(seed))
        assert (before[:, 0] != 2).all() and torch.equal(after[:-1], before) and after[-1, 0] == 2


def test_device_mode_warps_like_worker_mode() -> None:
    cfg = FeatureConfig(n_mels=40, time_warp=6, time_mask_ratio=0.3)
    featurizer = Featurizer(cfg)
    gen = torch.Generator().manual_seed(3)
    waves = [0.1 * torch.randn(n, generator=gen) for n in (4000, 9000, 1500)]  # the last: too short to warp
    featurizer.fit_stats(waves)
    lens = [featurizer.num_frames(len(w)) for w in waves]
    masks = [draw_masks(n, 40, cfg, random.Random(i)) for i, n in enumerate(lens)]
    assert [int((m[:, 0] == 2).sum()) for m in masks] == [1, 1, 0]
    padded = torch.zeros(3, max(len(m) for m in masks), 3, dtype=torch.long)  # as collate pads them
    for i, m in enumerate(masks):
        padded[i, : len(m)] = m
    feats = DeviceFeaturizer(featurizer, CPU)(wave_batch(waves, featurizer.n_fft), torch.tensor(lens), padded)
    for i, wave in enumerate(waves):
        ref = spec_augment(featurizer(wave), cfg, random.Random(i))
        torch.testing.assert_close(feats[i, : lens[i]], ref, rtol=1e-5, atol=1e-5)
    plain = apply_masks(feats, torch.zeros(3, 0, 3, dtype=torch.long))
    assert torch.equal(plain, feats)


def test_a_negative_width_is_an_error() -> None:
    with pytest.raises(AsrkitError, match=r"features.time_warp = -1: must be 0 \(off\) or more"):
        check_train_config(build_config({"features": {"time_warp": -1}}))
