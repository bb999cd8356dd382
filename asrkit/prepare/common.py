"""What every corpus preparer shares: the result record, parallel duration measurement, writing the outputs.

A preparer collects `Utterance`s per split and a `Failure` for every input it could not use, then
calls `finish`, which writes `<split>.jsonl` manifests and `skipped.tsv` so nothing is lost without a word, and
`normaliser.json`, the name of the text normaliser the transcripts went through (for training and `lm build`).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TextIO

from asrkit.data.audio import audio_info
from asrkit.data.manifest import write_manifest
from asrkit.data.text import write_normaliser
from asrkit.errors import AsrkitError, AudioError
from asrkit.io import atomic_open
from asrkit.progress import say
from asrkit.records import Failure, Utterance

SKIPPED_FILE = "skipped.tsv"
MEASURED_FILE = ".measured.cache"  # in the output folder (JSON lines): durations measured so far, for a rerun


@dataclass
class PrepareResult:
    """What a preparer wrote: the utterances per split, the skipped inputs and the skipped.tsv report."""

    out_dir: Path
    splits: dict[str, list[Utterance]]
    skipped: list[Failure]
    report_path: Path | None  # out_dir/skipped.tsv, or None when nothing was skipped

    def summary(self) -> str:
        """A few human-readable lines: utterances and hours per split, what was skipped and where it is listed."""
        lines = []
        for name, utts in self.splits.items():
            hours = sum(u.duration for u in utts) / 3600
            where = self.out_dir / f"{name}.jsonl" if utts else "not written"
            lines.append(f"{name}: {len(utts):,} utterances, {hours:.2f} h -> {where}")
        if self.skipped:
            lines.append(f"skipped {len(self.skipped):,} input(s); reasons in {self.report_path}")
        else:
            lines.append("skipped nothing")
        return "\n".join(lines)


def check_writable(out_dir: Path) -> None:
    """Create `out_dir` and fail early, with a clear message, if files cannot be written there."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise AsrkitError(f"{out_dir}: output path exists and is not a folder; choose another output folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".write-test-"):
            pass
    except OSError as err:
        raise AsrkitError(f"{out_dir}: cannot write to the output folder ({err.strerror or err}); "
                          "choose a folder you can write to") from None


_Key = tuple[str, int, int]  # absolute path, size in bytes, modification time in ns
_Result = tuple[float | None, str | None]  # (duration, None) or (None, why the file cannot be used)


def measure(paths: Sequence[str | Path], workers: int = 4,
            cache: Path | None = None) -> list[_Result]:
    """Durations of `paths` (headers and a tail check, in a thread pool), in order: (seconds, None) or
    (None, reason). Never raises for a bad file; a transient progress bar is shown when stderr is a terminal.

    With `cache` (JSON lines, normally OUT/.measured.cache) every result is appended to it as soon as it is
    known, one flushed line per file keyed by path, size and modification time; a rerun after a kill reads it
    back and measures only the files that are new or changed since. A torn last line is ignored. Delete the
    cache to measure everything again. (Not named *.jsonl, so that globs for manifests do not pick it up.)
    """
    if workers < 1:
        raise AsrkitError(f"workers {workers} must be at least 1")
    known = _read_cache(cache) if cache is not None else {}
    results: list[_Result] = [(None, None)] * len(paths)
    reused = 0
    with contextlib.ExitStack() as stack:
        log = _open_cache(cache) if cache is not None else None
        if log is not None:
            stack.enter_context(log)
        advance = stack.enter_context(progress_bar("measuring audio", len(paths)))
        pool = stack.enter_context(ThreadPoolExecutor(max_workers=workers))
        jobs = {pool.submit(_measure_cached, p, known): i for i, p in enumerate(paths)}
        for job in as_completed(jobs):
            key, result, fresh = job.result()
            results[jobs[job]] = result
            if fresh and log is not None and key is not None:
                log.write(json.dumps({"path": key[0], "size": key[1], "mtime_ns": key[2], "duration": result[0],
                                      "reason": result[1]}, ensure_ascii=False) + "\n")
                log.flush()  # a kill loses at most the line being written
            reused += not fresh
            advance()
    if reused:
        say(f"{reused:,} of {len(paths):,} audio files measured by an earlier run (cached in {cache})")
    return results


def _measure_cached(path: str | Path, known: dict[_Key, _Result]) -> tuple[_Key | None, _Result, bool]:
    """(cache key, (duration, reason), measured now) of one file; the key is None when it cannot be stat()ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None, _measure_one(path), True
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key in known:
        return key, known[key], False
    return key, _measure_one(path), True


def _measure_one(path: str | Path) -> _Result:
    try:
        duration, _ = audio_info(path)
    except AudioError as err:
        return None, err.reason
    except Exception as err:  # a preparer must report, never crash on one bad file
        return None, f"cannot read audio ({type(err).__name__}: {err})"
    return duration, None


def _read_cache(cache: Path) -> dict[_Key, _Result]:
    """The results of earlier runs; lines that do not parse (a line torn by a kill) are ignored."""
    known: dict[_Key, _Result] = {}
    try:
        text = cache.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return known
    except OSError as err:
        raise AsrkitError(f"{cache}: cannot read the measurement cache ({err.strerror or err}); delete it") from None
    for line in text.splitlines():
        try:
            row = json.loads(line)
            key = (str(row["path"]), int(row["size"]), int(row["mtime_ns"]))
            duration = None if row["duration"] is None else float(row["duration"])
            reason = None if row["reason"] is None else str(row["reason"])
        except (ValueError, KeyError, TypeError):
            continue
        if (duration is None) == (reason is None):  # exactly one of them: a duration or why there is none
            continue
        known[key] = (duration, reason)  # a later line (the file changed and was measured again) wins
    return known


def _open_cache(cache: Path) -> TextIO:
    """`cache` opened for appending, starting on a new line if a kill left a torn last one."""
    torn = False
    try:
        with cache.open("rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell():
                f.seek(-1, os.SEEK_END)
                torn = f.read(1) != b"\n"
    except FileNotFoundError:
        pass
    log = cache.open("a", encoding="utf-8")
    if torn:
        log.write("\n")
    return log


def keep_measured(pending: Sequence[tuple[Path, Utterance]], skipped: list[Failure], workers: int,
                  out_dir: Path | None = None) -> list[Utterance]:
    """Measure the audio of each (path, utterance-without-duration) pair; return the utterances with their
    durations, appending the unreadable ones to `skipped` with the reason. With `out_dir`, measurements are
    cached in out_dir/.measured.cache so an interrupted prepare resumes where it stopped."""
    cache = Path(out_dir) / MEASURED_FILE if out_dir is not None else None
    utts: list[Utterance] = []
    for (path, utt), (duration, reason) in zip(pending, measure([p for p, _ in pending], workers, cache),
                                               strict=True):
        if duration is None:
            skipped.append(Failure(path=str(path), reason=reason or "cannot read audio"))
        else:
            utts.append(replace(utt, duration=duration))
    return utts


@contextmanager
def progress_bar(description: str, total: int) -> Iterator[Callable[[], None]]:
    """A transient rich progress bar on stderr (only when stderr is a terminal); yields `advance()`."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    if not (console.is_terminal and total > 0):
        yield lambda: None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda: bar.update(task, advance=1)


def finish(out_dir: Path, splits: dict[str, list[Utterance]], skipped: list[Failure], *,
           normaliser: str = "default") -> PrepareResult:
    """Write `<split>.jsonl` per non-empty split, `normaliser.json` (the name of the text normaliser in
    asrkit.data.text.NORMALISERS that the transcripts went through) and `skipped.tsv` (or remove a stale one);
    return the result.

    An empty split writes no manifest (and removes a stale one). Raises `AsrkitError` if every split is empty.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = out_dir / SKIPPED_FILE
    if skipped:
        _write_skipped(report, skipped)
    else:
        report.unlink(missing_ok=True)
    if not any(splits.values()):
        hint = f"; see {out_dir / SKIPPED_FILE} for why each input was skipped" if skipped else ""
        raise AsrkitError(f"no usable utterances in {out_dir}: {len(skipped)} input(s) skipped{hint}")
    write_normaliser(out_dir, normaliser)  # first: an unknown name stops before any manifest is written
    for name, utts in splits.items():
        manifest = out_dir / f"{name}.jsonl"
        if utts:
            write_manifest(manifest, utts)
        else:
            manifest.unlink(missing_ok=True)
    return PrepareResult(out_dir=out_dir, splits=splits, skipped=list(skipped),
                         report_path=report if skipped else None)


def _write_skipped(path: Path, skipped: list[Failure]) -> None:
    def clean(value: str) -> str:
        return " ".join(str(value).split("\t")).replace("\r", " ").replace("\n", " ")

    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write("path\treason\n")
        for item in skipped:
            f.write(f"{clean(item.path)}\t{clean(item.reason)}\n")
