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
