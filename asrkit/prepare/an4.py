"""The CMU AN4 census corpus: train and test splits as the corpus defines them, plus an optional dev split.

Layout (`corpus_dir` is the `an4/` folder, or a folder holding it)::

    etc/an4_train.fileids          one audio path per line, relative to wav/, no extension
    etc/an4_train.transcription    "<s> TEXT </s> (fileid)" per line
    etc/an4_test.fileids, etc/an4_test.transcription   (when the test part is present)
    wav/an4_clstk/<speaker>/<fileid>.sph   NIST SPHERE (the an4_sphere release), or
    wav/an4_clstk/<speaker>/<fileid>.raw   headerless 16 kHz 16-bit big-endian PCM (the an4_raw.bigendian one)

SPHERE files are read directly. Headerless .raw files cannot be opened without their format, so they are
converted once to `out_dir/flac/<fileid>.flac` (kept, so a rerun converts only what is missing).

Splits: `train` and `test` as listed by the fileids files; with `dev_speakers=N`, N training speakers
(the folder name in the fileid), spread evenly over their sorted names so both `f*` and `m*` speakers are
represented, move with all their utterances to a speaker-disjoint `dev` split. A fileid without a
transcription line, a transcription line whose fileid is not listed, duplicates and missing or unreadable
audio are listed in `out_dir/skipped.tsv`.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from asrkit.data.text import normalize_text
from asrkit.errors import AsrkitError
from asrkit.io import atomic_path
from asrkit.prepare.common import PrepareResult, check_writable, finish, keep_measured, progress_bar
from asrkit.records import Failure, Utterance

PARTS = ("train", "test")
RAW_SAMPLE_RATE = 16000  # an4_raw.bigendian: headerless 16 kHz, 16-bit signed, big-endian, mono
_LINE = re.compile(r"^\s*(?:<s>)?\s*(?P<text>.*?)\s*(?:</s>)?\s*\((?P<id>[^()\s]+)\)\s*$")


@dataclass(frozen=True)
class _Entry:
    """A fileid with its transcription, before its audio is found and measured."""

    fileid: str  # e.g. an4_clstk/fash/an251-fash-b
    text: str
    where: str  # fileids file:line

    @property
    def utt_id(self) -> str:
        return self.fileid.rsplit("/", 1)[-1]

    @property
    def speaker(self) -> str:
        parts = self.fileid.split("/")
        return parts[-2] if len(parts) >= 2 else ""


def prepare(corpus_dir: Path, out_dir: Path, *, dev_speakers: int = 0, workers: int = 4) -> PrepareResult:
    """Write train.jsonl, test.jsonl (if the test part is present) and dev.jsonl (if dev_speakers > 0)."""
    root = find_root(Path(corpus_dir))
    if dev_speakers < 0 or workers < 1:
        raise AsrkitError(f"dev_speakers {dev_speakers} must be 0 or more and workers {workers} at least 1")
    out_dir = Path(out_dir)
    check_writable(out_dir)
    skipped: list[Failure] = []
    splits: dict[str, list[Utterance]] = {}
    for part in PARTS:
        fileids = root / "etc" / f"an4_{part}.fileids"
        if part == "test" and not fileids.is_file():
            continue
        entries = _read_part(root, part, skipped)
        splits[part] = _build(root, out_dir, entries, skipped, workers)
    if dev_speakers:
        splits["train"], splits["dev"] = split_speakers(splits["train"], dev_speakers)
    return finish(out_dir, splits, skipped)


def find_root(corpus_dir: Path) -> Path:
    """`corpus_dir` if it holds etc/an4_train.fileids, else its `an4/` subfolder; AsrkitError otherwise."""
    for root in (corpus_dir, corpus_dir / "an4"):
        if (root / "etc" / "an4_train.fileids").is_file():
            return root
    raise AsrkitError(f"{corpus_dir}: no etc/an4_train.fileids; give the AN4 folder holding etc/ and wav/ "
                      "(from an4_sphere.tar.gz or an4_raw.bigendian.tar.gz)")


def _read_part(root: Path, part: str, skipped: list[Failure]) -> list[_Entry]:
    """Pair the fileids of one part with their transcription lines; unmatched ones go to `skipped`."""
    fileids_path = root / "etc" / f"an4_{part}.fileids"
    trans_path = root / "etc" / f"an4_{part}.transcription"
    if not trans_path.is_file():
        raise AsrkitError(f"{trans_path}: not found; AN4's etc/ folder holds an4_{part}.fileids and "
                          f"an4_{part}.transcription side by side")
    texts = _read_transcription(trans_path, skipped)
    entries: list[_Entry] = []
    seen: dict[str, str] = {}
    for lineno, line in enumerate(_lines(fileids_path), 1):
        fileid, where = line.strip(), f"{fileids_path}:{lineno}"
        if not fileid:
            continue
        key = fileid.rsplit("/", 1)[-1]
        if key in seen:
            skipped.append(Failure(path=where, reason=f"duplicate fileid {fileid} (first at {seen[key]})"))
            continue
        seen[key] = where
        found = texts.pop(key, None)
        if found is None:
            skipped.append(Failure(path=where, reason=f"fileid {fileid} has no line in {trans_path.name}"))
            continue
        entries.append(_Entry(fileid, found[0], where))
    for key, (_, where) in texts.items():
        skipped.append(Failure(path=where, reason=f"transcription of {key} but no such fileid in {fileids_path.name}"))
    return entries


def _read_transcription(path: Path, skipped: list[Failure]) -> dict[str, tuple[str, str]]:
    """{utterance id: (raw text, file:line)} from `<s> TEXT </s> (id)` lines."""
    texts: dict[str, tuple[str, str]] = {}
    for lineno, line in enumerate(_lines(path), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        match = _LINE.match(line)
        if match is None:
            skipped.append(Failure(path=where,
                                   reason=f"not a transcription line `<s> TEXT </s> (fileid)`: {line.strip()!r}"))
            continue
        key = match["id"]
        if key in texts:
            skipped.append(Failure(path=where, reason=f"duplicate transcription of {key} (first at {texts[key][1]})"))
            continue
        texts[key] = (match["text"], where)
    return texts


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as err:
        raise AsrkitError(f"{path}: cannot read ({err.strerror or err})") from None


def _build(root: Path, out_dir: Path, entries: list[_Entry], skipped: list[Failure],
           workers: int) -> list[Utterance]:
    """Find each entry's audio (converting .raw to FLAC), measure it, and make the utterances."""
    located: list[tuple[_Entry, Path]] = []
    raws: list[tuple[_Entry, Path, Path]] = []
    for entry in entries:
        sph, raw = root / "wav" / f"{entry.fileid}.sph", root / "wav" / f"{entry.fileid}.raw"
        if sph.is_file():
            located.append((entry, sph))
        elif raw.is_file():
            raws.append((entry, raw, out_dir / "flac" / f"{entry.fileid}.flac"))
        else:
            skipped.append(Failure(path=str(sph),
                                   reason=f"audio not found (no {sph.name} or {raw.name}) for {entry.where}"))
    located += _convert_raws(raws, skipped, workers)
    pending: list[tuple[Path, Utterance]] = []
    for entry, audio in located:
        text = normalize_text(entry.text)
        if not text:
            skipped.append(Failure(path=entry.where, reason=f"empty transcription for {entry.utt_id}"))
        else:
            pending.append((audio, Utterance(entry.utt_id, str(audio.resolve()), 0.0, text, entry.speaker)))
    return sorted(keep_measured(pending, skipped, workers, out_dir), key=lambda u: u.id)


def _convert_raws(raws: list[tuple[_Entry, Path, Path]], skipped: list[Failure],
                  workers: int) -> list[tuple[_Entry, Path]]:
    """Convert headerless big-endian .raw files to FLAC in parallel (existing FLACs are kept)."""
    done: list[tuple[_Entry, Path]] = []
    if not raws:
        return done
    with progress_bar("converting AN4 .raw to FLAC", len(raws)) as advance, ThreadPoolExecutor(workers) as pool:
        for (entry, raw, flac), error in zip(raws, pool.map(lambda r: raw_to_flac(r[1], r[2]), raws), strict=True):
            advance()
            if error:
                skipped.append(Failure(path=str(raw), reason=error))
            else:
                done.append((entry, flac))
    return done


def raw_to_flac(raw: Path, flac: Path) -> str | None:
    """Convert one headerless 16 kHz 16-bit big-endian file; returns None, or the reason it failed."""
    import soundfile as sf

    if flac.is_file():
        return None
    if raw.stat().st_size < 2:
        return "empty .raw file (no samples)"
    try:
        data, _ = sf.read(str(raw), samplerate=RAW_SAMPLE_RATE, channels=1, format="RAW", subtype="PCM_16",
                          endian="BIG", dtype="int16")
        flac.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(flac) as tmp:
            sf.write(str(tmp), data, RAW_SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    except Exception as err:  # report, never crash on one bad file
        return f"cannot convert .raw to FLAC ({type(err).__name__}: {err})"
    return None


def split_speakers(train: list[Utterance], n: int) -> tuple[list[Utterance], list[Utterance]]:
    """Move `n` speakers, spread evenly over the sorted speaker names, from `train` to a new dev list."""
    speakers = sorted({u.speaker for u in train})
    if n >= len(speakers):
        raise AsrkitError(f"dev_speakers {n} must be below the {len(speakers)} training speakers with usable "
                          "audio, to leave some for training")
    chosen = {speakers[int((i + 0.5) * len(speakers) / n)] for i in range(n)}
    return [u for u in train if u.speaker not in chosen], [u for u in train if u.speaker in chosen]
