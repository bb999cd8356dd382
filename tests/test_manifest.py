"""JSONL manifests (errors as file:line, atomic writes) and text normalisation (property tests)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asrkit.data.manifest import ManifestError, read_manifest, write_manifest
from asrkit.data.text import normalize_text
from asrkit.errors import AsrkitError
from asrkit.records import Utterance


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def line(**obj: object) -> str:
    base: dict[str, object] = {"audio_filepath": "a.wav", "duration": 1.0, "text": "hello"}
    base.update(obj)
    return json.dumps({k: v for k, v in base.items() if v is not ...})


# --- round trip -----------------------------------------------------------------------------------------


def test_write_read_round_trip(tmp_path: Path) -> None:
    utts = [
        Utterance("u1", str(tmp_path / "audio" / "u1.wav"), 1.25, "hello world", "spk1"),
        Utterance("u2", str(tmp_path / "audio" / "u2.flac"), 0.5, "naïve café it's", ""),
        Utterance("u3", str(tmp_path / "u3.wav"), 12.3456, "日本語 テキスト", "s", {"lang": "ja", "n": 3}),
    ]
    path = tmp_path / "sub" / "train.jsonl"
    assert write_manifest(path, utts) == 3
    back = read_manifest(path)
    assert back == utts
    assert back[2].extra == {"lang": "ja", "n": 3}  # corpus-specific keys are kept
    text = path.read_text(encoding="utf-8")
    assert "naïve" in text  # not \u-escaped
    assert len(text.splitlines()) == 3


def test_round_trip_of_a_generator(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    n = write_manifest(path, (Utterance(f"u{i}", f"/abs/{i}.wav", 1.0 + i, "a b") for i in range(5)))
    assert n == 5
    assert [u.id for u in read_manifest(path)] == [f"u{i}" for i in range(5)]


@settings(max_examples=40, deadline=None)
@given(texts=st.lists(st.text(min_size=0, max_size=30), min_size=1, max_size=5))
def test_round_trip_any_text(tmp_path_factory: pytest.TempPathFactory, texts: list[str]) -> None:
    path = tmp_path_factory.mktemp("rt") / "m.jsonl"
    utts = [Utterance(f"id{i}", f"/abs/{i}.wav", 0.25, t) for i, t in enumerate(texts)]
    write_manifest(path, utts)
    assert [u.text for u in read_manifest(path)] == texts


def test_relative_paths_resolve_against_manifest_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "data" / "corpus"
    path = write_lines(folder / "train.jsonl", [
        line(audio_filepath="wavs/a.wav", id="a"),
        line(audio_filepath="../other/b.wav", id="b"),
        line(audio_filepath="/abs/c.wav", id="c"),
    ])
    monkeypatch.chdir(tmp_path)  # the working directory must not matter
    utts = read_manifest(path)
    assert utts[0].audio_filepath == str((folder / "wavs" / "a.wav").resolve())
    assert utts[1].audio_filepath == str((tmp_path / "data" / "other" / "b.wav").resolve())
    assert utts[2].audio_filepath == "/abs/c.wav"


def test_id_defaults_to_audio_stem_and_blank_lines_are_skipped(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "m.jsonl", ["", line(audio_filepath="x/one.wav"), "   ",
                                               line(audio_filepath="x/two.wav", speaker="s9")])
    utts = read_manifest(path)
    assert [u.id for u in utts] == ["one", "two"]
    assert utts[1].speaker == "s9"
    assert utts[0].speaker == ""


# --- errors name file:line ------------------------------------------------------------------------------


@pytest.mark.parametrize("bad,fragment", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    (line(text=...), "missing key(s) text"),
    (line(audio_filepath=..., duration=...), "missing key(s) audio_filepath, duration"),
    (line(duration="long"), "duration 'long' is not a number"),
    (line(duration=None), "is not a number"),
    (line(duration=0), "must be positive"),
    (line(duration=-1.5), "must be positive"),
    (line(text=5), "text must be a string"),
])
def test_malformed_line_names_file_and_line(tmp_path: Path, bad: str, fragment: str) -> None:
    path = write_lines(tmp_path / "m.jsonl", [line(id="ok1"), line(id="ok2"), bad])
    with pytest.raises(ManifestError) as info:
        read_manifest(path)
    msg = str(info.value)
    assert f"{path}:3:" in msg
    assert fragment in msg
    assert isinstance(info.value, AsrkitError)


def test_nan_duration_is_rejected(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "m.jsonl", ['{"audio_filepath": "a.wav", "duration": NaN, "text": "x"}'])
    with pytest.raises(ManifestError, match=f"{path}:1: duration nan must be positive"):
        read_manifest(path)


def test_missing_keys_message_lists_required_keys(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "m.jsonl", ['{"text": "x"}'])
    with pytest.raises(ManifestError, match="every line needs audio_filepath, duration, text"):
        read_manifest(path)


def test_duplicate_id_names_both_lines(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "m.jsonl", [line(id="a"), line(id="b"), "", line(id="a")])
    with pytest.raises(ManifestError) as info:
        read_manifest(path)
    msg = str(info.value)
    assert f"{path}:4:" in msg
    assert "duplicate id 'a'" in msg
    assert "first at line 1" in msg


def test_duplicate_id_from_audio_stem(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "m.jsonl", [line(audio_filepath="x/s.wav"), line(audio_filepath="y/s.wav")])
    with pytest.raises(ManifestError, match=f"{path}:2: duplicate id 's'"):
        read_manifest(path)


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_manifest(tmp_path: Path, content: str) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text(content)
    with pytest.raises(ManifestError, match="manifest is empty") as info:
        read_manifest(path)
    assert str(path) in str(info.value)


def test_missing_manifest(tmp_path: Path) -> None:
    path = tmp_path / "nope.jsonl"
    with pytest.raises(ManifestError, match="manifest not found") as info:
        read_manifest(path)
    assert str(path) in str(info.value)


# --- atomic writes --------------------------------------------------------------------------------------


def test_write_leaves_no_tmp_and_replaces_existing(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    write_manifest(path, [Utterance("old", "/a.wav", 1.0, "old")])
    write_manifest(path, [Utterance("new", "/b.wav", 2.0, "new")])
    assert [u.id for u in read_manifest(path)] == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.jsonl"]


def _failing_utts():
    yield Utterance("x1", "/x1.wav", 1.0, "first")
    raise RuntimeError("killed mid-way")


def test_failed_write_keeps_existing_manifest(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    write_manifest(path, [Utterance("good", "/a.wav", 1.0, "good")])
    with pytest.raises(RuntimeError):
        write_manifest(path, _failing_utts())
    assert [u.id for u in read_manifest(path)] == ["good"]


def test_failed_write_leaves_no_tmp(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    with pytest.raises(RuntimeError):
        write_manifest(path, _failing_utts())
    assert list(tmp_path.iterdir()) == []


# --- text normalisation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("raw,expected", [
    ("  Hello, World!  It\u2019s 3 o'clock. ", "hello world it's 3 o'clock"),
    ("'quoted' words", "quoted words"),
    ("TAB\tand\nnewline", "tab and newline"),
    ("ÉCOLE  Ｆｕｌｌｗｉｄｔｈ", "école fullwidth"),
    ("rock`n`roll", "rock'n'roll"),
    ("---", ""),
    ("", ""),
])
def test_normalize_examples(raw: str, expected: str) -> None:
    assert normalize_text(raw) == expected


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_normalize_is_idempotent(text: str) -> None:
    once = normalize_text(text)
    assert normalize_text(once) == once


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_normalize_spacing_and_case(text: str) -> None:
    out = normalize_text(text)
    assert "  " not in out
    assert out == out.strip()
    assert out == out.lower()
    assert all(not ch.isspace() or ch == " " for ch in out)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(codec="ascii")))
def test_normalize_ascii_keeps_only_letters_digits_apostrophes(text: str) -> None:
    out = normalize_text(text)
    assert all(ch.isalnum() or ch in " '" for ch in out)
    for word in out.split():
        assert word and not word.startswith("'") and not word.endswith("'")
