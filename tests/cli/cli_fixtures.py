"""Fixtures for the command-line tests, loaded with `pytest_plugins = ["cli_fixtures"]`.

Not a conftest.py: a conftest.py here would shadow tests/conftest.py for any module importing it by name,
and a second conftest.py here would shadow it in sys.modules.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from cli_helpers import BAD_YAML, GOOD_YAML, FakePipeline
from typer.testing import CliRunner


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def good_yaml(tmp_path: Path) -> Path:
    p = tmp_path / "good.yaml"
    p.write_text(GOOD_YAML)
    return p


@pytest.fixture
def bad_yaml(tmp_path: Path) -> Path:
    p = tmp_path / "bad.yaml"
    p.write_text(BAD_YAML)
    return p


@pytest.fixture
def fake_pipeline(monkeypatch: pytest.MonkeyPatch) -> FakePipeline:
    import optimize

    fake = FakePipeline()
    monkeypatch.setitem(sys.modules, "optimize.pipeline", fake)
    monkeypatch.setattr(optimize, "pipeline", fake, raising=False)
    return fake
