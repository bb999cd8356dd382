"""Progress bars (rich) and one-line messages on stderr."""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Any


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Progress:
    """A rich progress bar with loss, rate and ETA; a no-op when disabled (tests, pipes)."""

    def __init__(self, description: str, total: int, *, enabled: bool = True, unit: str = "utt/s") -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.description, self.total, self.unit = description, total, unit
        self._bar: Any = None

    def __enter__(self) -> Progress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
                                     console=Console(stderr=True), transient=False)
            self._bar.start()
            self._task = self._bar.add_task(self.description, total=self.total, info="")
        return self

    def advance(self, n: int = 1, *, loss: float | None = None, rate: float | None = None) -> None:
        if self._bar is None:
            return
        info = []
        if loss is not None:
            info.append(f"loss {loss:.3f}")
        if rate is not None:
            info.append(f"{rate:.1f} {self.unit}")
        self._bar.update(self._task, advance=n, info="  ".join(info))

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.stop()
