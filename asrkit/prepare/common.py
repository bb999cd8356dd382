"""What every corpus preparer shares: the result record, parallel duration measurement, writing the outputs.

A preparer collects `Utterance`s per split and a `Skipped` entry for every input it could not use, then
calls `finish`, which writes `<split>.jsonl` manifests and `skipped.tsv` so nothing is lost without a word.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from asrkit.data.audio import audio_info
from asrkit.data.manifest import write_manifest
from asrkit.errors import AsrkitError, AudioError
from asrkit.records import Utterance

SKIPPED_FILE = "skipped.tsv"


@dataclass(frozen=True)
class Skipped:
    """One input that could not be used, and why."""

    path: str
    reason: str


@dataclass
class PrepareResult:
    """What a preparer wrote: the utterances per split, the skipped inputs and the skipped.tsv report."""

    out_dir: Path
    splits: dict[str, list[Utterance]]
    skipped: list[Skipped]
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


def measure(paths: Sequence[str | Path], workers: int = 4) -> list[tuple[float | None, str | None]]:
    """Durations of `paths` (headers only, in a thread pool), in order: (seconds, None) or (None, reason).

    Never raises for a bad file; a transient rich progress bar is shown on stderr when it is a terminal.
    """
    if workers < 1:
        raise AsrkitError(f"workers {workers} must be at least 1")
    results: list[tuple[float | None, str | None]] = []
    with progress_bar("measuring audio", len(paths)) as advance, ThreadPoolExecutor(max_workers=workers) as pool:
        for result in pool.map(_measure_one, paths):
            results.append(result)
            advance()
    return results


def _measure_one(path: str | Path) -> tuple[float | None, str | None]:
    if not Path(path).is_file():  # libsndfile reports a missing file as a vague "System error"
        return None, "file not found"
    try:
        duration, _ = audio_info(path)
    except AudioError as err:
        return None, err.reason
    except Exception as err:  # a preparer must report, never crash on one bad file
        return None, f"cannot read audio ({type(err).__name__}: {err})"
    return duration, None


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


def finish(out_dir: Path, splits: dict[str, list[Utterance]], skipped: list[Skipped]) -> PrepareResult:
    """Write `<split>.jsonl` per non-empty split and `skipped.tsv` (or remove a stale one); return the result.

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
    for name, utts in splits.items():
        manifest = out_dir / f"{name}.jsonl"
        if utts:
            write_manifest(manifest, utts)
        else:
            manifest.unlink(missing_ok=True)
    return PrepareResult(out_dir=out_dir, splits=splits, skipped=list(skipped),
                         report_path=report if skipped else None)


def _write_skipped(path: Path, skipped: list[Skipped]) -> None:
    def clean(value: str) -> str:
        return " ".join(str(value).split("\t")).replace("\r", " ").replace("\n", " ")

    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write("path\treason\n")
        for item in skipped:
            f.write(f"{clean(item.path)}\t{clean(item.reason)}\n")
    tmp.replace(path)
