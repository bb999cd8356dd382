"""A folder of audio files with transcripts: same-stem .txt files, or a TSV/CSV list of path,text[,speaker].

Layout 1 (no list file): every audio file under `corpus_dir` (recursive; .wav .flac .ogg .mp3 .sph .opus,
any case) with a same-stem .txt transcript beside it::

    corpus/alice/hello.wav   corpus/alice/hello.txt   ->  id "alice-hello", speaker "alice"

Layout 2 (`list_file`): a .tsv (tab) or .csv (comma) file, one utterance per row: path, text and an optional
speaker; a first row naming the columns (`path`, `text`, optional `speaker`, any order) is allowed. Relative
paths resolve against `corpus_dir`.

Ids are the audio path relative to `corpus_dir` without its extension, '/' replaced by '-'. The speaker,
unless listed, is the audio file's parent folder name. Every unusable input (no transcript, empty text,
unreadable audio, missing listed file, duplicate id) is listed in `out_dir/skipped.tsv` with the reason.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from asrkit.data.text import normalize_text
from asrkit.errors import AsrkitError
from asrkit.prepare.common import PrepareResult, check_writable, finish, keep_measured
from asrkit.records import Failure, Utterance

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".sph", ".opus")
_LIST_DELIMITERS = {".tsv": "\t", ".csv": ","}


@dataclass(frozen=True)
class _Candidate:
    """An audio file with its normalised transcript, before its duration is measured."""

    path: Path
    utt_id: str
    text: str
    speaker: str


def prepare(corpus_dir: Path, out_dir: Path, *, list_file: Path | None = None, name: str = "all",
            dev_fraction: float = 0.0, test_fraction: float = 0.0, seed: int = 0, workers: int = 4) -> PrepareResult:
    """Write manifests for a folder of audio + transcripts into `out_dir`.

    With both fractions 0 every utterance goes to the split `name`; otherwise a seeded random split into
    `train`, `dev` and `test` (by utterance, not by speaker). Returns the splits and what was skipped.
    """
    corpus_dir = Path(corpus_dir)
    if not corpus_dir.exists():
        raise AsrkitError(f"{corpus_dir}: corpus folder not found; give the folder holding the audio files")
    if not corpus_dir.is_dir():
        raise AsrkitError(f"{corpus_dir}: not a folder; give the folder holding the audio files")
    _check_fractions(dev_fraction, test_fraction)
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise AsrkitError(f"split name {name!r} must be a plain file name such as 'train' or 'all'")
    if list_file is None:
        candidates, skipped = _scan_folder(corpus_dir)
    else:
        candidates, skipped = _read_list(Path(list_file), corpus_dir)
    check_writable(Path(out_dir))
    pending = [(c.path, Utterance(c.utt_id, str(c.path.resolve()), 0.0, c.text, c.speaker)) for c in candidates]
    utts = keep_measured(pending, skipped, workers, Path(out_dir))
    if dev_fraction == 0 and test_fraction == 0:
        splits = {name: utts}
    else:
        splits = split_random(utts, dev_fraction, test_fraction, seed)
    return finish(Path(out_dir), splits, skipped)


def _check_fractions(dev_fraction: float, test_fraction: float) -> None:
    for value, what in ((dev_fraction, "dev_fraction"), (test_fraction, "test_fraction")):
        if not 0.0 <= value < 1.0:
            raise AsrkitError(f"{what} {value} must be in [0, 1)")
    if dev_fraction + test_fraction >= 1.0:
        raise AsrkitError(f"dev_fraction {dev_fraction} + test_fraction {test_fraction} must be below 1 "
                          "to leave utterances for training")


def _scan_folder(corpus_dir: Path) -> tuple[list[_Candidate], list[Failure]]:
    """Every audio file under `corpus_dir` with its same-stem .txt transcript; the rest as `Failure`s."""
    audio = sorted(p for p in corpus_dir.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
    if not audio:
        raise AsrkitError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) under {corpus_dir}; expected audio "
                          "files with same-stem .txt transcripts or --list FILE (a TSV/CSV of path,text)")
    candidates: list[_Candidate] = []
    skipped: list[Failure] = []
    for path in audio:
        transcript = path.with_suffix(".txt")
        if not transcript.is_file():
            skipped.append(Failure(path=str(path), reason=f"no transcript: expected {transcript.name} beside it"))
            continue
        try:
            raw = transcript.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as err:
            skipped.append(Failure(path=str(path),
                                   reason=f"cannot read transcript {transcript.name} as UTF-8 text ({err})"))
            continue
        candidates.append(_Candidate(path, make_id(path, corpus_dir), normalize_text(raw), path.parent.name))
    return _drop_unusable(candidates, skipped)


def make_id(path: Path, corpus_dir: Path) -> str:
    """The path relative to `corpus_dir` without extension, '/' replaced by '-' (the stem if outside it)."""
    try:
        rel = path.resolve().relative_to(corpus_dir.resolve())
    except ValueError:
        return path.stem
    return rel.with_suffix("").as_posix().replace("/", "-")


def _drop_unusable(candidates: list[_Candidate], skipped: list[Failure]) -> tuple[list[_Candidate], list[Failure]]:
    """Move empty transcripts and duplicate ids (the later one) to `skipped`."""
    kept: list[_Candidate] = []
    first: dict[str, Path] = {}
    for cand in candidates:
        if not cand.text:
            skipped.append(Failure(path=str(cand.path),
                                   reason="empty transcript (nothing left after text normalisation)"))
        elif cand.utt_id in first:
            skipped.append(Failure(path=str(cand.path), reason=f"duplicate id {cand.utt_id!r} (already used by "
                                                               f"{first[cand.utt_id]}); rename one of the files"))
        else:
            first[cand.utt_id] = cand.path
            kept.append(cand)
    return kept, skipped


def _read_list(list_file: Path, corpus_dir: Path) -> tuple[list[_Candidate], list[Failure]]:
    """Rows of a TSV/CSV list as candidates; a listed file that does not exist is a `Failure`."""
    rows = read_list_rows(list_file)
    candidates: list[_Candidate] = []
    skipped: list[Failure] = []
    for path_str, text, speaker in rows:
        path = Path(path_str).expanduser()
        if not path.is_absolute():
            path = corpus_dir / path
        if not path.is_file():
            skipped.append(Failure(path=str(path), reason=f"listed in {list_file.name} but the file does not exist"))
            continue
        speaker = speaker or path.parent.name
        candidates.append(_Candidate(path, make_id(path, corpus_dir), normalize_text(text), speaker))
    return _drop_unusable(candidates, skipped)


def read_list_rows(list_file: Path) -> list[tuple[str, str, str]]:
    """(path, text, speaker) per data row of a .tsv/.csv list; raises AsrkitError naming file:line if malformed."""
    delimiter = _LIST_DELIMITERS.get(list_file.suffix.lower())
    if delimiter is None:
        raise AsrkitError(f"{list_file}: list file must end in .tsv (tab-separated) or .csv (comma-separated)")
    if not list_file.is_file():
        raise AsrkitError(f"{list_file}: list file not found")
    quoting: Literal[0, 1, 2, 3] = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL  # TSV: quotes are text
    expected = "path<TAB>text[<TAB>speaker]" if delimiter == "\t" else "path,text[,speaker] (quote text with commas)"
    rows: list[tuple[str, str, str]] = []
    columns: tuple[int, int, int | None] = (0, 1, 2)
    width: int | None = None
    try:
        with list_file.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, delimiter=delimiter, quoting=quoting, strict=True)
            for row in reader:
                where = f"{list_file}:{reader.line_num}"
                if not any(cell.strip() for cell in row):
                    continue
                if not rows and width is None and _is_header(row):
                    columns, width = _header_columns(row, where), len(row)
                    continue
                rows.append(_parse_row(row, columns, width, where, expected))
    except OSError as err:
        raise AsrkitError(f"{list_file}: cannot read the list file ({err.strerror or err})") from None
    except UnicodeDecodeError:
        raise AsrkitError(f"{list_file}: not UTF-8 text; save the list as UTF-8") from None
    except csv.Error as err:
        raise AsrkitError(f"{list_file}:{reader.line_num}: {err}; expected {expected}") from None
    if not rows:
        raise AsrkitError(f"{list_file}: no rows; expected one utterance per line: {expected}")
    return rows


def _is_header(row: list[str]) -> bool:
    """A first row with a cell named `path` names the columns (no real audio file is called just `path`)."""
    return any(cell.strip().lower() == "path" for cell in row)


def _header_columns(row: list[str], where: str) -> tuple[int, int, int | None]:
    names = [cell.strip().lower() for cell in row]
    if "path" not in names or "text" not in names:
        raise AsrkitError(f"{where}: header {row!r} must name the columns `path` and `text` (optional `speaker`)")
    return names.index("path"), names.index("text"), names.index("speaker") if "speaker" in names else None


def _parse_row(row: list[str], columns: tuple[int, int, int | None], width: int | None, where: str,
               expected: str) -> tuple[str, str, str]:
    if width is None and len(row) not in (2, 3):
        raise AsrkitError(f"{where}: found {len(row)} column(s); expected {expected}")
    if width is not None and len(row) != width:
        raise AsrkitError(f"{where}: found {len(row)} column(s) but the header names {width}; expected {expected}")
    path_col, text_col, speaker_col = columns
    path = row[path_col].strip()
    if not path:
        raise AsrkitError(f"{where}: empty path; expected {expected}")
    speaker = row[speaker_col].strip() if speaker_col is not None and speaker_col < len(row) else ""
    return path, row[text_col], speaker


def split_random(utts: list[Utterance], dev_fraction: float, test_fraction: float,
                 seed: int) -> dict[str, list[Utterance]]:
    """Seeded random train/dev/test split by utterance; a non-zero fraction gets at least one utterance."""
    order = sorted(utts, key=lambda u: u.id)
    random.Random(seed).shuffle(order)
    n_test = max(1, round(len(order) * test_fraction)) if test_fraction > 0 else 0
    n_dev = max(1, round(len(order) * dev_fraction)) if dev_fraction > 0 else 0
    if order and n_test + n_dev >= len(order):
        raise AsrkitError(f"only {len(order)} usable utterance(s): too few for dev_fraction {dev_fraction} and "
                          f"test_fraction {test_fraction}; lower the fractions or add data")
    test, dev, train = order[:n_test], order[n_test:n_test + n_dev], order[n_test + n_dev:]
    return {name: sorted(part, key=lambda u: u.id) for name, part in (("train", train), ("dev", dev), ("test", test))}
