"""LibriSpeech (openslr.org/12): one manifest per subset, from a corpus folder, tarballs on disk, or a download.

Layout inside each official tarball, and of an extracted corpus::

    LibriSpeech/<subset>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac
    LibriSpeech/<subset>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt   (lines "<utt-id> TRANSCRIPT")

Where a subset is looked for, in order:
1. `corpus_dir/LibriSpeech/<subset>/` or `corpus_dir/<subset>/` (an extracted corpus);
2. `out_dir/download/LibriSpeech/<subset>/`, if an earlier run finished extracting it there;
3. `corpus_dir/<subset>.tar.gz` (a tarball already on disk), extracted safely into `out_dir/download/`;
4. with `download=True`: `<base_url>/<subset>.tar.gz` fetched into `out_dir/download/` (resumable, MD5-checked
   against the official value), then extracted there. The tarball is kept; delete it by hand to save space.

The manifest of a subset is `out_dir/<subset>.jsonl`: id `<speaker>-<chapter>-<utt>`, the speaker, and the
chapter under the key `chapter`; the text is normalised (lower case, apostrophes kept). A FLAC without a
transcript line, a transcript line without its FLAC, duplicate ids and unreadable audio are listed in
`out_dir/skipped.tsv`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from asrkit.data.text import normalize_text
from asrkit.errors import AsrkitError
from asrkit.prepare import download as dl
from asrkit.prepare.common import PrepareResult, check_writable, finish, keep_measured
from asrkit.progress import say
from asrkit.records import Failure, Utterance

FULL_SUBSETS = ("dev-clean", "dev-other", "test-clean", "test-other", "train-clean-100", "train-clean-360",
                "train-other-500")
MINI_SUBSETS = ("dev-clean-2", "train-clean-5")  # Mini LibriSpeech (openslr.org/31), same layout
SUBSETS = FULL_SUBSETS + MINI_SUBSETS
HELDOUT = "dev-heldout"  # the split that --dev-speakers moves training speakers into
_DONE = ".{subset}.extracted"  # marker in out_dir/download: extraction of that subset finished


@dataclass(frozen=True)
class _Line:
    """One transcript line: the utterance id, its raw text and where it was read (file:line)."""

    utt_id: str
    text: str
    where: str


def prepare(out_dir: Path, *, subsets: Sequence[str], corpus_dir: Path | None = None, download: bool = False,
            base_url: str | None = None, workers: int = 4, dev_speakers: Sequence[str] = ()) -> PrepareResult:
    """Write `out_dir/<subset>.jsonl` for each subset (see the module docstring for where subsets are found),
    and `dev-heldout.jsonl` with the utterances of `dev_speakers` taken out of the train-* subsets."""
    subsets = check_subsets(subsets)
    heldout = list(dict.fromkeys(s.strip() for s in dev_speakers if s.strip()))
    if heldout and not any(s.startswith("train-") for s in subsets):
        raise AsrkitError(f"--dev-speakers {','.join(heldout)} needs a train-* subset in --subsets to take them "
                          f"from (got {', '.join(subsets)})")
    out_dir = Path(out_dir)
    if corpus_dir is not None and not Path(corpus_dir).is_dir():
        raise AsrkitError(f"{corpus_dir}: corpus folder not found; give the folder holding LibriSpeech/ or the "
                          "<subset>.tar.gz files, or use --download")
    check_writable(out_dir)
    splits: dict[str, list[Utterance]] = {}
    skipped: list[Failure] = []
    for subset in subsets:
        subset_dir = locate_subset(subset, out_dir, corpus_dir=corpus_dir, download=download, base_url=base_url)
        splits[subset] = _read_subset(subset_dir, out_dir, skipped, workers)
    if heldout:
        splits[HELDOUT] = hold_out(splits, heldout)
    return finish(out_dir, splits, skipped)


def hold_out(splits: dict[str, list[Utterance]], speakers: list[str]) -> list[Utterance]:
    """Move every utterance of `speakers` out of the train-* splits (in place); return them. AsrkitError naming
    the speakers that no train-* subset has, or when no training speaker would be left."""
    chosen = set(speakers)
    train = [name for name in splits if name.startswith("train-")]
    present = {u.speaker for name in train for u in splits[name]}
    missing = [s for s in speakers if s not in present]
    if missing:
        raise AsrkitError(f"--dev-speakers: speaker(s) {', '.join(missing)} not in {', '.join(train)} (its "
                          f"speakers: {', '.join(sorted(present, key=_speaker_key)[:40])})")
    if present <= chosen:
        raise AsrkitError(f"--dev-speakers holds out every speaker of {', '.join(train)}; leave some for training")
    moved: list[Utterance] = []
    for name in train:
        moved += [u for u in splits[name] if u.speaker in chosen]
        splits[name] = [u for u in splits[name] if u.speaker not in chosen]
    return moved


def _speaker_key(speaker: str | None) -> tuple[int, str]:
    text = speaker or ""
    return (int(text), text) if text.isdigit() else (1 << 62, text)


def check_subsets(subsets: Sequence[str]) -> list[str]:
    """The subsets, deduplicated in order; AsrkitError naming the unknown ones and listing the valid ones."""
    chosen = list(dict.fromkeys(s.strip() for s in subsets if s.strip()))
    if not chosen:
        raise AsrkitError(f"no LibriSpeech subset given; choose from {', '.join(SUBSETS)}")
    unknown = [s for s in chosen if s not in SUBSETS]
    if unknown:
        raise AsrkitError(f"unknown LibriSpeech subset(s) {', '.join(unknown)}; valid: {', '.join(SUBSETS)}")
    return chosen


def locate_subset(subset: str, out_dir: Path, *, corpus_dir: Path | None = None, download: bool = False,
                  base_url: str | None = None) -> Path:
    """The extracted `<subset>/` folder, extracting a tarball on disk or downloading one if needed."""
    work = Path(out_dir) / "download"
    if corpus_dir is not None:
        for candidate in (Path(corpus_dir) / "LibriSpeech" / subset, Path(corpus_dir) / subset):
            if candidate.is_dir():
                return candidate
    extracted = work / "LibriSpeech" / subset
    if (work / _DONE.format(subset=subset)).is_file() and extracted.is_dir():
        return extracted
    tarball = Path(corpus_dir) / f"{subset}.tar.gz" if corpus_dir is not None else None
    if tarball is None or not tarball.is_file():
        if not download:
            where = f"in {corpus_dir} (looked for LibriSpeech/{subset}/, {subset}/, {subset}.tar.gz)" \
                if corpus_dir is not None else "(no --corpus-dir given)"
            raise AsrkitError(f"LibriSpeech subset {subset} not found {where}; pass --download to fetch it, "
                              "or --corpus-dir pointing at the extracted corpus or the tarballs")
        url = dl.librispeech_url(subset, base_url)
        say(f"downloading {url} into {work}")
        tarball = dl.download(url, work / f"{subset}.tar.gz", md5=dl.LIBRISPEECH_MD5.get(subset))
    return _extract(tarball, subset, work)


def _extract(tarball: Path, subset: str, work: Path) -> Path:
    say(f"extracting {tarball} into {work}")
    dl.safe_extract(tarball, work)
    extracted = work / "LibriSpeech" / subset
    if not extracted.is_dir():
        raise AsrkitError(f"{tarball}: no LibriSpeech/{subset}/ folder inside; is it the official "
                          f"{subset}.tar.gz from openslr.org/12?")
    (work / _DONE.format(subset=subset)).touch()
    return extracted


def _read_subset(subset_dir: Path, out_dir: Path, skipped: list[Failure], workers: int) -> list[Utterance]:
    """Utterances of one extracted subset; problems are appended to `skipped`."""
    flacs = sorted(subset_dir.glob("*/*/*.flac"))
    lines = _read_transcripts(subset_dir, skipped)
    if not flacs and not lines:
        raise AsrkitError(f"{subset_dir}: no <speaker>/<chapter>/*.flac or *.trans.txt files; is this an "
                          "extracted LibriSpeech subset?")
    paired: list[tuple[Path, _Line]] = []
    for flac in flacs:
        line = lines.pop(flac.stem, None)
        if line is None:
            trans = f"{flac.parent.parent.name}-{flac.parent.name}.trans.txt"
            skipped.append(Failure(path=str(flac), reason=f"no transcript: id {flac.stem} has no line in {trans}"))
        else:
            paired.append((flac, line))
    for line in lines.values():
        skipped.append(Failure(path=line.where, reason=f"transcript line for {line.utt_id} but no audio file "
                                                       f"{line.utt_id}.flac in its chapter folder"))
    return _measure_pairs(paired, out_dir, skipped, workers, read_metadata(subset_dir.parent))


def _read_transcripts(subset_dir: Path, skipped: list[Failure]) -> dict[str, _Line]:
    """Every `*.trans.txt` line of the subset by utterance id; malformed and duplicate lines go to `skipped`."""
    lines: dict[str, _Line] = {}
    for trans in sorted(subset_dir.glob("*/*/*.trans.txt")):
        try:
            content = trans.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            skipped.append(Failure(path=str(trans), reason=f"cannot read transcript file as UTF-8 text ({err})"))
            continue
        for lineno, raw in enumerate(content.splitlines(), 1):
            if not raw.strip():
                continue
            where = f"{trans}:{lineno}"
            utt_id, _, text = raw.strip().partition(" ")
            if utt_id in lines:
                skipped.append(Failure(path=where, reason=f"duplicate id {utt_id} (first at {lines[utt_id].where})"))
                continue
            lines[utt_id] = _Line(utt_id, text, where)
    return lines


def _measure_pairs(paired: list[tuple[Path, _Line]], out_dir: Path, skipped: list[Failure], workers: int,
                   meta: dict[tuple[str, str], dict[str, str]]) -> list[Utterance]:
    pending: list[tuple[Path, Utterance]] = []
    for flac, line in paired:
        text = normalize_text(line.text)
        if not text:
            skipped.append(Failure(path=line.where, reason=f"empty transcript for {line.utt_id}"))
            continue
        speaker, chapter = flac.parent.parent.name, flac.parent.name
        extra = {"chapter": chapter}
        extra.update(meta.get(("speaker", speaker), {}))
        extra.update(meta.get(("chapter", chapter), {}))
        pending.append((flac, Utterance(line.utt_id, str(flac.resolve()), 0.0, text, speaker, extra)))
    return keep_measured(pending, skipped, workers, out_dir)


def read_metadata(root: Path) -> dict[tuple[str, str], dict[str, str]]:
    """('speaker', id) -> {'gender': 'F'|'M'} from root/SPEAKERS.TXT and ('chapter', id) -> {'book_id': ...} from
    root/CHAPTERS.TXT (pipe-separated, ';' comments), for the files that exist. A line that does not parse is
    named on stderr and left out of the metadata (the utterances are kept either way)."""
    meta: dict[tuple[str, str], dict[str, str]] = {}
    tables = (("SPEAKERS.TXT", "speaker", 1, "gender"), ("CHAPTERS.TXT", "chapter", 5, "book_id"))
    for name, kind, column, key in tables:
        path = root / name
        if not path.is_file():
            continue
        for lineno, raw in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if not raw.strip() or raw.lstrip().startswith(";"):
                continue
            fields = [f.strip() for f in raw.split("|")]
            if len(fields) <= column or not fields[0] or not fields[column]:
                say(f"{path}:{lineno}: not a '{name}' line with {column + 1}+ '|'-separated fields; ignored")
                continue
            meta[(kind, fields[0])] = {key: fields[column]}
    return meta
