"""LibriSpeech preparation on a generated miniature in the real layout: folder, tarball on disk, download."""

from __future__ import annotations

import functools
import hashlib
import io
import json
import tarfile
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asrkit.errors import AsrkitError
from asrkit.prepare import download, librispeech

RATE = 16000
# (speaker, chapter) -> {utterance number: transcript or None (flac without a transcript line)}
CHAPTERS: dict[tuple[str, str], dict[int, str | None]] = {
    ("84", "121123"): {0: "GO DO YOU HEAR", 1: "BUT IN LESS THAN FIVE MINUTES THE STAIRCASE GROANED", 2: None},
    ("174", "50561"): {0: "FORGOTTEN TOO THE NAME OF GILLIAN THE LOVELY CAPTIVE", 1: "NAÏVE CAFÉ ÆSIR"},
}


def _flac(path: Path, seconds: float, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(seed).uniform(-0.3, 0.3, int(RATE * seconds)).astype(np.float32)
    sf.write(str(path), noise, RATE, format="FLAC", subtype="PCM_16")


def make_librispeech(root: Path, subset: str = "dev-clean") -> Path:
    """`root/LibriSpeech/<subset>/...` with odd cases: a flac without a line, a line without a flac,
    a duplicate transcript line and an undecodable flac."""
    base = root / "LibriSpeech" / subset
    for n, ((spk, chap), utts) in enumerate(CHAPTERS.items()):
        folder = base / spk / chap
        lines = []
        for num, text in utts.items():
            utt_id = f"{spk}-{chap}-{num:04d}"
            _flac(folder / f"{utt_id}.flac", 0.5 + 0.25 * num, seed=n * 10 + num)
            if text is not None:
                lines.append(f"{utt_id} {text}")
        if spk == "84":
            lines.append(f"{spk}-{chap}-0009 A LINE WITHOUT AUDIO")
            lines.append(f"{spk}-{chap}-0000 A DUPLICATE LINE")
            lines.append(f"{spk}-{chap}-0005 BROKEN AUDIO")
            (folder / f"{spk}-{chap}-0005.flac").write_bytes(b"not a flac at all")
        (folder / f"{spk}-{chap}.trans.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def _tarball(corpus: Path, tar_path: Path, subset: str = "dev-clean") -> Path:
    with tarfile.open(tar_path, "w:gz") as tar:
        tar.add(corpus / "LibriSpeech" / subset, arcname=f"LibriSpeech/{subset}")
    return tar_path


def _check_dev_clean(out: Path) -> None:
    rows = [json.loads(line) for line in (out / "dev-clean.jsonl").read_text(encoding="utf-8").splitlines()]
    by_id = {r["id"]: r for r in rows}
    assert sorted(by_id) == ["174-50561-0000", "174-50561-0001", "84-121123-0000", "84-121123-0001"]
    first = by_id["84-121123-0000"]
    assert first["text"] == "go do you hear" and first["speaker"] == "84" and first["chapter"] == "121123"
    assert first["duration"] == pytest.approx(0.5)
    assert by_id["174-50561-0001"]["text"] == "naïve café æsir"
    assert Path(first["audio_filepath"]).is_file()
    report = (out / "skipped.tsv").read_text(encoding="utf-8")
    assert "84-121123-0002.flac\tno transcript: id 84-121123-0002 has no line in 84-121123.trans.txt" in report
    assert "transcript line for 84-121123-0009 but no audio file" in report
    assert "duplicate id 84-121123-0000" in report
    assert "84-121123-0005.flac\tcannot read audio" in report


def test_prepare_from_an_extracted_corpus(tmp_path: Path) -> None:
    corpus = make_librispeech(tmp_path / "corpus")
    result = librispeech.prepare(tmp_path / "out", subsets=["dev-clean"], corpus_dir=corpus, workers=2)
    assert list(result.splits) == ["dev-clean"] and len(result.skipped) == 4
    _check_dev_clean(tmp_path / "out")
    # the folder holding the subsets (LibriSpeech/ itself) works too
    again = librispeech.prepare(tmp_path / "out2", subsets=["dev-clean"], corpus_dir=corpus / "LibriSpeech")
    assert len(again.splits["dev-clean"]) == 4


def test_prepare_from_a_tarball_on_disk_extracts_once(tmp_path: Path) -> None:
    tarballs = tmp_path / "tarballs"
    tarballs.mkdir()
    _tarball(make_librispeech(tmp_path / "corpus"), tarballs / "dev-clean.tar.gz")
    out = tmp_path / "out"
    librispeech.prepare(out, subsets=["dev-clean"], corpus_dir=tarballs)
    _check_dev_clean(out)
    assert (out / "download" / ".dev-clean.extracted").is_file()
    (tarballs / "dev-clean.tar.gz").unlink()  # a rerun uses the finished extraction
    assert len(librispeech.prepare(out, subsets=["dev-clean"], corpus_dir=tarballs).splits["dev-clean"]) == 4


def test_malicious_tarball_is_refused(tmp_path: Path) -> None:
    tarballs = tmp_path / "tarballs"
    tarballs.mkdir()
    with tarfile.open(tarballs / "dev-clean.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("LibriSpeech/dev-clean/../../../../escaped.txt")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    with pytest.raises(AsrkitError, match=r"refusing archive member 'LibriSpeech/dev-clean/\.\./"):
        librispeech.prepare(tmp_path / "out", subsets=["dev-clean"], corpus_dir=tarballs)
    assert not list(tmp_path.rglob("escaped.txt"))


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A local HTTP server serving a generated dev-clean.tar.gz; $ASRKIT_LIBRISPEECH_URL points at it."""
    served = tmp_path / "served"
    served.mkdir()
    _tarball(make_librispeech(tmp_path / "corpus"), served / "dev-clean.tar.gz")
    handler = functools.partial(_QuietHandler, directory=str(served))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    monkeypatch.setenv(download.LIBRISPEECH_URL_ENV, f"http://127.0.0.1:{server.server_address[1]}")
    yield served / "dev-clean.tar.gz"
    server.shutdown()
    server.server_close()


def test_download_from_a_mirror(mirror: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(download.LIBRISPEECH_MD5, "dev-clean", hashlib.md5(mirror.read_bytes()).hexdigest())
    out = tmp_path / "out"
    librispeech.prepare(out, subsets=["dev-clean"], download=True)
    _check_dev_clean(out)
    assert (out / "download" / "dev-clean.tar.gz").read_bytes() == mirror.read_bytes()


def test_download_with_the_wrong_checksum_is_not_used(mirror: Path, tmp_path: Path) -> None:
    # the generated tarball does not match the official MD5 of dev-clean.tar.gz
    with pytest.raises(AsrkitError, match="md5 checksum mismatch: expected 42e2234ba48799c1f50f24a7926300a1"):
        librispeech.prepare(tmp_path / "out", subsets=["dev-clean"], download=True)
    assert not list((tmp_path / "out" / "download").glob("dev-clean.tar.gz*"))
    assert not (tmp_path / "out" / "dev-clean.jsonl").exists()


def test_unknown_subset_lists_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(AsrkitError, match="unknown LibriSpeech subset.*train-clean-1000.*valid: dev-clean"):
        librispeech.prepare(tmp_path / "out", subsets=["dev-clean", "train-clean-1000"], download=True)


def test_missing_subset_without_download_says_how_to_fix(tmp_path: Path) -> None:
    corpus = make_librispeech(tmp_path / "corpus")
    with pytest.raises(AsrkitError, match="test-clean not found in .*pass --download"):
        librispeech.prepare(tmp_path / "out", subsets=["dev-clean", "test-clean"], corpus_dir=corpus)


def test_a_rerun_measures_nothing_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from asrkit.prepare import common

    corpus, out = make_librispeech(tmp_path / "corpus"), tmp_path / "out"
    librispeech.prepare(out, subsets=["dev-clean"], corpus_dir=corpus)
    manifest = (out / "dev-clean.jsonl").read_text(encoding="utf-8")

    def fail(path: object, **kwargs: object) -> None:
        raise AssertionError(f"{path} measured again")

    monkeypatch.setattr(common, "audio_info", fail)  # every result, the unreadable flac's too, is cached
    librispeech.prepare(out, subsets=["dev-clean"], corpus_dir=corpus)
    assert (out / "dev-clean.jsonl").read_text(encoding="utf-8") == manifest
    _check_dev_clean(out)


def test_mini_librispeech_subset_and_held_out_speakers(tmp_path: Path) -> None:
    """train-clean-5 (Mini LibriSpeech) is a known subset; --dev-speakers moves a speaker to dev-heldout."""
    corpus, out = make_librispeech(tmp_path / "corpus", subset="train-clean-5"), tmp_path / "out"
    result = librispeech.prepare(out, subsets=["train-clean-5"], corpus_dir=corpus, dev_speakers=["174"])
    train = [json.loads(line) for line in (out / "train-clean-5.jsonl").read_text(encoding="utf-8").splitlines()]
    dev = [json.loads(line) for line in (out / "dev-heldout.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {r["speaker"] for r in train} == {"84"} and len(train) == 2
    assert {r["speaker"] for r in dev} == {"174"} and len(dev) == 2
    assert sorted(result.splits) == ["dev-heldout", "train-clean-5"]


def test_held_out_speakers_must_exist_and_leave_some_for_training(tmp_path: Path) -> None:
    corpus = make_librispeech(tmp_path / "corpus", subset="train-clean-5")
    with pytest.raises(AsrkitError, match=r"speaker\(s\) 9999 not in train-clean-5 \(its speakers: 84, 174\)"):
        librispeech.prepare(tmp_path / "a", subsets=["train-clean-5"], corpus_dir=corpus, dev_speakers=["174", "9999"])
    with pytest.raises(AsrkitError, match="holds out every speaker of train-clean-5"):
        librispeech.prepare(tmp_path / "b", subsets=["train-clean-5"], corpus_dir=corpus, dev_speakers=["84", "174"])
    dev_only = make_librispeech(tmp_path / "c")
    with pytest.raises(AsrkitError, match="needs a train-\\* subset"):
        librispeech.prepare(tmp_path / "d", subsets=["dev-clean"], corpus_dir=dev_only, dev_speakers=["84"])


def test_mini_subsets_download_from_openslr_31(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(download.LIBRISPEECH_URL_ENV, raising=False)
    assert download.librispeech_url("train-clean-5") == "https://www.openslr.org/resources/31/train-clean-5.tar.gz"
    assert download.librispeech_url("dev-clean") == "https://www.openslr.org/resources/12/dev-clean.tar.gz"
    assert download.librispeech_url("dev-clean-2", "http://mirror/x/") == "http://mirror/x/dev-clean-2.tar.gz"


def test_speaker_gender_and_book_from_the_corpus_metadata(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    corpus = make_librispeech(tmp_path / "corpus")
    root = corpus / "LibriSpeech"
    (root / "SPEAKERS.TXT").write_text(";ID  |SEX| SUBSET | MINUTES | NAME\n84 | F | dev-clean | 8.02 | Christie\n"
                                       "174 | M | dev-clean | 8.04 | Peter\nbroken line\n", encoding="utf-8")
    (root / "CHAPTERS.TXT").write_text("; comment\n121123 | 84 | 8.02 | dev-clean | 1 | 1184 | Ch. | Book\n",
                                       encoding="utf-8")
    librispeech.prepare(tmp_path / "out", subsets=["dev-clean"], corpus_dir=corpus)
    rows = {r["id"]: r for r in map(json.loads, (tmp_path / "out" / "dev-clean.jsonl").read_text().splitlines())}
    assert rows["84-121123-0000"]["gender"] == "F" and rows["84-121123-0000"]["book_id"] == "1184"
    assert rows["174-50561-0000"]["gender"] == "M" and "book_id" not in rows["174-50561-0000"]
    assert "SPEAKERS.TXT:4: not a 'SPEAKERS.TXT' line" in capsys.readouterr().err
