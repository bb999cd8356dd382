"""What every `asrkit` command shares: the exit codes and the wrapper that turns an AsrkitError into one line
`error: ...` with exit code 2 (cli.py, cli_prepare.py and cli_decode.py import it; nothing imports cli.py)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from asrkit.errors import AsrkitError

# Exit codes, the same for every command (scripts such as recipes/*/run.sh rely on them).
EXIT_OK = 0  # everything was done
EXIT_CRASH = 1  # an unexpected error: Python's own code for an uncaught exception (a bug; the traceback says where)
EXIT_USER_ERROR = 2  # bad input found before any work was done: the one-line message says what to fix
EXIT_PARTIAL = 3  # finished, but some inputs failed or were skipped: each is named with the reason
EXIT_INTERRUPTED = 130  # Ctrl-C (or, for `asrkit train`, SIGTERM: it stops after the step, with last.pt)
EXIT_CODES_HELP = (f"Exit codes: {EXIT_OK} everything done; {EXIT_USER_ERROR} an error in the input, found before "
                   f"any work (the message says how to fix it); {EXIT_PARTIAL} finished, but some inputs failed or "
                   f"were skipped (each is named with the reason, and a summary line counts them); {EXIT_CRASH} an "
                   f"unexpected error (a bug: please report it with the traceback); {EXIT_INTERRUPTED} interrupted "
                   f"(`train`: by Ctrl-C or SIGTERM, after writing last.pt for --resume).")

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(func: F) -> F:
    """Print an AsrkitError as one line `error: ...` and exit with EXIT_USER_ERROR (2), without a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except AsrkitError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(EXIT_USER_ERROR) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(EXIT_INTERRUPTED) from None

    return wrapper  # type: ignore[return-value]
