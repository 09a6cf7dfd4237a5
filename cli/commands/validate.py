"""`optimize validate`: check pipeline files against the schema, one line per file."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.errors import handle_errors, print_error
from cli.io import out
from cli.options import Overrides, Verbose
from optimize.errors import OptimizeError

EXAMPLES = [
    ("optimize validate configs/*.yaml", "check every pipeline in a folder"),
    ("optimize validate configs/default.yaml --set passes[0].sparsity=0.7", "check an override too"),
]

Configs = Annotated[list[str], typer.Argument(metavar="CONFIG...", help="Pipeline YAML file(s).")]


@handle_errors
def validate(configs: Configs, set_: Overrides = None, verbose: Verbose = False) -> None:
    """Check pipeline files against the schema; print `ok: FILE (N passes: …)` or the error."""
    from optimize.config import load_config

    worst = 0
    for path in configs:
        try:
            cfg = load_config(path, list(set_ or []))
        except OptimizeError as exc:
            worst = max(worst, print_error(exc, verbose))
            continue
        names = [p.type for p in cfg.passes]
        noun = "pass" if len(names) == 1 else "passes"
        chain = ": " + " → ".join(names) if names else ""
        out(f"ok: {path} ({len(names)} {noun}{chain})")
    if worst:
        raise typer.Exit(worst)
