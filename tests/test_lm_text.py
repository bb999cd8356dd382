"""LM text against held-out transcripts (asrkit.lm_text): `asrkit lm overlap` and `asrkit lm build --exclude`, on
small synthetic books and manifests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import needs_kenlm_tools
from typer.testing import CliRunner

from asrkit import lm_build as lmbuild
from asrkit.cli import app
from asrkit.errors import AsrkitError
from asrkit.lm_text import HeldOut, overlap

DEV = ["the old clockmaker wound the brass key twice and listened to the gears turn in the dark",
       "she said nothing for a long while",
       "yes"]
BOOK = [
    "Chapter one.",
    "It was one of the most beautiful mornings of the year.",  # no held-out 5-gram
    "Then the old clockmaker wound the brass key twice and listened to the gears turn in the dark, and smiled.",
    "He whispered that the old clockmaker wound the brass key twice before dawn.",  # 8 words shared: kept
    "She said nothing for a long while.",  # a whole transcript
    "The gears turn in the dark.",  # 6 words, all inside a transcript: a sentence of the held-out passage
    "And for a long while the house was still.",  # a common phrase, "for a long while": kept
    "Yes.",  # a transcript of fewer than 5 words: found, not dropped
]


def manifest(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"audio_filepath": f"{i}.flac", "duration": 1.0, "text": t}) + "\n"
                            for i, t in enumerate(texts)), encoding="utf-8")
    return path


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    book = tmp_path / "book.txt"
    book.write_text("\n".join(BOOK) + "\n", encoding="utf-8")
    return book, manifest(tmp_path / "dev.jsonl", DEV)


def test_overlap_counts_verbatim_transcripts_and_ngrams(files: tuple[Path, Path]) -> None:
    book, dev = files
    result = overlap([book], [dev])
    held = result.held_out
    assert len(held.ngrams) == 13 + 3  # 17 - 4 and 7 - 4 distinct 5-grams; "yes" has none
    assert result.sentences == set(DEV)  # the long one inside line 3, the second as line 5, "yes" as line 8
    # line 3 holds all 13 of the first; line 5 the 3 of the second: every held-out 5-gram is in the book
    assert result.found == held.ngrams
    assert result.dropped == {"sentence": 2, "inside": 1}
    assert result.lines == len(BOOK) and result.lines - sum(result.dropped.values()) == 5
    # after the exclusion: line 4's 8 shared words (4 five-grams) and nothing of the second transcript remain
    assert len(result.kept_found) == 4
    report = result.report()
    assert "held-out transcripts found verbatim in the LM text: 3/3 (100.00%)" in report
    assert "held-out 5-grams found in the LM text: 16/16 (100.00%)" in report
    assert "16/16 (100.00%) before, 4/16 (25.00%) after" in report
    assert f"{book}:3: 13 5-grams: then the old clockmaker" in report  # the worst line, by file and line number


def test_exclusion_keeps_common_phrases_and_drops_long_spans() -> None:
    held = HeldOut(["a b c d e f g h i j k l"], n=5, window=10)
    keep = "x a b c d e f g h i y"  # 9 shared words
    drop = "x a b c d e f g h i j y"  # 10
    inside = "c d e f g h"  # 6 words, all in the transcript
    for line, want in ((keep, None), (drop, "span"), (inside, "inside"), ("a b c d", None)):
        words = line.split()
        assert held.leak(line, words, held.found_in(words)) == want, line
    with pytest.raises(AsrkitError, match="need 1 <= n <= window"):
        HeldOut(["a b"], n=6, window=5)
    with pytest.raises(AsrkitError, match="no text"):
        HeldOut(["", ""])


def test_bad_inputs_name_the_file_and_line(tmp_path: Path, files: tuple[Path, Path]) -> None:
    book, dev = files
    with pytest.raises(AsrkitError, match=r"book\.txt: expected a JSONL manifest"):
        overlap([book], [book])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "fine"}) + "\n{broken\n", encoding="utf-8")
    with pytest.raises(AsrkitError, match=r"bad\.jsonl:2: not valid JSON"):
        overlap([book], [bad])
    with pytest.raises(AsrkitError, match=r"LM text .*missing\.txt not found"):
        overlap([tmp_path / "missing.txt"], [dev])


def test_cli_lm_overlap(files: tuple[Path, Path]) -> None:
    book, dev = files
    result = CliRunner().invoke(app, ["lm", "overlap", str(book), str(dev), "--n", "5"])
    assert result.exit_code == 0, result.output
    assert "16/16 (100.00%) before, 4/16 (25.00%) after" in result.stdout
    result = CliRunner().invoke(app, ["lm", "overlap", str(book), str(book)])
    assert result.exit_code != 0 and "expected a JSONL manifest" in result.output


@needs_kenlm_tools
def test_lm_build_exclude_leaves_the_leaking_lines_out(tmp_path: Path, files: tuple[Path, Path]) -> None:
    book, dev = files
    built = lmbuild.build_lm([book], tmp_path / "lm", order=3, exclude=[dev])
    words = set(built.unigrams.read_text().split())
    assert "clockmaker" in words  # from line 4, kept
    assert "smiled" not in words and "nothing" not in words  # only in dropped lines
    assert built.sentences == 5
    assert "left out 3 of 8 LM line(s)" in built.summary() and "16/16 (100.00%) before" in built.summary()
    result = CliRunner().invoke(app, ["lm", "build", str(book), "--out", str(tmp_path / "cli"), "--order", "3",
                                      "--exclude", str(dev), "--exclude-window", "5", "--trie"])
    assert result.exit_code == 0, result.output
    kenlm = pytest.importorskip("kenlm")
    assert kenlm.Model(str(tmp_path / "cli.bin")).order == 3  # the quantised trie loads
    assert "left out 4 of 8 LM line(s)" in result.stdout  # line 4 shares 8 words, more than 5
