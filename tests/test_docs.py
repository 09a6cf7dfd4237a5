"""The docs stay true: the config reference is generated from the schema, and the README and docs
name the commands, exit codes and report fields the code has."""

from __future__ import annotations

from pathlib import Path

from optimize.config_doc import render
from optimize.measure import F_SPARSITY
from optimize.report import METRIC_ORDER

ROOT = Path(__file__).resolve().parent.parent


def test_config_reference_is_generated_from_the_schema():
    on_disk = (ROOT / "docs" / "config.md").read_text(encoding="utf-8")
    assert on_disk == render(), "docs/config.md is stale: run `python -m optimize.config_doc docs/config.md`"


def test_report_reference_names_every_metric_and_formula():
    text = (ROOT / "docs" / "report.md").read_text(encoding="utf-8")
    for key in METRIC_ORDER:
        assert f"`{key}`" in text, key
    assert F_SPARSITY.split(" (")[0] in text


def test_readme_has_the_two_commands_and_exit_codes():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "make demo" in text and "make test" in text
    for code in ("| 0 |", "| 1 |", "| 2 |", "| 3 |", "| 130 |", "| 143 |"):
        assert code in text
