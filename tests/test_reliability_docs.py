"""docs/reliability.md maps each promise to its tests: every test it names must exist, so the
map cannot silently point at a renamed or deleted test."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REF = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")


def test_every_test_named_in_reliability_md_exists() -> None:
    text = (ROOT / "docs" / "reliability.md").read_text()
    refs = REF.findall(text)
    assert len(refs) > 50, "the map should name the tests behind each promise"
    missing = []
    defined: dict[str, set[str]] = {}
    for file, name in refs:
        if file not in defined:
            path = ROOT / file
            tree = ast.parse(path.read_text()) if path.is_file() else ast.Module(body=[], type_ignores=[])
            defined[file] = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        if name not in defined[file]:
            missing.append(f"{file}::{name}")
    assert not missing, f"docs/reliability.md names tests that do not exist: {missing}"
