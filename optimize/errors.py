"""Typed errors. The CLI maps each class to one exit code, in one place (cli/app.py).

Exit codes (an API for CI users): 0 done · 1 a pass or the runtime failed · 2 usage, config or
input rejected before any work · 3 a quality gate failed · 130 interrupted (SIGINT) · 143
terminated (SIGTERM).
"""

from __future__ import annotations


class OptimizeError(Exception):
    """Base class. `exit_code` is what the command line returns for it."""

    exit_code = 1


class UsageError(OptimizeError):
    """Bad flags, paths or combinations, found before any work."""

    exit_code = 2


class ConfigError(UsageError):
    """A pipeline file or override that does not validate.

    Rendered as `FILE:LINE: key.path: message` so editors and CI logs can jump to it.
    """

    def __init__(
        self, message: str, *, file: str | None = None, line: int | None = None, key: str | None = None
    ) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.key = key
        super().__init__(self.render())

    def render(self) -> str:
        where = ""
        if self.file:
            where = f"{self.file}:{self.line}: " if self.line else f"{self.file}: "
        key = f"{self.key}: " if self.key else ""
        return f"{where}{key}{self.message}"


class ModelLoadError(UsageError):
    """The model file or factory cannot be read, or reading it would be unsafe."""


class DataError(UsageError):
    """A data source is missing, malformed, or does not match the model's inputs."""


class PassError(OptimizeError):
    """A pass failed while running (exit 1). Names the pass and its position."""

    def __init__(self, pass_name: str, message: str, *, index: int | None = None) -> None:
        self.pass_name = pass_name
        self.index = index
        where = f"passes[{index}] {pass_name}" if index is not None else pass_name
        super().__init__(f"{where}: {message}")


class VerificationError(OptimizeError):
    """The written ONNX failed the checker, did not load in ONNX Runtime, or gave non-finite outputs."""


class GateFailed(OptimizeError):
    """One or more quality gates failed; the model was written as NAME.rejected.onnx."""

    exit_code = 3

    def __init__(self, failed: list[str]) -> None:
        self.failed = failed
        super().__init__("quality gate failed: " + "; ".join(failed))


class OutputError(OptimizeError):
    """An output could not be written (disk full, read-only folder, ...). Nothing is left under the
    final name; the message names the file and the operating system's reason."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an exception so the same cleanup as Ctrl-C runs (temporary files
    removed, nothing left under the final name). A KeyboardInterrupt subclass so every
    `except KeyboardInterrupt` cleanup path handles it; the command line exits 143 (128 + 15)."""

    exit_code = 143
