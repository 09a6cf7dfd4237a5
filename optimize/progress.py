"""Progress reporting seam. The library calls a `Progress`; the CLI supplies a rich or plain one.

Keeping this a tiny protocol means the library never imports rich, and tests can record calls.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol


class Progress(Protocol):
    def start(self, key: str, description: str, total: int | None) -> None: ...

    def advance(self, key: str, steps: int = 1, info: str | None = None) -> None: ...

    def finish(self, key: str, info: str | None = None) -> None: ...


class NullProgress:
    def start(self, key: str, description: str, total: int | None) -> None:
        pass

    def advance(self, key: str, steps: int = 1, info: str | None = None) -> None:
        pass

    def finish(self, key: str, info: str | None = None) -> None:
        pass


@contextmanager
def task(progress: Progress, key: str, description: str, total: int | None) -> Iterator[None]:
    progress.start(key, description, total)
    try:
        yield
    finally:
        progress.finish(key)
