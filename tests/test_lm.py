"""LM building (asrkit.lm_build) and loading (asrkit.lm): text inputs (plain, gzip, manifests) normalised like
transcripts, finding KenLM's programs, word lists, `asrkit lm build` itself when lmplz is installed."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from conftest import needs_kenlm_tools

from asrkit import lm as lmlib
from asrkit import lm_build as lmbuild
from asrkit import lm_files
from asrkit.data.text import normalize_text
from asrkit.errors import AsrkitError


def test_text_is_normalised_like_transcripts(tmp_path: Path) -> None:
    plain = tmp_path / "a.txt"
    plain.write_text("Hello, World!\n\n  It\u2019s 3 O'Clock.\n", encoding="utf-8")
    packed = tmp_path / "b.txt.gz"
    with gzip.open(packed, "wt", encoding="utf-8") as f:
        f.write("Bugs Bunny;\nWHAT'S up, doc?\n")
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("".join(json.dumps({"audio_filepath": f"{i}.wav", "duration": 1.0, "text": t}) + "\n"
                                for i, t in enumerate(["one two", "Three  FOUR"])), encoding="utf-8")
    lines = list(lm_files.read_lm_text([plain, packed, manifest]))
    raw = ["Hello, World!", "  It\u2019s 3 O'Clock.", "Bugs Bunny;", "WHAT'S up, doc?", "one two", "Three  FOUR"]
    assert lines == [normalize_text(r) for r in raw]
    assert lines[1] == "it's 3 o'clock"


def test_unreadable_text_inputs_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(AsrkitError, match=r"missing\.txt not found"):
        list(lm_files.read_lm_text([tmp_path / "missing.txt"]))
    fake_gz = tmp_path / "fake.gz"
    fake_gz.write_text("not gzip")
    with pytest.raises(AsrkitError, match=r"fake\.gz: cannot read it as UTF-8 text \(gzip\)"):
        list(lm_files.read_lm_text([fake_gz]))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"duration": 1}\n')
    with pytest.raises(AsrkitError, match=r'bad\.jsonl:2: no "text" string'):
        list(lm_files.read_lm_text([bad]))


def test_missing_kenlm_programs_say_how_to_install_them(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(lmbuild, "TOOL_DIR", tmp_path / "tools" / "kenlm" / "bin")
    with pytest.raises(AsrkitError, match=r"KenLM's lmplz was not found on PATH nor in .*tools/kenlm/bin; "
                                          r"run `make kenlm`"):
        lmbuild.find_tool("lmplz")
    corpus = tmp_path / "c.txt"
    corpus.write_text("one two\n")
    with pytest.raises(AsrkitError, match="make kenlm"):
        lmbuild.build_lm([corpus], tmp_path / "lm")


def test_programs_in_the_project_tool_folder_are_found(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "lmplz").write_text("#!/bin/sh\n")
    (tools / "lmplz").chmod(0o755)
    monkeypatch.setattr(lmbuild, "TOOL_DIR", tools)
    assert lmbuild.find_tool("lmplz") == tools / "lmplz"


def test_bad_build_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(AsrkitError, match="--order 1 must be at least 2"):
        lmbuild.build_lm([tmp_path / "x.txt"], tmp_path / "lm", order=1)
    with pytest.raises(AsrkitError, match="--prune has 3 thresholds but the LM has order 2"):
        lmbuild.build_lm([tmp_path / "x.txt"], tmp_path / "lm", order=2, prune=(0, 1, 1))
    with pytest.raises(AsrkitError, match="non-decreasing"):
        lmbuild.build_lm([tmp_path / "x.txt"], tmp_path / "lm", order=3, prune=(0, 2, 1))


def test_lm_paths_resolve_from_their_stem(tmp_path: Path) -> None:
    (tmp_path / "digits.bin").write_bytes(b"x")
    (tmp_path / "words.arpa").write_text("x")
    assert lmlib.resolve_lm(tmp_path / "digits") == tmp_path / "digits.bin"
    assert lmlib.resolve_lm(tmp_path / "words") == tmp_path / "words.arpa"
    assert lmlib.resolve_lm(tmp_path / "digits.bin") == tmp_path / "digits.bin"
    with pytest.raises(AsrkitError, match=r"language model .*none not found; build one with `asrkit lm build"):
        lmlib.resolve_lm(tmp_path / "none")


def test_word_lists_come_from_the_arpa_or_the_sidecar(tmp_path: Path) -> None:
    arpa = tmp_path / "m.arpa"
    arpa.write_text("\\data\\\nngram 1=4\n\n\\1-grams:\n-1\t<s>\t0\n-1\t</s>\n-1\tbugs\n-1\tbunny\n\n\\end\\\n")
    assert lmlib.read_unigrams(arpa) == ["bugs", "bunny"]
    binary = tmp_path / "m.bin"
    binary.write_bytes(b"binary")
    assert lmlib.read_unigrams(binary) == ["bugs", "bunny"]  # from m.arpa beside it
    (tmp_path / "m.unigrams.txt").write_text("doc\nbugs\n<unk>\n")
    assert lmlib.read_unigrams(binary) == ["doc", "bugs"]  # the sidecar wins
    not_arpa = tmp_path / "n.arpa"
    not_arpa.write_text("just words\n")
    with pytest.raises(AsrkitError, match=r"n\.arpa: no \\1-grams: section"):
        lmlib.read_unigrams(not_arpa)


def test_vocabulary_check_tolerates_a_few_unspellable_words() -> None:
    vocab = ["<blank>", " ", *"abcdefghijklmnopqrstuvwxyz'"]
    words = [f"w{c}" for c in "abcdefghijklmnopqrstuvwxyz"] + ["café"]
    assert lmlib.check_vocabulary(words, vocab, "lm.bin") == 1
    with pytest.raises(AsrkitError, match=r"lm\.bin: 3 of 4 words .*'é'"):
        lmlib.check_vocabulary(["café", "éte", "où", "ok"], vocab, "lm.bin")
    spm = ["<blank>", "<unk>", "\u2581the", "\u2581a", "s", "t"]
    assert lmlib.check_vocabulary(["the", "a", "ts"], spm, "lm.bin") == 0


def test_packages_missing_give_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_lm_packages(name: str, *args: object, **kwargs: object) -> object:
        if name in ("kenlm", "pyctcdecode", "flashlight.lib.text"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", no_lm_packages)
    with pytest.raises(AsrkitError, match=r"pip install 'asrkit\[lm\]'"):
        lmlib.require_kenlm()
    with pytest.raises(AsrkitError, match=r"pip install 'asrkit\[lm\]'"):
        lmlib.require_pyctcdecode()
    with pytest.raises(AsrkitError, match=r"flashlight backend needs the flashlight-text module; .*asrkit\[lm\]"):
        lmlib.require_flashlight()


@needs_kenlm_tools
def test_build_writes_arpa_binary_and_word_list(tmp_path: Path) -> None:
    pytest.importorskip("kenlm")
    text = tmp_path / "digits.txt"
    text.write_text("One two THREE.\none two\nfour, five!\n" * 20, encoding="utf-8")
    manifest = tmp_path / "train.jsonl"
    manifest.write_text(json.dumps({"audio_filepath": "x.wav", "duration": 1, "text": "six seven"}) + "\n")
    built = lmbuild.build_lm([text, manifest], tmp_path / "out" / "digits.bin", order=3)
    assert built.binary == tmp_path / "out" / "digits.bin" and built.binary.is_file()
    assert built.arpa.read_text().startswith("\\data\\")
    assert set(lmlib.read_unigrams(built.binary)) == {"one", "two", "three", "four", "five", "six", "seven"}
    assert (built.sentences, built.vocabulary) == (61, 7)
    model = lmlib.load_kenlm(str(built.binary))
    assert model.order == 3
    assert model.score("one two three", bos=True, eos=False) > model.score("three two one", bos=True, eos=False)
    assert f"--lm {built.binary}" in built.summary()
    assert not list((tmp_path / "out").glob("asrkit-lm-*")), "the temporary corpus is removed"
    pruned = lmbuild.build_lm([text], tmp_path / "pruned", order=3, prune=(0, 1, 1))
    assert pruned.binary.is_file()


@needs_kenlm_tools
def test_lmplz_failure_is_reported(tmp_path: Path) -> None:
    text = tmp_path / "one.txt"
    text.write_text("word\n")
    with pytest.raises(AsrkitError, match=r"lmplz failed \(exit -?\d+\).*discount_fallback"):
        lmbuild.build_lm([text], tmp_path / "lm", order=5, discount_fallback=False)
