"""Dataset, collate -> Batch, and the SortaGrad + duration-bucketed batch sampler."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from asrkit.config import FeatureConfig
from asrkit.data.features import Featurizer
from asrkit.data.loader import DurationBatchSampler, Item, SpeechDataset, WaveItem, collate, make_loader
from asrkit.data.tokenizer import CharTokenizer
from asrkit.errors import AsrkitError
from asrkit.records import Batch, Utterance

SR = 16000


def random_durations(n: int, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    return [round(rng.uniform(0.5, 15.0), 3) for _ in range(n)]


def flat(batches: list[list[int]]) -> list[int]:
    return [i for b in batches for i in b]


# --- collate --------------------------------------------------------------------------------------------


def test_collate_shapes_and_padding() -> None:
    items = [
        Item("a", torch.full((5, 3), 1.0), torch.tensor([1, 2]), "ab"),
        Item("b", torch.full((8, 3), 2.0), torch.tensor([3, 4, 5, 6]), "cdef"),
        Item("c", torch.full((2, 3), 3.0), torch.tensor([7]), "g"),
    ]
    batch = collate(items)
    assert isinstance(batch, Batch)
    assert batch.ids == ["a", "b", "c"]
    assert batch.texts == ["ab", "cdef", "g"]
    assert batch.feats.shape == (3, 8, 3)
    assert batch.feats.dtype == torch.float32
    assert batch.feat_lens.tolist() == [5, 8, 2]
    assert batch.targets.shape == (3, 4)
    assert batch.targets.dtype == torch.long
    assert batch.target_lens.tolist() == [2, 4, 1]
    assert (batch.feats[0, :5] == 1).all() and (batch.feats[0, 5:] == 0).all()
    assert (batch.feats[1] == 2).all()
    assert (batch.feats[2, :2] == 3).all() and (batch.feats[2, 2:] == 0).all()
    assert batch.targets.tolist() == [[1, 2, 0, 0], [3, 4, 5, 6], [7, 0, 0, 0]]


def test_collate_without_targets() -> None:
    batch = collate([Item("a", torch.ones(4, 2), torch.zeros(0, dtype=torch.long), "")])
    assert batch.targets.shape == (1, 1)
    assert batch.target_lens.tolist() == [0]


def test_batch_to_device_keeps_fields() -> None:
    batch = collate([Item("a", torch.ones(4, 2), torch.tensor([1]), "x")])
    moved = batch.to("cpu")
    assert moved.ids == ["a"] and torch.equal(moved.feats, batch.feats)


# --- DurationBatchSampler -------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(durations=st.lists(st.floats(min_value=0.1, max_value=30.0), min_size=1, max_size=120),
       batch_seconds=st.floats(min_value=5.0, max_value=200.0), max_batch_size=st.integers(1, 16),
       seed=st.integers(0, 1000), epoch=st.integers(0, 4), sortagrad=st.booleans())
def test_sampler_invariants(durations: list[float], batch_seconds: float, max_batch_size: int, seed: int,
                            epoch: int, sortagrad: bool) -> None:
    sampler = DurationBatchSampler(durations, batch_seconds, max_batch_size, seed=seed, sortagrad=sortagrad)
    batches = sampler.batches(epoch)
    # every index exactly once
    assert sorted(flat(batches)) == list(range(len(durations)))
    for batch in batches:
        assert 1 <= len(batch) <= max_batch_size
        longest = max(durations[i] for i in batch)
        if len(batch) > 1:
            assert longest * len(batch) <= batch_seconds + 1e-9
        # a single utterance may be over-long: it is never dropped
    frac = sampler.padding_fraction(epoch)
    assert 0.0 <= frac < 1.0


def test_epoch_zero_sortagrad_is_increasing_duration() -> None:
    durations = random_durations(200)
    sampler = DurationBatchSampler(durations, 60.0, 8, seed=3)
    order = flat(sampler.batches(0))
    assert [durations[i] for i in order] == sorted(durations)
    assert flat(list(sampler)) == order  # __iter__ follows the epoch set (0)


def test_later_epochs_differ_but_are_deterministic() -> None:
    durations = random_durations(200)
    a = DurationBatchSampler(durations, 60.0, 8, seed=3)
    b = DurationBatchSampler(durations, 60.0, 8, seed=3)
    epoch0 = a.batches(0)
    for epoch in (1, 2, 5):
        assert a.batches(epoch) != epoch0
        assert a.batches(epoch) == b.batches(epoch)
        b.set_epoch(epoch)
        assert list(b) == a.batches(epoch)
    assert a.batches(1) != a.batches(2)
    c = DurationBatchSampler(durations, 60.0, 8, seed=4)
    assert c.batches(1) != a.batches(1)
    assert c.batches(0) == a.batches(0)  # sortagrad order does not depend on the seed


def test_later_epoch_batches_still_group_similar_durations() -> None:
    durations = random_durations(300, seed=1)
    sampler = DurationBatchSampler(durations, 80.0, 16, seed=0)
    # bucketing keeps padding low even after shuffling (random batches would waste far more)
    assert sampler.padding_fraction(1) < 0.25


def test_no_sortagrad_shuffles_epoch_zero() -> None:
    durations = random_durations(100)
    sampler = DurationBatchSampler(durations, 60.0, 8, sortagrad=False, seed=1)
    assert [durations[i] for i in flat(sampler.batches(0))] != sorted(durations)


def test_no_shuffle_is_always_in_order() -> None:
    durations = random_durations(100)
    sampler = DurationBatchSampler(durations, 60.0, 8, shuffle=False)
    assert sampler.batches(0) == sampler.batches(3)
    assert [durations[i] for i in flat(sampler.batches(3))] == sorted(durations)


def test_batch_cap_and_over_long_utterance() -> None:
    durations = [1.0] * 10 + [50.0]
    sampler = DurationBatchSampler(durations, 10.0, 32, shuffle=False)
    batches = sampler.batches(0)
    assert batches[-1] == [10]  # over-long utterance alone in its batch
    for batch in batches[:-1]:
        assert max(durations[i] for i in batch) * len(batch) <= 10.0
    assert [len(b) for b in batches] == [10, 1]


def test_max_batch_size_honoured() -> None:
    durations = [0.1] * 50
    sampler = DurationBatchSampler(durations, 1000.0, 7, shuffle=False)
    sizes = [len(b) for b in sampler.batches(0)]
    assert sizes == [7] * 7 + [1]


def test_bad_arguments() -> None:
    with pytest.raises(AsrkitError, match="batch_seconds"):
        DurationBatchSampler([1.0], 0.0, 4)
    with pytest.raises(AsrkitError, match="max_batch_size"):
        DurationBatchSampler([1.0], 10.0, 0)


@pytest.mark.parametrize("epoch", [0, 1, 3])
@pytest.mark.parametrize("start", [0, 1, 5])
def test_set_epoch_resumes_with_remaining_batches(epoch: int, start: int) -> None:
    durations = random_durations(120)
    sampler = DurationBatchSampler(durations, 40.0, 8, seed=9)
    full = sampler.batches(epoch)
    resumed = DurationBatchSampler(durations, 40.0, 8, seed=9)
    resumed.set_epoch(epoch, start)
    assert list(resumed) == full[start:]
    assert len(resumed) == len(full) - start
    assert resumed.state_dict() == {"epoch": epoch, "start": start, "seed": 9}
    # the batches already consumed plus the resumed ones make the whole epoch
    assert full[:start] + list(resumed) == full


def test_state_dict_round_trip() -> None:
    sampler = DurationBatchSampler(random_durations(50), 40.0, 8, seed=2)
    sampler.set_epoch(2, 3)
    state = sampler.state_dict()
    other = DurationBatchSampler(random_durations(50), 40.0, 8, seed=state["seed"])
    other.set_epoch(state["epoch"], state["start"])
    assert list(other) == list(sampler)


@pytest.mark.parametrize("epoch", [0, 1, 2])
def test_world_size_two_disjoint_equal_count(epoch: int) -> None:
    durations = random_durations(137, seed=5)
    ranks = [DurationBatchSampler(durations, 30.0, 8, seed=1, rank=r, world_size=2) for r in range(2)]
    single = DurationBatchSampler(durations, 30.0, 8, seed=1).batches(epoch)
    parts = [r.batches(epoch) for r in ranks]
    assert len(parts[0]) == len(parts[1]) == len(single) // 2
    seen0, seen1 = set(flat(parts[0])), set(flat(parts[1]))
    assert not seen0 & seen1
    assert len(flat(parts[0])) == len(seen0)  # no index twice within a rank
    # each rank's batches are batches of the single-process epoch
    for part in parts:
        for batch in part:
            assert batch in single
    for r in ranks:
        r.set_epoch(epoch)
    assert len(ranks[0]) == len(ranks[1])


def test_padding_fraction_examples() -> None:
    assert DurationBatchSampler([2.0, 2.0], 100.0, 8, shuffle=False).padding_fraction() == 0.0
    frac = DurationBatchSampler([1.0, 3.0], 100.0, 8, shuffle=False).padding_fraction()
    assert frac == pytest.approx(2.0 / 6.0)


# --- SpeechDataset --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[Utterance]:
    folder = tmp_path_factory.mktemp("wavs")
    rng = np.random.default_rng(0)
    utts = []
    for i, (seconds, text) in enumerate([(0.5, "one"), (0.8, "two three"), (0.3, "four")]):
        path = folder / f"u{i}.wav"
        sf.write(path, (0.1 * rng.standard_normal(int(seconds * SR))).astype(np.float32), SR)
        utts.append(Utterance(f"u{i}", str(path), seconds, text))
    return utts


def featurizer(**kw: object) -> Featurizer:
    return Featurizer(FeatureConfig(n_mels=40, normalize=False, **kw))  # type: ignore[arg-type]


def test_dataset_items(corpus: list[Utterance]) -> None:
    tok = CharTokenizer.train(u.text for u in corpus)
    feat = featurizer()
    ds = SpeechDataset(corpus, feat, tok)
    assert len(ds) == 3
    item = ds[1]
    assert item.id == "u1" and item.text == "two three"
    assert item.feats.shape == (feat.num_frames(int(0.8 * SR)), 40)
    assert tok.decode(item.targets.tolist()) == "two three"
    batch = collate([ds[i] for i in range(3)])
    assert batch.feats.shape == (3, feat.num_frames(int(0.8 * SR)), 40)


def test_dataset_without_tokenizer_has_empty_targets(corpus: list[Utterance]) -> None:
    ds = SpeechDataset(corpus, featurizer(), None)
    assert ds[0].targets.numel() == 0


def test_dataset_through_data_loader(corpus: list[Utterance]) -> None:
    tok = CharTokenizer.train(u.text for u in corpus)
    ds = SpeechDataset(corpus, featurizer(), tok)
    sampler = DurationBatchSampler([u.duration for u in corpus], 10.0, 2, seed=0)
    batches = list(make_loader(ds, sampler, num_workers=0))
    assert sorted(i for b in batches for i in b.ids) == ["u0", "u1", "u2"]
    assert batches[0].ids == ["u2", "u0"]  # sortagrad: shortest first


def test_unencodable_characters_name_utterances(corpus: list[Utterance]) -> None:
    tok = CharTokenizer.train(["one two three four"])
    utts = [*corpus, Utterance("bad1", corpus[0].audio_filepath, 0.5, "café"),
            Utterance("bad2", corpus[0].audio_filepath, 0.5, "éclair")]
    with pytest.raises(AsrkitError) as info:
        SpeechDataset(utts, featurizer(), tok, manifest="data/train.jsonl")
    msg = str(info.value)
    assert "data/train.jsonl" in msg
    assert "'é' in bad1, bad2" in msg
    assert "u0" not in msg and "u1" not in msg  # only the offending utterances are named


@pytest.mark.parametrize("text", ["", "   "])
def test_empty_transcript_names_utterance(corpus: list[Utterance], text: str) -> None:
    tok = CharTokenizer.train(["one two three four"])
    utts = [*corpus, Utterance("silent7", corpus[0].audio_filepath, 0.5, text)]
    with pytest.raises(AsrkitError, match="empty transcript in silent7"):
        SpeechDataset(utts, featurizer(), tok)


def test_augmentation_is_deterministic_per_seed_epoch_index(corpus: list[Utterance]) -> None:
    tok = CharTokenizer.train(u.text for u in corpus)
    feat = featurizer(noise_prob=0.5, time_mask_ratio=0.3)

    def make(seed: int) -> SpeechDataset:
        return SpeechDataset(corpus, feat, tok, augment=True, seed=seed)

    a, b = make(1), make(1)
    for epoch in (0, 1):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        for i in range(3):
            assert torch.equal(a[i].feats, b[i].feats)
            assert torch.equal(a[i].feats, a[i].feats)  # same item twice: same augmentation
    a.set_epoch(0)
    e0 = [a[i].feats for i in range(3)]
    a.set_epoch(1)
    e1 = [a[i].feats for i in range(3)]
    assert any(not torch.equal(x, y) for x, y in zip(e0, e1, strict=True))
    c = make(2)
    c.set_epoch(1)
    assert any(not torch.equal(c[i].feats, e1[i]) for i in range(3))
    # without augmentation the features are the plain ones
    plain = SpeechDataset(corpus, feat, tok, augment=False)
    assert torch.equal(plain[0].feats, feat(plain_wave(corpus[0])))


def plain_wave(utt: Utterance) -> torch.Tensor:
    from asrkit.data.audio import load_audio

    return load_audio(Path(utt.audio_filepath), SR)


@pytest.mark.parametrize("waveforms", [False, True])
def test_persistent_workers_augment_each_epoch_like_the_main_process(corpus: list[Utterance], waveforms: bool) -> None:
    """A persistent worker keeps the dataset it started with (set_epoch never reaches it): the epoch travels
    with the indices, so epoch 1 is augmented as epoch 1, as in the main process."""
    tok = CharTokenizer.train(u.text for u in corpus)
    ds = SpeechDataset(corpus, featurizer(noise_prob=1.0, time_mask_ratio=0.3), tok, augment=True, seed=4,
                       waveforms=waveforms)
    sampler = DurationBatchSampler([u.duration for u in corpus], 10.0, 2, seed=0)
    persistent = make_loader(ds, sampler, num_workers=1, persistent_workers=True)
    plain = make_loader(ds, sampler, num_workers=0)
    seen = []
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        ds.set_epoch(epoch)
        got, ref = list(persistent), list(plain)
        assert [b.ids for b in got] == [b.ids for b in ref]
        for a, b in zip(got, ref, strict=True):
            data_a, data_b = (a.waves, b.waves) if waveforms else (a.feats, b.feats)
            assert torch.equal(data_a, data_b)
        seen.append(got)
    first = {i: t for b in seen[0] for i, t in zip(b.ids, b.waves if waveforms else b.feats, strict=True)}
    second = {i: t for b in seen[1] for i, t in zip(b.ids, b.waves if waveforms else b.feats, strict=True)}
    assert any(not torch.equal(first[i], second[i]) for i in first)  # a new epoch, new noise


def test_waveform_items_carry_frames_and_masks(corpus: list[Utterance]) -> None:
    feat = featurizer(time_mask_ratio=0.3)
    ds = SpeechDataset(corpus, feat, None, augment=True, waveforms=True)
    item = ds[1]
    n = int(0.8 * SR)
    assert isinstance(item, WaveItem) and item.frames == feat.num_frames(n)
    assert item.wave.shape == (n + feat.n_fft,)  # reflected by n_fft // 2 at both ends
    assert item.masks.shape == (feat.cfg.freq_masks + feat.cfg.time_masks, 3)
    assert SpeechDataset(corpus, feat, None, waveforms=True)[1].masks.shape == (0, 3)  # no augmentation
