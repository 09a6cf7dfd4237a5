"""Errors → exit codes, in one place (the contract in cli/app.py's docstring): `handle_errors`
wraps every command, `print_error` prints one line and returns the code."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import typer

from cli.io import err
from optimize.errors import OptimizeError

F = TypeVar("F", bound=Callable[..., Any])

STOP_LINES = {143: "terminated (SIGTERM)", 129: "hung up (SIGHUP)"}

# click's base exception (usage errors, bad parameters): click maps these to exit 2 itself. Found
# through typer.BadParameter because typer 0.2x vendors click as typer._click, older ones import it.
CLICK_EXCEPTION = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def one_line(message: str) -> str:
    parts = [p.strip() for p in str(message).splitlines() if p.strip()]
    return " | ".join(parts) if parts else ""


def print_error(exc: BaseException, verbose: bool = False) -> int:
    """Print `exc` as the contract says and return its exit code. The one error → exit-code map."""
    if verbose:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    if isinstance(exc, KeyboardInterrupt):
        code = int(getattr(exc, "exit_code", 130))  # optimize.errors.Terminated: 143 (SIGTERM), 129 (SIGHUP)
        err(STOP_LINES.get(code, "interrupted"))
        return code
    if isinstance(exc, OptimizeError):
        err(f"error: {one_line(str(exc))}")
        return int(getattr(exc, "exit_code", 1))
    detail = one_line(str(exc))
    hint = "" if verbose else " (run with -v for the traceback)"
    err(f"error: internal: {type(exc).__name__}{': ' + detail if detail else ''}{hint}")
    return 1


def handle_errors(fn: F) -> F:
    """Wrap a command: OptimizeError → `error: MSG` + its exit code; Ctrl-C → 130; anything else →
    `error: internal: ...` + 1. Tracebacks only with -v (the command's `verbose` parameter)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        verbose = bool(kwargs.get("verbose"))
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except BrokenPipeError:
            # stdout closed early (`optimize ... | head`): nothing left to say to anyone.
            with contextlib.suppress(Exception):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
            raise typer.Exit(1) from None
        except Exception as exc:
            if isinstance(exc, CLICK_EXCEPTION):
                raise
            raise typer.Exit(print_error(exc, verbose)) from None
        except KeyboardInterrupt as exc:
            raise typer.Exit(print_error(exc, verbose)) from None

    return wrapper  # type: ignore[return-value]


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While a command works, SIGTERM raises `Terminated` (a KeyboardInterrupt) so the Ctrl-C
    cleanup runs (temporary files removed, nothing under the final name) and the exit code is 143.
    A second SIGTERM during that cleanup kills at once (the default action)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    caught = [signal.SIGTERM, signal.SIGHUP] if hasattr(signal, "SIGHUP") else [signal.SIGTERM]

    def handler(signum: int, frame: Any) -> None:
        from optimize.errors import Terminated

        for sig in caught:
            signal.signal(sig, signal.SIG_DFL)
        exc = Terminated()
        exc.exit_code = 128 + signum  # SIGTERM 143, SIGHUP (the terminal closed) 129
        raise exc

    previous = {sig: signal.signal(sig, handler) for sig in caught}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
