"""Console output shared by the commands: results on stdout (one strict JSON document with
`--json`), library chatter moved to stderr, `-q`/`-v` checks."""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import warnings
from collections.abc import Iterator
from typing import Any

from optimize.errors import UsageError


def err(line: str) -> None:
    """One line to stderr, unformatted (no rich wrapping: CI logs and grep want whole lines). A
    broken stderr (closed, full) loses the line, never the exit code."""
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):
        silence(2)


def silence(fd: int) -> None:
    """Point a broken console stream at /dev/null, so later writes and the flush at exit succeed."""
    with contextlib.suppress(Exception):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)


def console_safe(show: Any, *args: Any) -> None:
    """Show a result whose files are already written: a closed pipe (`--json | true`), a full disk
    (`>/dev/full`) or a closed stderr changes neither those files nor the exit code it earned."""
    try:
        show(*args)
    except (OSError, ValueError, AttributeError):
        silence(1)
        silence(2)


def std_streams_open() -> None:
    """A closed stdin/stdout/stderr at start is reopened on /dev/null: otherwise the next file the
    run opens takes its number, and console writes (ours, or a C library's) would land in it."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    if sys.stdout is None:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the process's stdout from now on
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115


PIPED_WIDTH = 120  # stdout is a file or a pipe and nobody said how wide the reader is


def result_width() -> int:
    """The width results are laid out for: COLUMNS when set; else the terminal stdout is on; else
    the terminal the user sits at (`optimize run | less`: stderr or stdin is still one); else 120."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    for stream in (sys.stdout, sys.stderr, sys.__stdin__):
        try:
            if stream is not None and stream.isatty():
                return os.get_terminal_size(stream.fileno()).columns
        except (AttributeError, OSError, ValueError):
            continue
    return PIPED_WIDTH


def stdout_console() -> Any:
    """Rich console for results, as wide as `result_width` says."""
    from rich.console import Console

    return Console(file=sys.stdout, width=result_width())


def out(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()


def emit_json(data: Any) -> None:
    """One strict JSON document on stdout. NaN/Infinity become null, as in the report file that
    pydantic writes (`model_dump_json`), so every JSON parser accepts it."""
    out(json.dumps(finite(data), indent=2, ensure_ascii=False, allow_nan=False, default=str))


def finite(v: Any) -> Any:
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: finite(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [finite(x) for x in v]
    return v


def check_verbosity(quiet: bool, verbose: bool) -> None:
    if quiet and verbose:
        raise UsageError("-q/--quiet and -v/--verbose cannot be used together")


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """While the library works, send everything written to stdout to stderr instead.

    Libraries print (exporters, training loops, C++ runtimes writing to file descriptor 1); stdout
    is reserved for results, so `--json` output stays exactly one JSON document. Redirects both
    `sys.stdout` and, when stdout is a real file, file descriptor 1.
    """
    saved_fd = None
    try:
        fd = sys.stdout.fileno()
        err_fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        fd = err_fd = -1
    if fd >= 0 and err_fd >= 0 and fd != err_fd:
        sys.stdout.flush()
        saved_fd = os.dup(fd)
        os.dup2(err_fd, fd)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        if saved_fd is not None:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
            os.dup2(saved_fd, fd)
            os.close(saved_fd)


@contextlib.contextmanager
def quiet_warnings(quiet: bool) -> Iterator[None]:
    if not quiet:
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
