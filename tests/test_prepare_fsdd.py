"""`asrkit.prepare.fsdd` on the embedded FSDD subset (tests/assets/fsdd) and, if present, the full corpus."""

from __future__ import annotations

import random
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from conftest import FSDD_ASSETS

from asrkit.data.manifest import read_manifest
from asrkit.errors import AsrkitError
from asrkit.prepare import fsdd
from asrkit.records import Utterance

ASSETS = FSDD_ASSETS.parent  # the folder holding recordings/
SPEAKERS = {"jackson", "lucas", "nicolas", "theo"}


def parse(utt_id: str) -> tuple[str, int, int]:
    """fsdd-{speaker}-{digit}-{index} -> (speaker, digit, index)."""
    _, speaker, digit, index = utt_id.split("-")
    return speaker, int(digit), int(index)


def assert_manifest(path: Path, utts: list[Utterance]) -> None:
    """The manifest on disk holds `utts` (durations are rounded to 0.1 ms there)."""
    got = read_manifest(path)
    assert [(u.id, u.audio_filepath, u.text, u.speaker, u.extra) for u in got] == \
        [(u.id, u.audio_filepath, u.text, u.speaker, u.extra) for u in utts]
    assert [u.duration for u in got] == pytest.approx([u.duration for u in utts], abs=1e-4)


def test_official_split(tmp_path: Path) -> None:
    result = fsdd.prepare(ASSETS, tmp_path / "out")
    assert result.skipped == [] and list(result.splits) == ["train", "dev", "test"]
    indices = {name: {parse(u.id)[2] for u in utts} for name, utts in result.splits.items()}
    assert indices == {"train": set(range(10, 18)), "dev": {5, 6}, "test": {0, 1}}
    assert {k: len(v) for k, v in result.splits.items()} == {"train": 320, "dev": 80, "test": 80}
    for name in ("train", "dev", "test"):
        assert_manifest(tmp_path / "out" / f"{name}.jsonl", result.splits[name])
    for u in result.splits["test"]:
        speaker, digit, index = parse(u.id)
        assert u.text == fsdd.WORDS[digit] and u.speaker == speaker
        assert Path(u.audio_filepath) == (FSDD_ASSETS / f"{digit}_{speaker}_{index}.wav").resolve()
        assert u.duration == pytest.approx(sf.info(u.audio_filepath).duration, abs=1e-6)
    assert {u.speaker for u in result.splits["train"]} == SPEAKERS


def test_dev_speakers_are_disjoint_from_train(tmp_path: Path) -> None:
    result = fsdd.prepare(FSDD_ASSETS, tmp_path / "out", dev_speakers=["theo", "lucas"])  # the recordings folder
    speakers = {name: {u.speaker for u in utts} for name, utts in result.splits.items()}
    assert speakers["dev"] == {"theo", "lucas"} and speakers["train"] == {"jackson", "nicolas"}
    assert speakers["test"] == SPEAKERS  # the official test split keeps every speaker
    assert {parse(u.id)[2] for u in result.splits["dev"]} == {5, 6} | set(range(10, 18))


def test_speaker_split(tmp_path: Path) -> None:
    result = fsdd.prepare(ASSETS, tmp_path / "out", split="speaker", test_speakers=["nicolas"],
                          dev_speakers=["theo"])
    speakers = {name: {u.speaker for u in utts} for name, utts in result.splits.items()}
    assert speakers == {"train": {"jackson", "lucas"}, "dev": {"theo"}, "test": {"nicolas"}}
    assert len(result.splits["test"]) == 120  # every recording of nicolas, indices 0-1 included
    carved = fsdd.prepare(ASSETS, tmp_path / "carved", split="speaker", test_speakers=["nicolas"])
    assert {parse(u.id)[2] for u in carved.splits["dev"]} == {5, 6}
    assert {parse(u.id)[2] for u in carved.splits["train"]} == {0, 1} | set(range(10, 18))


@pytest.mark.parametrize("kwargs,message", [
    ({"split": "speaker"}, "split 'speaker' needs test_speakers"),
    ({"split": "speaker", "test_speakers": ["bob"]}, "unknown speaker(s) bob; speakers present: jackson, lucas"),
    ({"dev_speakers": ["alice", "theo"]}, "dev_speakers: unknown speaker(s) alice"),
    ({"test_speakers": ["theo"]}, "only used with split 'speaker'"),
    ({"split": "speaker", "test_speakers": ["theo"], "dev_speakers": ["theo"]}, "in both dev_speakers"),
    ({"split": "speaker", "test_speakers": ["theo", "lucas"], "dev_speakers": ["jackson", "nicolas"]},
     "no training recordings left"),
    ({"split": "random"}, "split 'random' is not one of official, speaker"),
    ({"min_digits": 4, "max_digits": 2}, "min_digits 4 / max_digits 2"),
])
def test_bad_options(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(AsrkitError) as err:
        fsdd.prepare(ASSETS, tmp_path / "out", **kwargs)
    assert message in str(err.value)
    assert not (tmp_path / "out" / "train.jsonl").exists()


def test_wrong_layout_says_what_is_expected(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    (corpus / "wav").mkdir(parents=True)
    (corpus / "notes.txt").write_text("not fsdd")
    with pytest.raises(AsrkitError) as err:
        fsdd.prepare(corpus, tmp_path / "out")
    text = str(err.value)
    assert str(corpus) in text and "recordings/{digit}_{speaker}_{index}.wav" in text
    assert "give the folder holding recordings/" in text
    with pytest.raises(AsrkitError, match="FSDD folder not found"):
        fsdd.prepare(tmp_path / "absent", tmp_path / "out")


def test_odd_files_are_skipped_not_lost(tmp_path: Path) -> None:
    recordings = tmp_path / "fsdd" / "recordings"
    recordings.mkdir(parents=True)
    for name in ("3_theo_0.wav", "3_theo_6.wav", "4_theo_20.wav", "5_lucas_12.wav"):
        shutil.copy(FSDD_ASSETS / name.replace("_20", "_12"), recordings / name)
    (recordings / "README.txt").write_text("hello")
    (recordings / "x_theo_1.wav").write_bytes(b"odd name")
    (recordings / "6_theo_30.wav").write_bytes(b"not a wav file at all")
    (recordings / ".DS_Store").write_bytes(b"ignored")
    result = fsdd.prepare(tmp_path / "fsdd", tmp_path / "out")
    kept = [u for utts in result.splits.values() for u in utts]
    assert len(kept) + len(result.skipped) == 7
    reasons = {Path(s.path).name: s.reason for s in result.skipped}
    assert set(reasons) == {"README.txt", "x_theo_1.wav", "6_theo_30.wav"}
    assert "does not match {digit}_{speaker}_{index}.wav" in reasons["x_theo_1.wav"]
    assert "cannot read audio" in reasons["6_theo_30.wav"]
    assert (tmp_path / "out" / "skipped.tsv").read_text().count("\n") == 4


@pytest.fixture(scope="module")
def connected(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("connected")
    result = fsdd.prepare(ASSETS, out, connected=True, passes=2, min_digits=2, max_digits=4, seed=3)
    return out, result.splits


def test_connected_uses_each_recording_passes_times(connected: tuple[Path, dict]) -> None:
    _, splits = connected
    isolated = fsdd.assign_splits(fsdd.find_recordings(ASSETS)[0], "official", (), ())
    for name, utts in splits.items():
        used = Counter(src for u in utts for src in u.extra["sources"])
        assert used == Counter({r.utt_id: 2 for r in isolated[name]})
        for u in utts:
            assert u.id.startswith(f"fsdd-{u.speaker}-{name}-")
            assert {parse(src)[0] for src in u.extra["sources"]} == {u.speaker}  # never mixes speakers
            assert 1 <= len(u.extra["sources"]) <= 4
        sizes = [len(u.extra["sources"]) for u in utts]
        assert sum(2 <= s <= 4 for s in sizes) >= len(sizes) - 2 * 4  # only a speaker's last group per pass


def test_connected_text_and_audio_match_sources(connected: tuple[Path, dict]) -> None:
    out, splits = connected
    assert_manifest(out / "test.jsonl", splits["test"])
    for u in splits["train"][:6] + splits["test"][:6]:
        sources = u.extra["sources"]
        assert u.text == " ".join(fsdd.WORDS[parse(s)[1]] for s in sources)
        assert Path(u.audio_filepath) == out / "audio" / ("train" if "-train-" in u.id else "test") / f"{u.id}.wav"
        info = sf.info(u.audio_filepath)
        assert (info.samplerate, info.subtype, info.channels) == (8000, "PCM_16", 1)
        assert u.duration == pytest.approx(info.frames / 8000, abs=1e-9)
        audio, _ = sf.read(u.audio_filepath, dtype="int16")
        assert_concatenation(audio, [sf.read(FSDD_ASSETS / source_name(s), dtype="int16")[0] for s in sources])


def source_name(utt_id: str) -> str:
    speaker, digit, index = parse(utt_id)
    return f"{digit}_{speaker}_{index}.wav"


def assert_concatenation(audio: np.ndarray, parts: list[np.ndarray]) -> None:
    """`audio` = 100 ms zeros, parts separated by 100-300 ms zeros, 100 ms zeros (all at 8 kHz)."""
    assert not audio[:800].any() and not audio[-800:].any()
    pos = 800
    for i, part in enumerate(parts):
        if i > 0:
            gap = next(g for g in range(800, 2401) if np.array_equal(audio[pos + g:pos + g + len(part)], part))
            assert not audio[pos:pos + gap].any()
            pos += gap
        assert np.array_equal(audio[pos:pos + len(part)], part)
        pos += len(part)
    assert pos + 800 == len(audio)


def test_connected_is_deterministic_and_resumable(tmp_path: Path) -> None:
    corpus = tmp_path / "small" / "recordings"
    corpus.mkdir(parents=True)
    for path in random.Random(0).sample(sorted(FSDD_ASSETS.glob("*_jackson_*.wav")), 30):
        shutil.copy(path, corpus)
    options: dict[str, Any] = {"connected": True, "seed": 5, "min_digits": 2, "max_digits": 5}
    first = fsdd.prepare(corpus, tmp_path / "a", **options)
    second = fsdd.prepare(corpus, tmp_path / "b", **options)
    other = fsdd.prepare(corpus, tmp_path / "c", **{**options, "seed": 6})

    def key(splits: dict) -> list:
        return [(u.id, u.text, u.duration, u.extra["sources"]) for utts in splits.values() for u in utts]

    assert key(first.splits) == key(second.splits) and key(first.splits) != key(other.splits)
    wavs = sorted((tmp_path / "a" / "audio").rglob("*.wav"))
    assert len(wavs) == sum(len(v) for v in first.splits.values())
    for wav in wavs:
        assert wav.read_bytes() == (tmp_path / "b" / wav.relative_to(tmp_path / "a")).read_bytes()

    stamps = {wav: wav.stat().st_mtime_ns for wav in wavs}
    damaged = wavs[0]
    sf.write(str(damaged), np.zeros(100, dtype=np.int16), 8000)  # an interrupted write: wrong length
    stamps[damaged] = damaged.stat().st_mtime_ns
    again = fsdd.prepare(corpus, tmp_path / "a", **options)
    assert key(again.splits) == key(first.splits)
    changed = [wav for wav in wavs if wav.stat().st_mtime_ns != stamps[wav]]
    assert changed == [damaged]
    assert damaged.read_bytes() == (tmp_path / "b" / damaged.relative_to(tmp_path / "a")).read_bytes()
    assert not list((tmp_path / "a" / "audio").rglob("*.partial.wav"))


def test_group_sizes_cover_every_recording() -> None:
    rng = random.Random(0)
    for n in range(1, 60):
        for lo, hi in ((1, 1), (2, 2), (2, 5), (3, 4), (4, 9)):
            sizes = fsdd.group_sizes(n, rng, lo, hi)
            assert sum(sizes) == n and all(1 <= s <= hi for s in sizes)
            assert all(s >= lo for s in sizes[:-1])


def test_full_corpus_official_split(shared_data_dir: Path, tmp_path: Path) -> None:
    corpus = shared_data_dir / "fsdd"
    if not (corpus / "recordings").is_dir():
        pytest.skip(f"FSDD not found at {corpus}/recordings (set ASRKIT_SHARED_DATA)")
    result = fsdd.prepare(corpus, tmp_path / "out", workers=8)
    assert {k: len(v) for k, v in result.splits.items()} == {"train": 1600, "dev": 200, "test": 200}
    assert result.skipped == []
    assert all(parse(u.id)[2] < 5 for u in result.splits["test"])
