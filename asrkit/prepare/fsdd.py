"""The Free Spoken Digit Dataset: isolated digits, or connected digits built from one speaker's recordings.

Layout: `recordings/{digit}_{speaker}_{index}.wav`, mono 8 kHz; the transcript is the digit's English word.
`corpus_dir` may be the folder holding `recordings/` or the recordings folder itself. Dot-files are ignored;
any other file not named like that is listed in skipped.tsv.

Splits (always named train, dev, test):
- split="official": test = indices 0-4 of every digit and speaker (the corpus's own test split).
- split="speaker": test = every recording of `test_speakers`.
- dev: with `dev_speakers`, those speakers' non-test recordings (a speaker-disjoint dev split); without,
  indices 5-9 of every digit and non-test speaker (5 of 45 training takes in official mode, ~11%; 5 of 50 in
  speaker mode, 10%). That dev split shares speakers with train.
- train: everything else.

Connected mode (TIDIGITS style): per split and speaker, the speaker's recordings are shuffled `passes` times
(seeded) and each shuffled list is cut into consecutive groups of `min_digits`..`max_digits` recordings (only
a speaker's last group of a pass can be shorter, when the count cannot be split evenly). Each group becomes
`out_dir/audio/<split>/<id>.wav` (16-bit PCM, 8 kHz): 100 ms of silence (digital zeros), the recordings with
100-300 ms of silence between them, 100 ms of silence. The text is the digit words ("four one five"); the
manifest's `sources` key lists the recordings used, in order. An existing file of the expected length is
kept, so an interrupted run can be resumed.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asrkit.data.audio import load_audio, write_audio
from asrkit.data.text import normalize_text
from asrkit.errors import AsrkitError, AudioError
from asrkit.io import atomic_path
from asrkit.prepare.common import MEASURED_FILE, PrepareResult, check_writable, finish, measure, progress_bar
from asrkit.records import Failure, Utterance

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SAMPLE_RATE = 8000  # FSDD's native rate; connected utterances are written at it
SPLITS = ("train", "dev", "test")
SPLIT_MODES = ("official", "speaker")
EDGE_MS = 100  # silence at each end of a connected utterance
GAP_MS = (100, 300)  # silence between two recordings, drawn uniformly (ms)
_NAME = re.compile(r"^(\d)_([A-Za-z0-9-]+)_(\d+)\.wav$")
_LAYOUT = ("recordings/{digit}_{speaker}_{index}.wav files (e.g. recordings/7_jackson_32.wav) as in "
           "github.com/Jakobovski/free-spoken-digit-dataset; give the folder holding recordings/ "
           "or the recordings folder itself")


@dataclass(frozen=True)
class Recording:
    """One FSDD file, parsed from its name."""

    path: Path
    digit: int
    speaker: str
    index: int

    @property
    def utt_id(self) -> str:
        return f"fsdd-{self.speaker}-{self.digit}-{self.index}"


@dataclass(frozen=True)
class _Group:
    """A planned connected-digit utterance: its recordings and the silences between them (ms)."""

    utt_id: str
    path: Path
    speaker: str
    recs: tuple[Recording, ...]
    gaps_ms: tuple[int, ...]


def prepare(corpus_dir: Path, out_dir: Path, *, split: str = "official", dev_speakers: Sequence[str] = (),
            test_speakers: Sequence[str] = (), connected: bool = False, min_digits: int = 2, max_digits: int = 5,
            passes: int = 1, seed: int = 0, workers: int = 4) -> PrepareResult:
    """Write train/dev/test manifests for FSDD into `out_dir` (and connected-digit audio if `connected`)."""
    _check_options(split, min_digits, max_digits, passes)
    recs, skipped = find_recordings(Path(corpus_dir))
    by_split = assign_splits(recs, split, dev_speakers, test_speakers)
    out_dir = Path(out_dir)
    check_writable(out_dir)
    durations = _measure_recordings(recs, skipped, workers, out_dir)
    by_split = {name: [r for r in part if r in durations] for name, part in by_split.items()}
    if connected:
        groups = {name: plan_groups(part, out_dir / "audio" / name, name, min_digits=min_digits,
                                    max_digits=max_digits, passes=passes, seed=seed)
                  for name, part in by_split.items()}
        splits = {name: _build_all(part, durations, skipped, workers) for name, part in groups.items()}
    else:
        splits = {name: [_isolated(r, durations[r]) for r in part] for name, part in by_split.items()}
    return finish(out_dir, splits, skipped)


def _check_options(split: str, min_digits: int, max_digits: int, passes: int) -> None:
    if split not in SPLIT_MODES:
        raise AsrkitError(f"split {split!r} is not one of {', '.join(SPLIT_MODES)}")
    if not 1 <= min_digits <= max_digits:
        raise AsrkitError(f"min_digits {min_digits} / max_digits {max_digits}: need 1 <= min_digits <= max_digits")
    if passes < 1:
        raise AsrkitError(f"passes {passes} must be at least 1")


def find_recordings(corpus_dir: Path) -> tuple[list[Recording], list[Failure]]:
    """Parse every file in the recordings folder; files not named `{digit}_{speaker}_{index}.wav` are Failures."""
    if not corpus_dir.is_dir():
        raise AsrkitError(f"{corpus_dir}: FSDD folder not found; expected {_LAYOUT}")
    folder = corpus_dir / "recordings" if (corpus_dir / "recordings").is_dir() else corpus_dir
    recs: list[Recording] = []
    skipped: list[Failure] = []
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        match = _NAME.match(path.name)
        if match is None:
            skipped.append(Failure(path=str(path), reason="name does not match {digit}_{speaker}_{index}.wav"))
            continue
        recs.append(Recording(path, int(match[1]), match[2], int(match[3])))
    if not recs:
        where = "" if folder == corpus_dir else f" in {folder}"
        raise AsrkitError(f"{corpus_dir}: no FSDD recordings found{where}; expected {_LAYOUT}")
    recs.sort(key=lambda r: (r.speaker, r.digit, r.index))
    return recs, skipped


def assign_splits(recs: list[Recording], split: str, dev_speakers: Sequence[str],
                  test_speakers: Sequence[str]) -> dict[str, list[Recording]]:
    """Recordings per split (train, dev, test) following the rules in the module docstring."""
    dev, test = set(dev_speakers), set(test_speakers)
    present = sorted({r.speaker for r in recs})
    for names, what in ((dev, "dev_speakers"), (test, "test_speakers")):
        unknown = sorted(names - set(present))
        if unknown:
            raise AsrkitError(f"{what}: unknown speaker(s) {', '.join(unknown)}; speakers present: "
                              f"{', '.join(present)}")
    if split == "speaker" and not test:
        raise AsrkitError(f"split 'speaker' needs test_speakers (e.g. --test-speakers {present[-1]}); "
                          f"speakers present: {', '.join(present)}")
    if split == "official" and test:
        raise AsrkitError("test_speakers are only used with split 'speaker'; the official split tests on "
                          "indices 0-4 of every speaker")
    if dev & test:
        raise AsrkitError(f"speaker(s) {', '.join(sorted(dev & test))} are in both dev_speakers and test_speakers")
    out: dict[str, list[Recording]] = {name: [] for name in SPLITS}
    for rec in recs:
        in_test = rec.index < 5 if split == "official" else rec.speaker in test
        if in_test:
            out["test"].append(rec)
        elif (rec.speaker in dev) if dev else (5 <= rec.index <= 9):
            out["dev"].append(rec)
        else:
            out["train"].append(rec)
    if not out["train"]:
        raise AsrkitError(f"no training recordings left after choosing dev/test (speakers present: "
                          f"{', '.join(present)}); leave at least one speaker for training")
    return out


def _measure_recordings(recs: list[Recording], skipped: list[Failure], workers: int,
                        out_dir: Path) -> dict[Recording, float]:
    """Duration per readable recording (cached in out_dir/.measured.cache); unreadable ones go to `skipped`."""
    durations: dict[Recording, float] = {}
    results = measure([r.path for r in recs], workers, out_dir / MEASURED_FILE)
    for rec, (duration, reason) in zip(recs, results, strict=True):
        if duration is None:
            skipped.append(Failure(path=str(rec.path), reason=reason or "cannot read audio"))
        else:
            durations[rec] = duration
    return durations


def _isolated(rec: Recording, duration: float) -> Utterance:
    return Utterance(rec.utt_id, str(rec.path.resolve()), duration, normalize_text(WORDS[rec.digit]), rec.speaker)


def group_sizes(n: int, rng: random.Random, min_digits: int, max_digits: int) -> list[int]:
    """Sizes in [min_digits, max_digits] summing to n; only the last can be smaller, when n cannot be split."""
    sizes: list[int] = []
    while n > 0:
        if n <= max_digits:
            size = n
        else:
            hi = min(max_digits, n - min_digits)  # leave enough for one more valid group
            size = rng.randint(min_digits, hi) if hi >= min_digits else rng.randint(min_digits, max_digits)
        sizes.append(size)
        n -= size
    return sizes


def plan_groups(recs: list[Recording], audio_dir: Path, split: str, *, min_digits: int, max_digits: int,
                passes: int, seed: int) -> list[_Group]:
    """Connected-digit utterances for one split: per speaker, `passes` seeded shuffles cut into groups."""
    groups: list[_Group] = []
    for speaker in sorted({r.speaker for r in recs}):
        mine = sorted((r for r in recs if r.speaker == speaker), key=lambda r: (r.digit, r.index))
        rng = random.Random(f"fsdd-{seed}-{split}-{speaker}")  # str seeds are stable across runs
        number = 0
        for _ in range(passes):
            order = rng.sample(mine, len(mine))
            start = 0
            for size in group_sizes(len(order), rng, min_digits, max_digits):
                part = tuple(order[start:start + size])
                start += size
                utt_id = f"fsdd-{speaker}-{split}-{number:05d}"
                number += 1
                gaps = tuple(rng.randint(*GAP_MS) for _ in range(len(part) - 1))
                groups.append(_Group(utt_id, audio_dir / f"{utt_id}.wav", speaker, part, gaps))
    return groups


def _build_all(groups: list[_Group], durations: dict[Recording, float], skipped: list[Failure],
               workers: int) -> list[Utterance]:
    """Write (or reuse) the audio of every group in a thread pool; a group that fails is skipped (a `Failure`)."""
    utts: list[Utterance] = []
    with progress_bar("writing connected digits", len(groups)) as advance, ThreadPoolExecutor(workers) as pool:
        for group, result in zip(groups, pool.map(lambda g: _build(g, durations), groups), strict=True):
            advance()
            if isinstance(result, str):
                skipped.append(Failure(path=str(group.path), reason=result))
                continue
            text = normalize_text(" ".join(WORDS[r.digit] for r in group.recs))
            utts.append(Utterance(group.utt_id, str(group.path.resolve()), result, text, group.speaker,
                                  {"sources": [r.utt_id for r in group.recs]}))
    return utts


def _samples(ms: int) -> int:
    return ms * SAMPLE_RATE // 1000


def _build(group: _Group, durations: dict[Recording, float]) -> float | str:
    """Write the group's audio unless a file of the expected length exists; its duration, or why it failed."""
    import soundfile as sf

    expected = (2 * _samples(EDGE_MS) + sum(_samples(g) for g in group.gaps_ms)
                + sum(round(durations[r] * SAMPLE_RATE) for r in group.recs))
    if group.path.is_file():
        try:
            info = sf.info(str(group.path))
            if info.frames == expected and info.samplerate == SAMPLE_RATE:
                return expected / SAMPLE_RATE
        except Exception:  # a broken leftover from an interrupted run: rewrite it
            pass
    pieces = [np.zeros(_samples(EDGE_MS), dtype=np.int16)]
    try:
        for i, rec in enumerate(group.recs):
            if i > 0:
                pieces.append(np.zeros(_samples(group.gaps_ms[i - 1]), dtype=np.int16))
            wave = load_audio(rec.path, SAMPLE_RATE).numpy()
            pieces.append(np.clip(np.round(wave * 32768), -32768, 32767).astype(np.int16))
    except AudioError as err:
        return f"connected utterance not built: {err}"
    pieces.append(np.zeros(_samples(EDGE_MS), dtype=np.int16))
    audio = np.concatenate(pieces)
    with atomic_path(group.path, suffix=".partial.wav") as tmp:  # .wav: soundfile picks the format from the name
        write_audio(tmp, audio, SAMPLE_RATE)
    return len(audio) / SAMPLE_RATE
