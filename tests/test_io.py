"""asrkit.io: the content lands, no temporary file is left behind, and a failure mid-write keeps the old file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from asrkit.io import atomic_open, atomic_path, atomic_write


class Boom(Exception):
    pass


def test_atomic_write_text_and_bytes(tmp_path: Path) -> None:
    text = tmp_path / "a.txt"
    assert atomic_write(text, "héllo\nwörld\n") == text
    assert text.read_text(encoding="utf-8") == "héllo\nwörld\n"
    blob = tmp_path / "b.bin"
    atomic_write(blob, b"\x00\x01\xff")
    assert blob.read_bytes() == b"\x00\x01\xff"
    atomic_write(text, "replaced")  # an existing file is replaced whole
    assert text.read_text(encoding="utf-8") == "replaced"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin"]  # no temporary file left


def test_atomic_write_gives_the_mode_open_would(tmp_path: Path) -> None:
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    atomic_write(tmp_path / "atomic.txt", "x")
    assert stat.S_IMODE((tmp_path / "atomic.txt").stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)


def test_atomic_write_takes_a_str_path_and_an_encoding(tmp_path: Path) -> None:
    atomic_write(str(tmp_path / "l1.txt"), "café", encoding="latin-1")
    assert (tmp_path / "l1.txt").read_bytes() == "café".encode("latin-1")


def test_atomic_open_streams_text_and_binary(tmp_path: Path) -> None:
    with atomic_open(tmp_path / "lines.txt") as f:
        for i in range(3):
            f.write(f"{i}\n")
        assert not (tmp_path / "lines.txt").exists()  # nothing at the target until the block ends
    assert (tmp_path / "lines.txt").read_text() == "0\n1\n2\n"
    with atomic_open(tmp_path / "t.pt", "wb") as fb:
        torch.save({"w": torch.arange(3)}, fb)
    assert torch.equal(torch.load(tmp_path / "t.pt", weights_only=True)["w"], torch.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lines.txt", "t.pt"]


@pytest.mark.parametrize("mode", ["w", "wb"])
def test_an_error_mid_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path, mode: str) -> None:
    target = tmp_path / "keep.txt"
    target.write_text("old\n")
    with pytest.raises(Boom), atomic_open(target, mode) as f:  # type: ignore[call-overload]
        f.write("new, half" if mode == "w" else b"new, half")
        f.flush()
        assert len(list(tmp_path.iterdir())) == 2  # the temporary file exists meanwhile, beside the target
        raise Boom
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_an_error_mid_write_of_a_new_file_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(Boom), atomic_open(tmp_path / "new.txt") as f:
        f.write("half")
        raise Boom
    assert list(tmp_path.iterdir()) == []


def test_a_failing_data_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "keep.txt"
    target.write_text("old\n")
    with pytest.raises(UnicodeEncodeError):
        atomic_write(target, "not ascii: é", encoding="ascii")
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_atomic_open_refuses_modes_that_would_not_replace(tmp_path: Path) -> None:
    for mode in ("a", "r", "w+"):
        with pytest.raises(ValueError, match="use 'w'"):
            atomic_open(tmp_path / "x", mode)  # type: ignore[call-overload]
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_for_writers_that_take_a_name(tmp_path: Path) -> None:
    target = tmp_path / "a.wav"
    target.write_bytes(b"old")
    with atomic_path(target, suffix=".partial.wav") as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith(".partial.wav") and not tmp.exists()
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["a.wav"]

    with pytest.raises(Boom), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise Boom
    assert target.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["a.wav"]


def test_atomic_path_when_the_writer_made_no_file(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(FileNotFoundError, match="made no file"), atomic_path(target):
        pass
    assert target.read_bytes() == b"old"


def test_a_failed_rename_leaves_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "x.txt"
    target.write_text("old")

    def refuse(src: object, dst: object) -> None:
        raise PermissionError("no")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(PermissionError):
        atomic_write(target, "new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["x.txt"]
