"""`package.module:callable` references (model factories, student factories, data callables):
import and call one, searching the config's folder first, with one-line errors of the caller's type."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any


def call_reference(spec: str, base_dir: Path, error: type[Exception], what: str) -> Any:
    """Import `spec` and call it with no arguments. Import failures and exceptions raised by the
    callable become `error(f"{what}: ...")` so the user sees one line, not a traceback."""
    module_name, _, attr = spec.partition(":")
    if str(base_dir) not in sys.path:
        sys.path.insert(0, str(base_dir))
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise error(f"{what}: cannot import ({exc})") from None
    try:
        return fn()
    except Exception as exc:
        raise error(f"{what}: raised {type(exc).__name__}: {exc}") from None
