"""`optimize schema`: the JSON Schema of pipeline files (for editors and CI), or of the report."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.errors import handle_errors
from cli.io import emit_json
from cli.options import Verbose

EXAMPLES = [
    ("optimize schema > pipeline.schema.json", "for an editor's YAML completion"),
    ("optimize schema --report", "the report's JSON Schema"),
]

ReportFlag = Annotated[bool, typer.Option("--report", help="Print the report's JSON Schema instead of the config's.")]


@handle_errors
def schema(report: ReportFlag = False, verbose: Verbose = False) -> None:
    """Print the JSON Schema of pipeline files (for editors and CI), or of the report."""
    if report:
        from optimize.report import Report

        emit_json(Report.model_json_schema())
    else:
        from optimize.config import json_schema

        emit_json(json_schema())
