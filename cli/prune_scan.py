"""`optimize prune-scan`: the sensitivity table and the proposed `layer_sparsity` YAML.

Registered on the app in cli/app.py; the work is `passes.prune_scan.scan`.
"""

from __future__ import annotations

from typing import Any

import typer

from cli.io import check_verbosity, emit_json, out, quiet_warnings, stdout_to_stderr


def _parse_ratios(value: str) -> tuple[float, ...]:
    from optimize.errors import UsageError

    try:
        parsed = tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"--ratios: expected comma-separated fractions such as 0.25,0.5,0.75, got {value!r}") from None
    return parsed


def prune_scan_cmd(
    model: str = typer.Argument(..., metavar="MODEL", help="Model file or factory `package.module:callable`."),
    config: str = typer.Option(
        None, "-c", "--config", metavar="CONFIG", help="Pipeline YAML: its model: section and data.eval are used."
    ),
    method: str = typer.Option("structured", "--method", metavar="METHOD", help="structured or magnitude."),
    ratios: str = typer.Option("0.25,0.5,0.75", "--ratios", metavar="R[,R...]", help="Ratios tried on each layer."),
    min_cosine: float = typer.Option(0.95, "--min-cosine", metavar="C", help="Target without labelled eval data."),
    max_drop: float = typer.Option(1.0, "--max-drop", metavar="PTS", help="Target with labelled eval data (accuracy points)."),
    layer: list[str] = typer.Option([], "--layer", metavar="NAME", help="Scan only these layers (repeatable)."),
    as_json: bool = typer.Option(False, "--json", metavar="", help="Print the scan as one JSON document."),
    trust_model: bool = typer.Option(
        False, "--trust-model", metavar="", help="Allow loading pickled whole modules (runs code from the file)."
    ),
    quiet: bool = typer.Option(False, "-q", "--quiet", metavar="", help="No logs; only errors."),
    verbose: bool = typer.Option(False, "-v", "--verbose", metavar="", help="Debug logs and full tracebacks on errors."),
) -> None:
    """Prune each layer alone at several ratios, measure accuracy (or output cosine), and propose
    per-layer ratios for a target as a YAML snippet."""
    import sys

    from cli.progress import setup_logging

    check_verbosity(quiet, verbose)
    setup_logging(quiet=quiet, verbose=verbose)

    def progress(done: int, total: int, name: str) -> None:
        if not quiet:
            print(f"prune-scan: {done}/{total} {name}", file=sys.stderr, flush=True)

    with quiet_warnings(quiet):
        from passes.prune_scan import scan

        with stdout_to_stderr():
            result: dict[str, Any] = scan(
                model, config_path=config, method=method, ratios=_parse_ratios(ratios), min_cosine=min_cosine,
                max_drop=max_drop, trust_model=trust_model, layers=list(layer) or None, progress=progress,
            )
    if as_json:
        emit_json(result)
        return
    from optimize.prune_report import scan_markdown

    lines = [f"# prune-scan {model} ({result['method']}; baseline {result['baseline']})", ""]
    lines += scan_markdown(result)
    skipped = [f"- {r['name']}: {r['reason']}" for r in result["layers"] if r["reason"]]
    if skipped:
        lines += ["", "Not scanned at every ratio:"] + skipped
    lines += ["", f"Proposed for {result['target']}:", "", "```yaml", result["yaml"].rstrip(), "```"]
    out("\n".join(lines))
