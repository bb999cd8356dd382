"""AN4 preparation on a generated miniature (NIST SPHERE train, headerless big-endian test) and on the real corpus."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asrkit.errors import AsrkitError
from asrkit.prepare import an4

RATE = 16000
TRAIN = {  # fileid -> transcription (None: listed in fileids without a transcription line)
    "an4_clstk/fash/an251-fash-b": "YES",
    "an4_clstk/fash/an253-fash-b": "GO",
    "an4_clstk/fash/cen1-fash-b": "ENTER SIX TWO",
    "an4_clstk/mblw/an76-mblw-b": "H I",
    "an4_clstk/mblw/cen2-mblw-b": None,
    "an4_clstk/mcen/an11-mcen-b": "RUBOUT G M E F THREE NINE",
    "an4_clstk/mcen/an12-mcen-b": "NO",  # its .sph is missing
}
TEST = {"an4test_clstk/fcaw/an406-fcaw-b": "RUBOUT G M E F THREE NINE", "an4test_clstk/menk/an416-menk-b": "ERASE"}


def _samples(seed: int, seconds: float) -> np.ndarray:
    return np.random.default_rng(seed).integers(-8000, 8000, int(RATE * seconds), dtype=np.int16)


def make_an4(root: Path) -> Path:
    """`root/an4/` with etc/ and wav/ as in the corpus, plus odd cases (see the skipped assertions)."""
    an4_dir = root / "an4"
    (an4_dir / "etc").mkdir(parents=True)
    for i, fileid in enumerate(TRAIN):
        if not fileid.endswith("an12-mcen-b"):
            path = an4_dir / "wav" / f"{fileid}.sph"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(str(path), _samples(i, 0.5 + 0.1 * i), RATE, format="NIST", subtype="PCM_16")
    for i, fileid in enumerate(TEST):
        path = an4_dir / "wav" / f"{fileid}.raw"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_samples(100 + i, 1.0).astype(">i2").tobytes())
    fileids = list(TRAIN) + ["an4_clstk/fash/an251-fash-b"]  # a duplicate fileid
    lines = [f"<s> {text} </s> ({fid.rsplit('/', 1)[1]})" for fid, text in TRAIN.items() if text is not None]
    lines += ["<s> NOT LISTED </s> (an99-fash-b)", "a line without an id"]
    _write(an4_dir / "etc" / "an4_train.fileids", fileids)
    _write(an4_dir / "etc" / "an4_train.transcription", lines)
    _write(an4_dir / "etc" / "an4_test.fileids", list(TEST))
    _write(an4_dir / "etc" / "an4_test.transcription",
           [f"<s> {text} </s> ({fid.rsplit('/', 1)[1]})" for fid, text in TEST.items()])
    return root


def _write(path: Path, lines: list[str]) -> None:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _manifest(path: Path) -> dict[str, dict]:
    return {row["id"]: row for row in map(json.loads, path.read_text(encoding="utf-8").splitlines())}


def test_prepare_an4_train_and_test(tmp_path: Path) -> None:
    corpus = make_an4(tmp_path / "corpus")
    out = tmp_path / "out"
    result = an4.prepare(corpus, out, workers=2)  # the folder holding an4/ is accepted
    assert list(result.splits) == ["train", "test"]
    train, test = _manifest(out / "train.jsonl"), _manifest(out / "test.jsonl")
    assert sorted(train) == ["an11-mcen-b", "an251-fash-b", "an253-fash-b", "an76-mblw-b", "cen1-fash-b"]
    assert train["cen1-fash-b"]["text"] == "enter six two" and train["cen1-fash-b"]["speaker"] == "fash"
    assert train["an253-fash-b"]["duration"] == pytest.approx(0.6)
    assert test["an416-menk-b"]["speaker"] == "menk" and test["an416-menk-b"]["duration"] == pytest.approx(1.0)
    report = (out / "skipped.tsv").read_text(encoding="utf-8")
    assert "fileid an4_clstk/mblw/cen2-mblw-b has no line in an4_train.transcription" in report
    assert "transcription of an99-fash-b but no such fileid in an4_train.fileids" in report
    assert "duplicate fileid an4_clstk/fash/an251-fash-b" in report
    assert "an12-mcen-b.sph\taudio not found" in report
    assert "not a transcription line" in report
    assert len(result.skipped) == 5


def test_raw_files_are_converted_to_flac_once(tmp_path: Path) -> None:
    corpus = make_an4(tmp_path / "corpus")
    out = tmp_path / "out"
    an4.prepare(corpus / "an4", out)
    flac = out / "flac" / "an4test_clstk" / "fcaw" / "an406-fcaw-b.flac"
    data, rate = sf.read(str(flac), dtype="int16")
    assert rate == RATE and np.array_equal(data, _samples(100, 1.0))  # big-endian decoded exactly
    stamp = flac.stat().st_mtime_ns
    an4.prepare(corpus / "an4", out)
    assert flac.stat().st_mtime_ns == stamp


def test_dev_speakers_are_carved_out_of_train(tmp_path: Path) -> None:
    corpus = make_an4(tmp_path / "corpus")
    result = an4.prepare(corpus, tmp_path / "out", dev_speakers=1)
    train_spk = {u.speaker for u in result.splits["train"]}
    dev_spk = {u.speaker for u in result.splits["dev"]}
    assert len(dev_spk) == 1 and not train_spk & dev_spk and train_spk | dev_spk == {"fash", "mblw", "mcen"}
    with pytest.raises(AsrkitError, match="dev_speakers 3 must be below the 3 training speakers"):
        an4.prepare(corpus, tmp_path / "out", dev_speakers=3)


def test_not_an_an4_folder(tmp_path: Path) -> None:
    with pytest.raises(AsrkitError, match="no etc/an4_train.fileids"):
        an4.prepare(tmp_path, tmp_path / "out")


def test_real_an4(shared_data_dir: Path, tmp_path: Path) -> None:
    corpus = shared_data_dir / "an4"
    if not corpus.is_dir():
        pytest.skip(f"AN4 not found at {corpus}")
    result = an4.prepare(corpus, tmp_path / "out", dev_speakers=5, workers=4)
    assert not result.skipped
    assert len(result.splits["train"]) + len(result.splits["dev"]) == 948
    assert len({u.speaker for u in result.splits["dev"]}) == 5
    assert {u.speaker for u in result.splits["train"]}.isdisjoint({u.speaker for u in result.splits["dev"]})
    total = sum(u.duration for utts in result.splits.values() for u in utts)
    assert 40 * 60 < total < 45 * 60  # the README's 42 minutes


def test_a_rerun_measures_nothing_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from asrkit.prepare import common

    corpus, out = make_an4(tmp_path / "corpus"), tmp_path / "out"
    first = an4.prepare(corpus, out)

    def fail(path: object, **kwargs: object) -> None:
        raise AssertionError(f"{path} measured again")

    monkeypatch.setattr(common, "audio_info", fail)  # every duration must come from out/.measured.cache
    again = an4.prepare(corpus, out)
    assert again.splits == first.splits and again.skipped == first.skipped
