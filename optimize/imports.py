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


def config_callables(cfg: Any) -> list[tuple[str, str]]:
    """The `module:callable` references a config names, as (key path, spec): data sources and
    student factories. Each is code the config would run."""
    from optimize.files import is_callable_reference

    found = []
    for role in ("train", "eval", "calibration"):
        spec = getattr(cfg.data, role)
        if spec is not None and is_callable_reference(spec.source):
            found.append((f"data.{role}.source", spec.source))
    for i, p in enumerate(cfg.passes):
        factory = getattr(getattr(p, "student", None), "factory", None)
        if factory:
            found.append((f"passes[{i}].student.factory", factory))
    return found


def check_trusted(cfg: Any, trust_code: bool, file: str | None) -> None:
    """A config runs code only when the command line says --trust-code, and never a standard-library
    callable (`os:abort` is no data source). Raises ConfigError (exit 2) naming the key."""
    from optimize.errors import ConfigError

    for key, spec in config_callables(cfg):
        top = spec.partition(":")[0].split(".")[0]
        if top in sys.stdlib_module_names or top == "builtins":
            raise ConfigError(f"'{spec}' is a standard-library callable, not a data source or model factory", file=file, key=key)
        if not trust_code:
            raise ConfigError(
                f"'{spec}' is code the config would import and run; pass --trust-code to allow it", file=file, key=key
            )
