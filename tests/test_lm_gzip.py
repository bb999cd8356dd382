"""Gzipped LM inputs: LibriSpeech's LM text (librispeech-lm-norm.txt.gz) for `asrkit lm build`, and its official
ARPA files (3-gram.arpa.gz, upper case) for `--lm`, converted once to a lower-cased KenLM binary beside them."""

from __future__ import annotations

import gzip
import os
import time
from pathlib import Path

import pytest
from conftest import needs_kenlm, needs_kenlm_tools
from hypothesis import given
from hypothesis import strategies as st
from test_beam import ARPA, FRAME_SHIFT, VOCAB, bunny_emissions

from asrkit import lm as lmlib
from asrkit import lm_build as lmbuild
from asrkit import lm_files
from asrkit.data.text import normalize_text
from asrkit.decoding import CTCBeamDecoder
from asrkit.errors import AsrkitError
from asrkit.search import SearchOptions

UPPER_ARPA = ARPA.replace("bugs", "BUGS").replace("bunny", "BUNNY").lstrip()  # LibriSpeech's ARPAs are upper case
# Decoding with the converted LM: the asrkit backend reads it through the kenlm module, flashlight on its own.
BACKENDS = [pytest.param("asrkit", marks=needs_kenlm), pytest.param("flashlight", marks=pytest.mark.skipif(
    not lmlib.flashlight_available(), reason="flashlight-text not installed"))]




def gzipped(path: Path, text: str) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(text)
    return path


@given(st.text(alphabet=st.characters(max_codepoint=127), max_size=60))
def test_the_ascii_fast_path_normalises_like_transcripts(line: str) -> None:
    assert lm_files.normalize_line(line) == normalize_text(line)


def test_non_ascii_lines_take_the_full_normalisation() -> None:
    for line in ["Caf\u00e9 \u2019Twas", "\uff21\uff22 na\u00efve", "It`s O'CLOCK -- 'QUOTED'"]:
        assert lm_files.normalize_line(line) == normalize_text(line)


@needs_kenlm_tools
def test_lm_build_reads_librispeech_style_gzipped_text(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from asrkit.cli import app

    text = gzipped(tmp_path / "librispeech-lm-norm.txt.gz", "BUGS BUNNY\nWHAT'S UP DOC\nBUGS BUNNY AGAIN\n" * 20)
    result = CliRunner().invoke(app, ["lm", "build", str(text), "--out", str(tmp_path / "lm" / "ls"), "--order", "3"])
    assert result.exit_code == 0, result.output
    assert "60 sentences (160 words, vocabulary 6)" in result.stdout
    assert lmlib.read_unigrams(tmp_path / "lm" / "ls.bin") == ["again", "bugs", "bunny", "doc", "up", "what's"]
    assert not list((tmp_path / "lm").glob("asrkit-lm-*")), "no temporary corpus is left"


@needs_kenlm_tools
@pytest.mark.parametrize("backend", BACKENDS)
def test_gzipped_upper_case_arpa_is_converted_once_and_decodes(tmp_path: Path, backend: str,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    gz = gzipped(tmp_path / "3-gram.arpa.gz", UPPER_ARPA)
    opts = SearchOptions(lm=str(gz), alpha=0.5, beta=0.0, backend=backend)
    assert CTCBeamDecoder(VOCAB, opts).decode(bunny_emissions(), FRAME_SHIFT)[0].text == "bugs bunny"
    binary = tmp_path / "3-gram.asrkit.bin"
    assert binary.is_file() and (tmp_path / "3-gram.asrkit.unigrams.txt").read_text() == "bugs\nbunny\n"
    assert f"converting {gz} once to {binary}" in capsys.readouterr().err
    assert lmlib.resolve_lm(gz) == binary and lmlib.resolve_lm(tmp_path / "3-gram") == binary
    assert "converting" not in capsys.readouterr().err  # the cached binary is used
    later = time.time() + 5
    os.utime(gz, (later, later))  # a newer ARPA is converted again
    assert lmlib.resolve_lm(gz) == binary and "converting" in capsys.readouterr().err


@needs_kenlm
def test_without_build_binary_the_lower_cased_arpa_is_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> Path:
        raise AsrkitError(f"{name} not found")

    monkeypatch.setattr(lmbuild, "find_tool", missing)
    gz = gzipped(tmp_path / "4-gram.arpa.gz", UPPER_ARPA)
    arpa = lmlib.resolve_lm(gz)
    assert arpa == tmp_path / "4-gram.asrkit.arpa" and "-0.1\tbugs bunny" in arpa.read_text()
    assert CTCBeamDecoder(VOCAB, SearchOptions(lm=str(gz), alpha=0.5, beta=0.0, backend="asrkit")).decode(
        bunny_emissions(), FRAME_SHIFT)[0].text == "bugs bunny"


def test_a_read_only_folder_caches_under_the_user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "ro").mkdir()
    gz = gzipped(tmp_path / "ro" / "3-gram.arpa.gz", UPPER_ARPA)
    monkeypatch.setattr(lmbuild, "_writable", lambda folder: False)
    monkeypatch.setattr(lmbuild, "find_tool", lambda name: (_ for _ in ()).throw(AsrkitError(name)))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cached = lmlib.resolve_lm(gz)
    assert cached.name == "3-gram.asrkit.arpa" and (tmp_path / "cache" / "asrkit" / "lm") in cached.parents
    assert not list((tmp_path / "ro").glob("*.asrkit.*"))


def test_case_is_kept_where_folding_would_merge_words(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lmbuild, "find_tool", lambda name: (_ for _ in ()).throw(AsrkitError(name)))
    mixed = "\\data\\\nngram 1=5\n\n\\1-grams:\n-99\t<s>\n-1\t</s>\n-2\t<unk>\n-1\tUS\n-1\tus\n\n\\end\\\n"
    assert lmlib.read_unigrams(lmlib.resolve_lm(gzipped(tmp_path / "m.arpa.gz", mixed))) == ["US", "us"]


def test_a_broken_gzipped_arpa_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "bad.arpa.gz").write_bytes(b"not gzip at all")
    with pytest.raises(AsrkitError, match=r"bad\.arpa\.gz: cannot read it as a gzipped ARPA file"):
        lmlib.resolve_lm(tmp_path / "bad.arpa.gz")
    gz = gzipped(tmp_path / "words.arpa.gz", "just some words\n")
    with pytest.raises(AsrkitError, match=r"words\.arpa\.gz: no \\1-grams: section"):
        lmlib.resolve_lm(gz)
    assert not list(tmp_path.glob("*.tmp*"))
