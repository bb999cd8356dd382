"""Mozilla Common Voice: an extracted release (`clips/*.mp3` and the TSV files) -> FLAC cache + manifests.

Layout of `cv_dir` (one language of a release, e.g. `cv-corpus-17.0-2024-03-15/en/`)::

    clips/common_voice_en_123.mp3 ...
    train.tsv  dev.tsv  test.tsv  validated.tsv  other.tsv  invalidated.tsv

The TSVs are read tab-separated with quoting off (Common Voice writes sentences raw); the columns used are
`path`, `sentence`, `client_id` (the speaker), `up_votes`, `down_votes` and, when present, `locale`.

Splits: each requested split is read from `<split>.tsv`. When none of train.tsv, dev.tsv and test.tsv exist
(a sample holding only validated.tsv), validated.tsv is divided among the requested splits by speaker,
deterministically (speakers ordered by the SHA-1 of their client_id): dev and test get 10% of the speakers
each (at least one, as long as one is left for train), train gets the rest. The splits are speaker-disjoint.
When only some of the split TSVs exist, that is an error naming the missing ones.

Each usable clip is decoded (libsndfile >= 1.1 reads MP3), down-mixed, resampled to `sample_rate` and written
to `out_dir/flac/<clip>.flac` (16-bit) through a temporary file, in a thread pool; a FLAC already there at the
right rate is kept, so a rerun converts only what is missing. Clips are dropped, and listed with the reason in
`out_dir/skipped.tsv`, when: the file is absent, it cannot be decoded (libsndfile's message), up_votes <
`min_upvotes`, down_votes > up_votes, the text holds digits or letters outside the language's alphabet, the
text is empty after normalisation, the path repeats one already used, or the duration is outside
[`min_duration`, `max_duration`].

Text normalisation (`normalize_sentence`): the named normaliser commonvoice-<language> of
asrkit.data.text.NORMALISERS (recorded in out_dir/normaliser.json): Unicode NFKC, typographic apostrophes to `'`,
lower case (casefold for English), punctuation and symbols to spaces, apostrophes kept inside words; each of
de, en, es, fr, it has its letters, and English folds accents first (café -> cafe) and spells æ, œ as ae, oe.
Other languages (normaliser commonvoice) keep any Unicode letter.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asrkit.data.audio import audio_info, load_audio
from asrkit.data.text import NORMALISERS, get_normaliser
from asrkit.errors import AsrkitError, AudioError
from asrkit.io import atomic_path
from asrkit.prepare.common import PrepareResult, check_writable, finish, progress_bar
from asrkit.progress import say
from asrkit.records import Failure, Utterance

SPLITS = ("train", "dev", "test", "validated", "other", "invalidated")  # the release's TSV files
HELD_OUT_SHARE = 0.1  # validated.tsv fallback: share of speakers for dev and for test


@dataclass(frozen=True)
class _Row:
    """One TSV row: the clip, where it was listed (file:line), its sentence, speaker and votes."""

    split: str
    clip: Path
    where: str
    sentence: str
    speaker: str
    up_votes: int | None
    down_votes: int | None


def prepare(cv_dir: Path, out_dir: Path, *, lang: str = "en", splits: Sequence[str] = ("train", "dev", "test"),
            min_upvotes: int = 0, min_duration: float = 0.5, max_duration: float = 20.0, sample_rate: int = 16000,
            workers: int = 4) -> PrepareResult:
    """Convert the clips of the requested splits to FLAC and write `<split>.jsonl` (see the module docstring)."""
    cv_dir, out_dir = Path(cv_dir), Path(out_dir)
    splits = _check_args(cv_dir, lang, splits, min_upvotes, min_duration, max_duration, sample_rate, workers)
    check_mp3_support()
    check_writable(out_dir)
    skipped: list[Failure] = []
    rows = read_splits(cv_dir, splits, lang, skipped)
    candidates = _filter_rows(rows, lang, min_upvotes, skipped)
    converted = _convert_all(candidates, out_dir / "flac", sample_rate, workers, skipped)
    result: dict[str, list[Utterance]] = {name: [] for name in splits}
    for (row, text), (flac, duration) in converted:
        if not min_duration <= duration <= max_duration:
            skipped.append(Failure(path=str(row.clip),
                                   reason=f"duration {duration:.2f} s outside [{min_duration}, {max_duration}] s"))
            continue
        result[row.split].append(Utterance(row.clip.stem, str(flac.resolve()), duration, text, row.speaker))
    return finish(out_dir, result, skipped, normaliser=normalizer_name(lang))


def check_mp3_support() -> None:
    """Raise once, up front, if the libsndfile under soundfile cannot decode MP3."""
    import soundfile as sf

    if "MP3" not in sf.available_formats():
        raise AsrkitError(f"this libsndfile ({sf.__libsndfile_version__}) cannot decode MP3, which Common Voice "
                          "clips are; libsndfile >= 1.1 is needed: `pip install -U soundfile` installs a wheel "
                          "that bundles it (or upgrade the system libsndfile)")


def _check_args(cv_dir: Path, lang: str, splits: Sequence[str], min_upvotes: int, min_duration: float,
                max_duration: float, sample_rate: int, workers: int) -> list[str]:
    if not (cv_dir / "clips").is_dir():
        raise AsrkitError(f"{cv_dir}: no clips/ folder; give the language folder of an extracted Common Voice "
                          "release (holding clips/ and the .tsv files)")
    if not lang or not lang.replace("-", "").replace("_", "").isalnum():
        raise AsrkitError(f"language {lang!r} is not a Common Voice locale code such as en, de, pt-BR")
    chosen = list(dict.fromkeys(s.strip() for s in splits if s.strip()))
    unknown = [s for s in chosen if s not in SPLITS]
    if not chosen or unknown:
        raise AsrkitError(f"unknown Common Voice split(s) {', '.join(unknown) or '(none given)'}; "
                          f"valid: {', '.join(SPLITS)}")
    if min_upvotes < 0:
        raise AsrkitError(f"min_upvotes {min_upvotes} must be 0 or more")
    if not 0 <= min_duration < max_duration:
        raise AsrkitError(f"min_duration {min_duration} / max_duration {max_duration}: need 0 <= min < max")
    if sample_rate < 1000 or workers < 1:
        raise AsrkitError(f"sample_rate {sample_rate} must be >= 1000 and workers {workers} >= 1")
    return chosen


def read_splits(cv_dir: Path, splits: list[str], lang: str, skipped: list[Failure]) -> list[_Row]:
    """Rows of every requested split's TSV, or of validated.tsv divided by speaker when none of them exist."""
    missing = [s for s in splits if not (cv_dir / f"{s}.tsv").is_file()]
    if not missing:
        return [row for s in splits for row in read_tsv(cv_dir / f"{s}.tsv", s, lang, skipped)]
    present = sorted(p.name for p in cv_dir.glob("*.tsv"))
    official = {"train", "dev", "test"}
    if (cv_dir / "validated.tsv").is_file() and set(missing) == set(splits) <= official \
            and not any((cv_dir / f"{s}.tsv").is_file() for s in official):
        say(f"{cv_dir}: no train/dev/test.tsv; dividing validated.tsv by speaker into {', '.join(splits)}")
        rows = read_tsv(cv_dir / "validated.tsv", "validated", lang, skipped)
        owner = assign_speakers(sorted({r.speaker for r in rows}), splits)
        return [_with_split(r, owner[r.speaker]) for r in rows]
    raise AsrkitError(f"{cv_dir}: no {', '.join(s + '.tsv' for s in missing)} (found: {', '.join(present) or 'none'}); "
                      "choose --splits among the TSVs present")


def _with_split(row: _Row, split: str) -> _Row:
    return _Row(split, row.clip, row.where, row.sentence, row.speaker, row.up_votes, row.down_votes)


def assign_speakers(speakers: list[str], splits: Sequence[str]) -> dict[str, str]:
    """Speaker -> split, speaker-disjoint and deterministic (speakers in SHA-1 order of their id).

    With `train` among the splits, every other split gets HELD_OUT_SHARE of the speakers (at least one while
    one is left for train) and train the rest; without it the speakers are dealt round-robin.
    """
    order = sorted(speakers, key=lambda s: hashlib.sha1(s.encode("utf-8")).hexdigest())
    if "train" not in splits:
        return {spk: splits[i % len(splits)] for i, spk in enumerate(order)}
    owner: dict[str, str] = {}
    share = max(1, round(HELD_OUT_SHARE * len(order)))
    for split in (s for s in splits if s != "train"):
        for spk in order[len(owner):len(owner) + share]:
            if len(owner) < len(order) - 1:
                owner[spk] = split
    owner.update({spk: "train" for spk in order[len(owner):]})
    return owner


def read_tsv(tsv: Path, split: str, lang: str, skipped: list[Failure]) -> list[_Row]:
    """Rows of one Common Voice TSV; malformed rows go to `skipped`, a wrong header or locale raises."""
    clips = tsv.parent / "clips"
    rows: list[_Row] = []
    try:
        with tsv.open(encoding="utf-8", newline="") as f:
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            header = next(reader, None)
            cols = _columns(header, tsv)
            for line in reader:
                where = f"{tsv}:{reader.line_num}"
                if not any(cell.strip() for cell in line):
                    continue
                row = _parse_row(line, cols, where, split, clips, lang, skipped)
                if row is not None:
                    rows.append(row)
    except UnicodeDecodeError:
        raise AsrkitError(f"{tsv}: not UTF-8 text; is it a Common Voice TSV?") from None
    except OSError as err:
        raise AsrkitError(f"{tsv}: cannot read ({err.strerror or err})") from None
    return rows


def _columns(header: list[str] | None, tsv: Path) -> dict[str, int]:
    names = [h.strip() for h in header or []]
    missing = [c for c in ("path", "sentence") if c not in names]
    if missing:
        raise AsrkitError(f"{tsv}: header {names} lacks column(s) {', '.join(missing)}; expected a Common Voice "
                          "TSV with client_id, path, sentence, up_votes, down_votes, ...")
    return {name: i for i, name in enumerate(names)}


def _parse_row(line: list[str], cols: dict[str, int], where: str, split: str, clips: Path, lang: str,
               skipped: list[Failure]) -> _Row | None:
    needed = max(cols[c] for c in ("path", "sentence")) + 1
    if len(line) < needed or len(line) > len(cols):
        skipped.append(Failure(path=where, reason=f"row has {len(line)} field(s), the header names {len(cols)}"))
        return None

    def cell(name: str) -> str:
        i = cols.get(name)
        return line[i].strip() if i is not None and i < len(line) else ""

    locale = cell("locale")
    if locale and locale != lang:
        raise AsrkitError(f"{where}: clip of locale {locale!r} but the language is {lang!r}; pass --lang {locale}")
    try:
        up = int(cell("up_votes")) if cell("up_votes") else None
        down = int(cell("down_votes")) if cell("down_votes") else None
    except ValueError:
        skipped.append(Failure(path=where,
                               reason=f"votes {cell('up_votes')!r}/{cell('down_votes')!r} are not integers"))
        return None
    name = cell("path")
    if not name or Path(name).name != name:
        skipped.append(Failure(path=where, reason=f"path {name!r} is not a clip file name"))
        return None
    if not Path(name).suffix:
        name += ".mp3"  # early releases list clips without their extension
    return _Row(split, clips / name, where, line[cols["sentence"]], cell("client_id"), up, down)


def _filter_rows(rows: list[_Row], lang: str, min_upvotes: int,
                 skipped: list[Failure]) -> list[tuple[_Row, str]]:
    """(row, normalised text) for rows that pass the cheap checks; the others go to `skipped`."""
    kept: list[tuple[_Row, str]] = []
    first: dict[Path, str] = {}
    for row in rows:
        text, problem = normalize_sentence(row.sentence, lang)
        if row.clip in first:
            problem = f"duplicate path: listed again at {row.where} (first at {first[row.clip]})"
        elif not row.clip.is_file():
            problem = f"listed at {row.where} but absent from clips/"
        elif min_upvotes and (row.up_votes or 0) < min_upvotes:
            problem = f"too few up-votes ({row.up_votes or 0} < {min_upvotes})"
        elif row.up_votes is not None and row.down_votes is not None and row.down_votes > row.up_votes:
            problem = f"more down-votes than up-votes ({row.down_votes} > {row.up_votes})"
        first.setdefault(row.clip, row.where)
        if problem:
            skipped.append(Failure(path=str(row.clip), reason=problem))
        else:
            kept.append((row, text))
    return kept


def normalizer_name(lang: str) -> str:
    """The named normaliser (asrkit.data.text.NORMALISERS) of a Common Voice locale: commonvoice-<language> where
    the language has its own rule, else commonvoice (any Unicode letter)."""
    name = f"commonvoice-{lang.split('-')[0].lower()}"
    return name if name in NORMALISERS else "commonvoice"


def normalize_sentence(text: str, lang: str) -> tuple[str, str | None]:
    """(normalised text, None), or ("", reason) when the sentence cannot be used for `lang`.

    >>> normalize_sentence("\u201cCaf\u00e9s,\u201d she said \u2014 it\u2019s late!", "en")
    ("cafes she said it's late", None)
    """
    normalised, problem = get_normaliser(normalizer_name(lang))(text)
    if problem:
        return "", problem
    return (normalised, None) if normalised else ("", "empty text after normalisation")


def _convert_all(candidates: list[tuple[_Row, str]], flac_dir: Path, sample_rate: int, workers: int,
                 skipped: list[Failure]) -> list[tuple[tuple[_Row, str], tuple[Path, float]]]:
    """Convert the candidates' clips in a thread pool; returns those that worked with (flac, duration)."""
    done: list[tuple[tuple[_Row, str], tuple[Path, float]]] = []

    def work(cand: tuple[_Row, str]) -> tuple[float | None, str | None]:
        return convert_clip(cand[0].clip, flac_dir / f"{cand[0].clip.stem}.flac", sample_rate)

    flac_dir.mkdir(parents=True, exist_ok=True)
    with progress_bar(f"converting clips to {sample_rate // 1000} kHz FLAC", len(candidates)) as advance, \
            ThreadPoolExecutor(max_workers=workers) as pool:
        for cand, (duration, reason) in zip(candidates, pool.map(work, candidates), strict=True):
            advance()
            if duration is None:
                skipped.append(Failure(path=str(cand[0].clip), reason=reason or "cannot decode"))
            else:
                done.append((cand, (flac_dir / f"{cand[0].clip.stem}.flac", duration)))
    return done


def convert_clip(src: Path, dst: Path, sample_rate: int) -> tuple[float | None, str | None]:
    """Decode `src`, resample to mono `sample_rate`, write 16-bit FLAC `dst` atomically; keep a valid `dst`.

    Returns (duration in seconds, None) or (None, reason); never raises for one bad clip.
    """
    import soundfile as sf

    if dst.is_file():
        try:
            duration, rate = audio_info(dst)
            if rate == sample_rate:
                return duration, None
        except AudioError:
            pass  # a damaged cache file: convert again
    try:
        wave = load_audio(src, sample_rate).numpy()
    except AudioError as err:
        kind = src.suffix.lstrip(".").upper() or "audio"
        if not err.reason.startswith("cannot decode audio ("):  # empty, missing, truncated, no samples
            return None, f"cannot decode {kind}: {err.reason.removeprefix('cannot decode audio: ')}"
        detail = err.reason.removeprefix("cannot decode audio (").removesuffix(")")
        return None, f"cannot decode {kind}: damaged or not {kind} (libsndfile: {detail})"
    except Exception as err:  # report, never crash on one bad clip
        return None, f"cannot decode ({type(err).__name__}: {err})"
    try:
        with atomic_path(dst) as tmp:
            sf.write(str(tmp), np.clip(wave, -1.0, 1.0), sample_rate, format="FLAC", subtype="PCM_16")
    except Exception as err:
        return None, f"cannot write {dst} ({type(err).__name__}: {err})"
    return len(wave) / sample_rate, None
