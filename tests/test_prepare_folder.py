"""`asrkit.prepare.folder`: same-stem .txt layout, TSV/CSV lists, skipped inputs, random splits."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asrkit.data.manifest import read_manifest
from asrkit.errors import AsrkitError
from asrkit.prepare import folder
from asrkit.prepare.common import PrepareResult, check_writable, measure


def tone(path: Path, seconds: float = 0.25, sr: int = 16000, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    sf.write(str(path), (0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), sr, format=fmt)
    return path


def utt(path: Path, text: str, seconds: float = 0.25) -> Path:
    tone(path, seconds)
    path.with_suffix(".txt").write_text(text, encoding="utf-8")
    return path


def read_skipped(result: PrepareResult) -> dict[str, str]:
    assert result.report_path is not None and result.report_path.name == "skipped.tsv"
    lines = result.report_path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "path\treason"
    return dict(line.split("\t", 1) for line in lines[1:])


def test_same_stem_layout(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    utt(corpus / "alice" / "hello.wav", "Hello, World!\n", 0.5)
    utt(corpus / "bob" / "sub" / "count.wav", "one two three", 0.25)
    tone(corpus / "TOP.FLAC", 0.75, fmt="FLAC")
    (corpus / "TOP.txt").write_text("top level")
    result = folder.prepare(corpus, tmp_path / "out", name="train")

    assert list(result.splits) == ["train"] and result.skipped == [] and result.report_path is None
    got = {u.id: u for u in read_manifest(tmp_path / "out" / "train.jsonl")}
    assert set(got) == {"alice-hello", "bob-sub-count", "TOP"}
    assert got["alice-hello"].text == "hello world" and got["alice-hello"].speaker == "alice"
    assert got["bob-sub-count"].speaker == "sub"
    assert got["TOP"].duration == pytest.approx(0.75) and got["alice-hello"].duration == pytest.approx(0.5)
    assert all(Path(u.audio_filepath).is_absolute() and Path(u.audio_filepath).is_file() for u in got.values())
    assert not (tmp_path / "out" / "skipped.tsv").exists()
    assert "train: 3 utterances" in result.summary() and "skipped nothing" in result.summary()


def test_every_bad_input_is_reported(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    utt(corpus / "good1.wav", "fine")
    utt(corpus / "good2.wav", "also fine")
    tone(corpus / "no_text.wav")
    utt(corpus / "blank.wav", "  ?!  -- \n")
    (corpus / "noise.wav").write_bytes(b"this is not audio at all" * 10)
    (corpus / "noise.txt").write_text("noise")
    utt(corpus / "dup.wav", "first")
    tone(corpus / "dup.flac", fmt="FLAC")  # same id "dup" as dup.wav (sorted later), shares dup.txt
    (corpus / "readme.md").write_text("not audio, ignored")
    audio_in = [p for p in corpus.rglob("*") if p.suffix.lower() in folder.AUDIO_EXTENSIONS]

    result = folder.prepare(corpus, tmp_path / "out")
    reasons = read_skipped(result)
    assert len(audio_in) == len(result.splits["all"]) + len(result.skipped) == 7
    assert {u.id for u in result.splits["all"]} == {"good1", "good2", "dup"}
    assert "no transcript" in reasons[str(corpus / "no_text.wav")]
    assert "no_text.txt" in reasons[str(corpus / "no_text.wav")]
    assert "empty transcript" in reasons[str(corpus / "blank.wav")]
    assert "cannot read audio" in reasons[str(corpus / "noise.wav")]
    assert "duplicate id 'dup'" in reasons[str(corpus / "dup.wav")]
    assert "skipped 4" in result.summary() and "skipped.tsv" in result.summary()


def test_stale_report_removed_and_output_overwritten(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    utt(corpus / "a.wav", "a")
    tone(corpus / "b.wav")
    assert folder.prepare(corpus, tmp_path / "out").report_path is not None
    (corpus / "b.wav").unlink()
    result = folder.prepare(corpus, tmp_path / "out")
    assert result.report_path is None and not (tmp_path / "out" / "skipped.tsv").exists()


def test_non_ascii_text_is_normalised(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    utt(corpus / "fr.wav", "Ça VA? C\u2019est l\u2019ÉTÉ — naïve café!")
    utt(corpus / "de.wav", "\ufeffÜBERALL  Straße\t(ﬁnal)")
    got = {u.id: u.text for u in folder.prepare(corpus, tmp_path / "out").splits["all"]}
    assert got == {"fr": "ça va c'est l'été naïve café", "de": "überall straße final"}
    line = (tmp_path / "out" / "all.jsonl").read_text(encoding="utf-8")
    assert "ça va" in line  # written as UTF-8, not \\u escapes


def write_list(path: Path, rows: list[list[str]], delimiter: str) -> Path:
    """TSV: plain tab-joined lines (quotes are text); CSV: the csv module's quoting."""
    with path.open("w", encoding="utf-8", newline="") as f:
        if delimiter == "\t":
            f.writelines("\t".join(row) + "\n" for row in rows)
        else:
            csv.writer(f, lineterminator="\n").writerows(rows)
    return path


@pytest.mark.parametrize("delimiter,suffix", [("\t", ".tsv"), (",", ".csv")])
@pytest.mark.parametrize("header", [True, False])
def test_list_file(tmp_path: Path, delimiter: str, suffix: str, header: bool) -> None:
    corpus = tmp_path / "corpus"
    tone(corpus / "clips" / "a.wav")
    tone(corpus / "clips" / "b.wav", 0.5)
    outside = tone(tmp_path / "elsewhere" / "c.wav")
    rows = [["clips/a.wav", "Hello there", "ann"],
            [str(outside), 'she said "yes", then left', "cat"],
            ["clips/missing.wav", "gone", "ann"],
            ["clips/b.wav", "   ", "ann"]]
    if header:  # columns in another order than the default
        rows = [["speaker", "path", "text"]] + [[r[2], r[0], r[1]] for r in rows]
    list_file = write_list(tmp_path / f"list{suffix}", rows, delimiter)

    result = folder.prepare(corpus, tmp_path / "out", list_file=list_file)
    got = {u.id: u for u in result.splits["all"]}
    assert set(got) == {"clips-a", "c"}
    assert got["clips-a"].text == "hello there" and got["clips-a"].speaker == "ann"
    assert got["c"].text == "she said yes then left" and got["c"].speaker == "cat"
    assert ('said "yes", then' in list_file.read_text()) == (suffix == ".tsv")  # TSV: quotes are plain text
    reasons = read_skipped(result)
    assert "does not exist" in reasons[str(corpus / "clips" / "missing.wav")]
    assert "empty transcript" in reasons[str(corpus / "clips" / "b.wav")]
    assert len(rows) - header == len(got) + len(result.skipped)


def test_list_without_speaker_uses_parent_folder(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    tone(corpus / "spk1" / "x.wav")
    list_file = write_list(tmp_path / "list.tsv", [["spk1/x.wav", "words"]], "\t")
    (only,) = folder.prepare(corpus, tmp_path / "out", list_file=list_file).splits["all"]
    assert only.speaker == "spk1" and only.id == "spk1-x"


@pytest.mark.parametrize("suffix,content,line,what", [
    (".tsv", "a.wav\tfine\nb.wav\tfine\nonly-one-column\n\n", 3, "expected path<TAB>text"),
    (".tsv", "a.wav\tx\tspk\textra\n", 1, "found 4 column(s)"),
    (".csv", "path,text\na.wav,fine\nb.wav,too,many\n", 3, "header names 2"),
    (".csv", "path,sentence\na.wav,x\n", 1, "`path` and `text`"),
    (".csv", 'a.wav,"unterminated\n', 1, "expected path,text"),
    (".tsv", "\tno path\n", 1, "empty path"),
])
def test_malformed_list_names_file_and_line(tmp_path: Path, suffix: str, content: str, line: int, what: str) -> None:
    tone(tmp_path / "corpus" / "a.wav")
    list_file = tmp_path / f"list{suffix}"
    list_file.write_text(content, encoding="utf-8")
    with pytest.raises(AsrkitError) as err:
        folder.prepare(tmp_path / "corpus", tmp_path / "out", list_file=list_file)
    assert f"{list_file}:{line}:" in str(err.value) and what in str(err.value)


def test_list_file_errors(tmp_path: Path) -> None:
    (tmp_path / "corpus").mkdir()
    (tmp_path / "list.txt").write_text("a.wav\thi\n")
    with pytest.raises(AsrkitError, match=r"must end in \.tsv .* or \.csv"):
        folder.prepare(tmp_path / "corpus", tmp_path / "out", list_file=tmp_path / "list.txt")
    with pytest.raises(AsrkitError, match="list file not found"):
        folder.prepare(tmp_path / "corpus", tmp_path / "out", list_file=tmp_path / "nope.tsv")
    (tmp_path / "empty.csv").write_text("path,text\n")
    with pytest.raises(AsrkitError, match="no rows"):
        folder.prepare(tmp_path / "corpus", tmp_path / "out", list_file=tmp_path / "empty.csv")


def test_corpus_dir_errors(tmp_path: Path) -> None:
    with pytest.raises(AsrkitError, match="missing: corpus folder not found"):
        folder.prepare(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "file").write_text("x")
    with pytest.raises(AsrkitError, match="not a folder"):
        folder.prepare(tmp_path / "file", tmp_path / "out")
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("hello")
    with pytest.raises(AsrkitError) as err:
        folder.prepare(tmp_path / "texts", tmp_path / "out")
    assert "no audio files (.wav, .flac" in str(err.value) and str(tmp_path / "texts") in str(err.value)
    assert "same-stem .txt" in str(err.value) and "--list FILE" in str(err.value)


def test_nothing_usable_is_an_error_with_report(tmp_path: Path) -> None:
    tone(tmp_path / "corpus" / "a.wav")
    with pytest.raises(AsrkitError, match="no usable utterances .*skipped.tsv"):
        folder.prepare(tmp_path / "corpus", tmp_path / "out")
    assert "no transcript" in (tmp_path / "out" / "skipped.tsv").read_text()
    assert not (tmp_path / "out" / "all.jsonl").exists()


def test_random_split_is_seeded_and_complete(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    for i in range(20):
        utt(corpus / f"s{i % 3}" / f"u{i:02d}.wav", f"utterance {i}", 0.1)

    def ids(seed: int, out: str) -> dict[str, list[str]]:
        result = folder.prepare(corpus, tmp_path / out, dev_fraction=0.2, test_fraction=0.1, seed=seed)
        return {name: [u.id for u in utts] for name, utts in result.splits.items()}

    first, again, other = ids(1, "a"), ids(1, "b"), ids(2, "c")
    assert first == again and first != other
    assert {k: len(v) for k, v in first.items()} == {"train": 14, "dev": 4, "test": 2}
    every = first["train"] + first["dev"] + first["test"]
    assert len(set(every)) == 20
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [".measured.cache", "dev.jsonl", "normaliser.json",
                                                                  "test.jsonl", "train.jsonl"]
    with pytest.raises(AsrkitError, match="must be below 1"):
        folder.prepare(corpus, tmp_path / "d", dev_fraction=0.5, test_fraction=0.5)


def test_check_writable_and_measure(tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(AsrkitError, match="not a folder"):
        check_writable(tmp_path / "a_file")
    check_writable(tmp_path / "new" / "deeper")
    assert (tmp_path / "new" / "deeper").is_dir() and not list((tmp_path / "new" / "deeper").iterdir())
    if os.geteuid() != 0:  # root can write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(AsrkitError, match="cannot write"):
            check_writable(locked / "out")
    good = tone(tmp_path / "ok.wav", 0.5)
    (tmp_path / "bad.wav").write_bytes(b"RIFF....")
    got = measure([good, tmp_path / "bad.wav", tmp_path / "absent.wav"], workers=2)
    assert got[0] == (pytest.approx(0.5), None)
    assert got[1][0] is None and "cannot read audio" in str(got[1][1])
    assert got[2] == (None, "file not found")
