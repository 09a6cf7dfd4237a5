"""Progress and logging for the command line: rich bars on a terminal, plain lines elsewhere.

Both classes implement `optimize.progress.Progress`, the only thing the library knows about. They
write to stderr only (stdout carries results) and never raise: a broken progress display must not
fail a run.

Choice (`make_progress`):
  none, or -q        nothing
  plain              one line per start / advance (at most ~1 a second per task) / finish
  rich               live bars on stderr, even when stderr is not a terminal (explicit request)
  auto               rich bars when stderr is a terminal (and TERM is not "dumb"), else plain
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TextIO

from optimize.progress import NullProgress

ProgressMode = Literal["auto", "rich", "plain", "none"]

LOGGER_NAMES = ("optimize", "passes", "cli")


class NoProgress(NullProgress):
    """`NullProgress` usable as a context manager, like the others."""

    def __enter__(self) -> NoProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


@dataclass
class _Task:
    description: str
    total: int | None
    completed: int = 0
    started: float = 0.0
    last_line: float = float("-inf")
    info: str | None = None


class PlainProgress:
    """One line per event on stderr, e.g. `[distill] epoch 3/5 loss 0.12`.

    `advance` lines are throttled to one per `interval` seconds per key; the advance that reaches
    the total is always printed, and so is `finish`. Made for CI logs and files: no redraws.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream
        self._interval = interval
        self._clock = clock
        self._tasks: dict[str, _Task] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    # -- Progress protocol
    def start(self, key: str, description: str, total: int | None) -> None:
        with self._lock:
            now = self._clock()
            self._tasks[key] = _Task(description=one_label(key, description), total=total, started=now)
            suffix = f" (0/{total})" if total else ""
            self._write(_join(f"[{key}]", self._tasks[key].description) + suffix)

    def advance(self, key: str, steps: int = 1, info: str | None = None) -> None:
        with self._lock:
            task = self._tasks.get(key)
            if task is None:  # advance without start: be forgiving
                task = self._tasks[key] = _Task(description="", total=None, started=self._clock())
            task.completed += steps
            if info is not None:
                task.info = info
            now = self._clock()
            last = task.total is not None and task.completed >= task.total
            if not last and now - task.last_line < self._interval:
                return
            task.last_line = now
            count = f"{task.completed}/{task.total}" if task.total else str(task.completed)
            self._write(_join(_join(f"[{key}]", task.description) + f" {count}", task.info))

    def finish(self, key: str, info: str | None = None) -> None:
        with self._lock:
            task = self._tasks.pop(key, None)
            if task is None:
                self._write(_join(f"[{key}] done", info))
                return
            seconds = self._clock() - task.started
            self._write(_join(f"[{key}] done in {_seconds(seconds)}", info))

    # --
    def _write(self, line: str) -> None:
        stream = self._stream or sys.stderr  # looked up late: tests and redirects swap it
        try:
            stream.write(line + "\n")
            stream.flush()
        except Exception:  # noqa: BLE001 - progress must never fail a run
            pass


class RichProgress:
    """Live rich bars on stderr: description, bar, completed/total, info text, elapsed time.

    Use as a context manager; the display is live between `__enter__` and `__exit__`. While live,
    writes to sys.stderr (logs, warnings) are printed above the bars.
    """

    def __init__(self, console: Any = None, force_terminal: bool | None = None) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self.console = console or Console(stderr=True, force_terminal=force_terminal)
        self._progress = Progress(
            SpinnerColumn(finished_text="[green]✓[/]"),
            TextColumn("[bold]{task.fields[key]}[/] {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            console=self.console,
            redirect_stdout=False,  # stdout is for results; the CLI keeps it clean itself
            redirect_stderr=True,
        )
        self._ids: dict[str, Any] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def start(self, key: str, description: str, total: int | None) -> None:
        from rich.markup import escape

        with self._lock:
            try:
                self._ids[key] = self._progress.add_task(
                    escape(one_label(key, description)), total=total, key=escape(key), info=""
                )
            except Exception:  # noqa: BLE001
                pass

    def advance(self, key: str, steps: int = 1, info: str | None = None) -> None:
        from rich.markup import escape

        with self._lock:
            try:
                if key not in self._ids:
                    self._ids[key] = self._progress.add_task("", total=None, key=escape(key), info="")
                fields: dict[str, Any] = {}
                if info is not None:
                    fields["info"] = escape(info)
                self._progress.update(self._ids[key], advance=steps, **fields)
            except Exception:  # noqa: BLE001
                pass

    def finish(self, key: str, info: str | None = None) -> None:
        from rich.markup import escape

        with self._lock:
            task_id = self._ids.pop(key, None)
            if task_id is None:
                return
            try:
                task = self._progress.tasks[[t.id for t in self._progress.tasks].index(task_id)]
                total = task.total if task.total is not None else max(task.completed, 1)
                fields: dict[str, Any] = {}
                if info is not None:
                    fields["info"] = escape(info)
                self._progress.update(task_id, total=total, completed=total, **fields)
                self._progress.stop_task(task_id)
            except Exception:  # noqa: BLE001
                pass


def make_progress(
    mode: ProgressMode = "auto", quiet: bool = False, stream: TextIO | None = None
) -> NoProgress | PlainProgress | RichProgress:
    """The progress display for `mode`; see the module docstring."""
    if quiet or mode == "none":
        return NoProgress()
    if mode == "plain":
        return PlainProgress()
    if mode == "rich":
        return RichProgress(force_terminal=True)
    return RichProgress() if _is_terminal(stream or sys.stderr) else PlainProgress()


def _is_terminal(stream: Any) -> bool:
    if os.environ.get("TERM") == "dumb":
        return False
    try:
        return bool(stream.isatty())
    except Exception:  # noqa: BLE001
        return False


def one_label(key: str, description: str) -> str:
    """The description without the key it repeats, so a line carries one label: key `pipeline`,
    description `pipeline` → ``; key `latency`, `latency (1 and 2 threads)` → `1 and 2 threads`."""
    word = key.rsplit(".", 1)[-1]
    text = description.strip()
    if text == word or text == key:
        return ""
    for prefix in (key + " ", word + " "):
        if text.startswith(prefix):
            rest = text[len(prefix):].strip()
            return rest[1:-1] if _wrapped(rest) else rest
    return text


def _wrapped(text: str) -> bool:
    """True when `text` is one parenthesized group: `(a (b))`, not `(a) (b)`."""
    depth = 0
    for i, ch in enumerate(text):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0 and i < len(text) - 1:
            return False
    return text.startswith("(") and depth == 0


def _join(head: str, info: str | None) -> str:
    return f"{head} {info}" if info else head


def _seconds(s: float) -> str:
    return f"{s:.1f}s" if s < 60 else f"{int(s // 60)}m{int(s % 60):02d}s"


# ---------------------------------------------------------------- logging


class _StderrHandler(logging.Handler):
    """Writes to whatever sys.stderr is at emit time (rich's live display and tests replace it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = self.format(record)
            sys.stderr.write(msg + "\n")
            sys.stderr.flush()
        except Exception:  # noqa: BLE001
            self.handleError(record)


class _Formatter(logging.Formatter):
    def __init__(self, verbose: bool) -> None:
        super().__init__()
        self.verbose = verbose

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if self.verbose:
            stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
            msg = f"{stamp} {record.levelname.lower():<7} {record.name}: {msg}"
        elif record.levelno >= logging.WARNING:
            msg = f"{record.levelname.lower()}: {msg}"
        if record.exc_info and self.verbose:
            msg += "\n" + self.formatException(record.exc_info)
        return msg


_handler: _StderrHandler | None = None


def setup_logging(quiet: bool = False, verbose: bool = False) -> None:
    """Send the library's loggers to stderr: INFO by default, WARNING with -q, DEBUG with -v.

    Idempotent: calling it again (as tests do) replaces the handler instead of adding another.
    """
    global _handler
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    if _handler is None:
        _handler = _StderrHandler()
    _handler.setFormatter(_Formatter(verbose))
    _handler.setLevel(level)
    for name in LOGGER_NAMES:
        logger = logging.getLogger(name)
        if _handler not in logger.handlers:
            logger.addHandler(_handler)
        logger.setLevel(level)
        logger.propagate = False
    from optimize.runtime import route_runtime_logs

    route_runtime_logs(verbose)
