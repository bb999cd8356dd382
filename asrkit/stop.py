"""Stopping a training run cleanly on a signal: it finishes the optimiser step it is in, writes `last.pt` and
exits, so `--resume` continues exactly where it stopped (as after SIGKILL, without losing the steps since the
last `save_every_steps`).

`StopSignals` takes SIGTERM (`kill PID`, `docker stop`, a batch scheduler's time limit) and Ctrl-C (SIGINT while
Python's own handler is in place): the first one only sets `requested`, which the training loop reads between
steps; a second one raises KeyboardInterrupt, the old immediate stop (it also saves `last.pt`). A signal whose
handler is not the default one is left alone: a job started with `nohup ... &` ignores SIGINT, and keeps ignoring
it; stop it with `kill PID`. Data-loader workers ignore both signals (`quiet_worker`): they end with the main
process, which would otherwise meet a dead worker when Ctrl-C or `kill -- -PGID` reaches the whole group.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any


class StopSignals:
    """Context manager; `requested` is the name of the first stop signal received (e.g. "SIGTERM"), or None."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[signal.Signals, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():
            return self  # only the main thread may set handlers; there the default behaviour stays
        for sig, default in ((signal.SIGTERM, signal.SIG_DFL), (signal.SIGINT, signal.default_int_handler)):
            if signal.getsignal(sig) is default:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is not None:
            raise KeyboardInterrupt  # the second signal: stop now
        self.requested = signal.Signals(signum).name


def quiet_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: the worker ignores SIGINT and SIGTERM and lets the main process stop cleanly."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
