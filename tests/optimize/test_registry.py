"""optimize.registry is complete for every pass it names: each config field is described (the
descriptions make docs/config.md and `optimize pass-list`), the pass has a test module at the path
that mirrors its module (passes/prune/prune_pass.py → tests/passes/prune/test_prune_pass.py), and a
user can find it: it is used in a shipped pipeline (configs/*.yaml) or named in the docs
(README.md, docs/*.md; the generated docs/config.md counts)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, TESTS

from optimize import registry

NAMES = registry.names()


def mirrored_test_module(module: str) -> Path:
    """passes.prune.prune_pass → tests/passes/prune/test_prune_pass.py."""
    *package, leaf = module.split(".")
    return TESTS.joinpath(*package, f"test_{leaf}.py")


def shipped_pass_types() -> set[str]:
    types = set()
    for path in (ROOT / "configs").glob("*.yaml"):
        for step in yaml.safe_load(path.read_text()).get("passes") or []:
            types.add(step["type"])
    return types


@pytest.mark.parametrize("name", NAMES)
def test_every_config_field_is_described(name):
    fields = registry.get(name).config_cls.model_fields
    assert "type" in fields
    assert [f for f, info in fields.items() if not (info.description or "").strip()] == []


@pytest.mark.parametrize("name", NAMES)
def test_every_pass_has_a_test_module_at_the_mirrored_path(name):
    path = mirrored_test_module(registry.get(name).__module__)
    assert path.is_file(), f"pass {name!r}: no tests at {path.relative_to(ROOT)}"
    assert re.search(r"^def test_", path.read_text(), re.M), f"{path.relative_to(ROOT)} holds no test"


@pytest.mark.parametrize("name", NAMES)
def test_every_pass_is_in_a_shipped_config_or_the_docs(name):
    docs = "\n".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
    named = re.search(rf"`{re.escape(name)}`|type: {re.escape(name)}\b", docs)
    assert name in shipped_pass_types() or named, f"pass {name!r} is in no configs/*.yaml and no doc"


def test_the_mirror_maps_package_modules_into_package_folders():
    assert mirrored_test_module("passes.prune.prune_pass") == TESTS / "passes" / "prune" / "test_prune_pass.py"
    assert mirrored_test_module("passes.graph") == TESTS / "passes" / "test_graph.py"
