"""Dataset, collate -> Batch (or WaveBatch: waveforms whose features the trainer makes on the device), and the
SortaGrad + duration-bucketed batch sampler."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from asrkit.data.audio import load_utterance
from asrkit.data.augment import perturb_speed, speed_factor
from asrkit.data.device_features import centre_pad
from asrkit.data.features import Featurizer, NoiseSource, draw_masks, spec_augment
from asrkit.data.tokenizer import Tokenizer, describe_unencodable, find_unencodable
from asrkit.errors import AsrkitError, AudioError
from asrkit.records import Batch, Utterance, WaveBatch
from asrkit.stop import quiet_worker


@dataclass
class Item:
    id: str
    feats: torch.Tensor  # (T, F)
    targets: torch.Tensor  # (U,)
    text: str
    error: str = ""  # why the audio could not be loaded; such an item is left out of the batch


@dataclass
class WaveItem:
    """An utterance whose features are made later, on the training device (`DeviceFeaturizer`)."""

    id: str
    wave: torch.Tensor  # (S,) centre-padded for the STFT (device_features.centre_pad)
    frames: int  # feature frames it gives (T)
    masks: torch.Tensor  # (K, 3) SpecAugment masks to apply to its features; K = 0 without augmentation
    targets: torch.Tensor  # (U,)
    text: str
    error: str = ""  # why the audio could not be loaded; such an item is left out of the batch


class SpeechDataset(Dataset[Item | WaveItem]):
    """Utterances -> features (or, with `waveforms`, decoded audio: `WaveItem`) and token ids.

    Augmentation is seeded by (seed, epoch, index): reproducible whatever the number of workers, and the same in
    both modes (noise on the waveform, then the SpecAugment masks, from one RNG). An index may come as
    (epoch, index), as `make_loader` sends it: persistent workers never see a later `set_epoch`."""

    def __init__(self, utts: Sequence[Utterance], featurizer: Featurizer, tokenizer: Tokenizer | None,
                 augment: bool = False, seed: int = 0, manifest: str = "manifest", waveforms: bool = False) -> None:
        self.utts = list(utts)
        self.featurizer = featurizer
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self.waveforms = waveforms
        self.noise = NoiseSource(featurizer.cfg) if augment and featurizer.cfg.noise_prob > 0 else None
        self.targets: list[list[int]] = []
        if tokenizer is not None:
            bad = find_unencodable(tokenizer, self.utts)
            if bad:
                raise AsrkitError(f"{manifest}: characters the tokenizer cannot encode: {describe_unencodable(bad)}; "
                                  "fix the transcripts or retrain the tokenizer on text that has them")
            empty = [u.id for u in self.utts if not u.text.strip()]
            if empty:
                raise AsrkitError(f"{manifest}: empty transcript in {', '.join(empty[:5])}"
                                  f"{' ...' if len(empty) > 5 else ''}; remove these lines or add their text")
            self.targets = [tokenizer.encode(u.text) for u in self.utts]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.utts)

    def __getitem__(self, key: int | tuple[int, int]) -> Item | WaveItem:
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        utt = self.utts[index]
        cfg = self.featurizer.cfg
        targets = torch.tensor(self.targets[index] if self.targets else [], dtype=torch.long)
        try:
            wave = load_utterance(utt, cfg.sample_rate)
        except AudioError as err:
            if self.waveforms:
                return WaveItem(utt.id, torch.zeros(0), 0, torch.zeros(0, 3, dtype=torch.long), targets, utt.text,
                                error=str(err))
            return Item(utt.id, torch.zeros(0, cfg.n_mels), targets, utt.text, error=str(err))
        if self.augment and cfg.speed_perturb:
            wave = perturb_speed(wave, speed_factor(cfg.speed_factors, self.seed, epoch, index))
        rng = random.Random(hash((self.seed, epoch, index)))
        if self.noise is not None:
            wave = self.noise(wave, rng)
        spec_aug = self.augment and cfg.spec_augment
        if self.waveforms:
            frames = self.featurizer.num_frames(len(wave))
            masks = draw_masks(frames, cfg.n_mels, cfg, rng) if spec_aug else torch.zeros(0, 3, dtype=torch.long)
            return WaveItem(utt.id, centre_pad(wave, self.featurizer.n_fft), frames, masks, targets, utt.text)
        feats = self.featurizer(wave)
        if spec_aug:
            feats = spec_augment(feats, cfg, rng)
        return Item(utt.id, feats, targets, utt.text)


def collate(items: Sequence[Item]) -> Batch:
    """Pad to the longest item: feats (B, T, F) with zeros, targets (B, U) with 0 (the blank).

    Items whose audio failed to load are left out and listed in `Batch.failed`; B can then be 0."""
    failed = [(it.id, it.error) for it in items if it.error]
    items = [it for it in items if not it.error]
    if not items:
        empty = torch.zeros(0, dtype=torch.long)
        return Batch([], torch.zeros(0, 0, 0), empty, torch.zeros(0, 1, dtype=torch.long), empty, [], failed)
    feat_lens = torch.tensor([it.feats.shape[0] for it in items], dtype=torch.long)
    target_lens = torch.tensor([len(it.targets) for it in items], dtype=torch.long)
    feats = torch.zeros(len(items), int(feat_lens.max()), items[0].feats.shape[1])
    targets = torch.zeros(len(items), max(int(target_lens.max()), 1), dtype=torch.long)
    for i, it in enumerate(items):
        feats[i, : it.feats.shape[0]] = it.feats
        targets[i, : len(it.targets)] = it.targets
    return Batch([it.id for it in items], feats, feat_lens, targets, target_lens, [it.text for it in items], failed)


def collate_waves(items: Sequence[WaveItem]) -> WaveBatch:
    """Pad the centre-padded waveforms to the longest with zeros: waves (B, S), masks (B, K, 3), targets (B, U).

    Items whose audio failed to load are left out and listed in `WaveBatch.failed`; B can then be 0."""
    failed = [(it.id, it.error) for it in items if it.error]
    items = [it for it in items if not it.error]
    long = torch.long
    if not items:
        empty = torch.zeros(0, dtype=long)
        return WaveBatch([], torch.zeros(0, 0), empty, torch.zeros(0, 0, 3, dtype=long),
                         torch.zeros(0, 1, dtype=long), empty, [], failed)
    target_lens = torch.tensor([len(it.targets) for it in items], dtype=long)
    waves = torch.zeros(len(items), max(len(it.wave) for it in items))
    masks = torch.zeros(len(items), max(len(it.masks) for it in items), 3, dtype=long)  # width 0: no mask
    targets = torch.zeros(len(items), max(int(target_lens.max()), 1), dtype=long)
    for i, it in enumerate(items):
        waves[i, : len(it.wave)] = it.wave
        masks[i, : len(it.masks)] = it.masks
        targets[i, : len(it.targets)] = it.targets
    feat_lens = torch.tensor([it.frames for it in items], dtype=long)
    return WaveBatch([it.id for it in items], waves, feat_lens, masks, targets, target_lens, [it.text for it in items],
                     failed)


class DurationBatchSampler(Sampler[list[int]]):
    """Batches of similar duration with at most `batch_seconds` of padded audio and `max_batch_size` items.

    SortaGrad (DeepSpeech2): epoch 0 runs in order of increasing duration; later epochs shuffle the
    batches (durations are jittered by +-10% before bucketing so batch membership varies too). With
    `world_size` > 1 each rank takes every world_size-th batch and all ranks get the same count. The
    position inside an epoch is part of `state_dict()`, so a resumed run continues with the next batch.
    With `speed_factors`, each epoch buckets the durations the dataset's speed perturbation gives (the same
    factor per (seed, epoch, index) as `SpeechDataset`; pass the dataset's seed as `speed_seed`).
    """

    def __init__(self, durations: Sequence[float], batch_seconds: float, max_batch_size: int, *,
                 shuffle: bool = True, sortagrad: bool = True, seed: int = 0, rank: int = 0,
                 world_size: int = 1, speed_factors: Sequence[float] = (), speed_seed: int = 0) -> None:
        if batch_seconds <= 0 or max_batch_size < 1:
            raise AsrkitError("train.batch_seconds must be > 0 and train.max_batch_size >= 1")
        self.durations = list(durations)
        self.batch_seconds = batch_seconds
        self.max_batch_size = max_batch_size
        self.shuffle, self.sortagrad, self.seed = shuffle, sortagrad, seed
        self.rank, self.world_size = rank, world_size
        self.speed_factors, self.speed_seed = tuple(speed_factors), speed_seed
        self.epoch = 0
        self.start = 0  # batches of this epoch already consumed

    def epoch_durations(self, epoch: int) -> list[float]:
        """Each utterance's duration in `epoch`, after speed perturbation."""
        if not self.speed_factors:
            return self.durations
        return [d / speed_factor(self.speed_factors, self.speed_seed, epoch, i) for i, d in enumerate(self.durations)]

    def batches(self, epoch: int) -> list[list[int]]:
        rng = random.Random(self.seed * 100003 + epoch)
        in_order = not self.shuffle or (self.sortagrad and epoch == 0)
        durations = self.epoch_durations(epoch)
        keys = durations if in_order else [d * rng.uniform(0.9, 1.1) for d in durations]
        order = sorted(range(len(durations)), key=lambda i: (keys[i], i))
        batches: list[list[int]] = []
        current: list[int] = []
        longest = 0.0
        for i in order:
            longest_if = max(longest, durations[i])
            full = len(current) >= self.max_batch_size or longest_if * (len(current) + 1) > self.batch_seconds
            if current and full:
                batches.append(current)
                current, longest_if = [], durations[i]
            current.append(i)
            longest = longest_if
        if current:
            batches.append(current)
        if not in_order:
            rng.shuffle(batches)
        per_rank = len(batches) // self.world_size if self.world_size > 1 else len(batches)
        return batches[self.rank :: self.world_size][:per_rank]

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.batches(self.epoch)[self.start :]

    def __len__(self) -> int:
        return len(self.batches(self.epoch)) - self.start

    def padding_fraction(self, epoch: int = 0) -> float:
        """Fraction of padded (wasted) audio seconds over an epoch's batches."""
        total = padded = 0.0
        durations = self.epoch_durations(epoch)
        for batch in self.batches(epoch):
            longest = max(durations[i] for i in batch)
            total += longest * len(batch)
            padded += longest * len(batch) - sum(durations[i] for i in batch)
        return padded / total if total else 0.0

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "start": self.start, "seed": self.seed}


class _EpochKeys(Sampler[list[tuple[int, int]]]):
    """The sampler's batches as (epoch, index) keys: the epoch that seeds augmentation travels with every index,
    so persistent workers (whose copy of the dataset never sees `set_epoch`) augment like fresh ones."""

    def __init__(self, sampler: DurationBatchSampler) -> None:
        self.sampler = sampler

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch = self.sampler.epoch
        for batch in self.sampler:
            yield [(epoch, i) for i in batch]

    def __len__(self) -> int:
        return len(self.sampler)


def make_loader(dataset: SpeechDataset, sampler: DurationBatchSampler, num_workers: int, pin_memory: bool = False,
                persistent_workers: bool = False) -> DataLoader[Any]:
    """Batches (`Batch`, or `WaveBatch` for a dataset of waveforms). Iterate it once per epoch, after
    `sampler.set_epoch`. `pin_memory`: page-locked batches, for non-blocking copies to a GPU; `persistent_workers`:
    the worker processes live on from one epoch (one `iter()`) to the next."""
    # A generator of its own: each iter() draws a seed from it, not from torch's global RNG, so a resumed run
    # (which opens one more iterator, over the rest of its epoch) draws the same dropout masks as an uninterrupted one.
    return DataLoader(dataset, batch_sampler=_EpochKeys(sampler),  # type: ignore[arg-type]
                      generator=torch.Generator().manual_seed(dataset.seed),
                      collate_fn=collate_waves if dataset.waveforms else collate,  # type: ignore[arg-type]
                      num_workers=num_workers, pin_memory=pin_memory, worker_init_fn=quiet_worker,
                      persistent_workers=persistent_workers and num_workers > 0,
                      prefetch_factor=2 if num_workers > 0 else None)
