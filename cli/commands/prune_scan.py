"""`optimize prune-scan`: the sensitivity table and the proposed `layer_sparsity` YAML; the work is
`passes.prune.scan.scan`."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from cli.errors import handle_errors
from cli.io import check_verbosity, emit_json, out, quiet_warnings, stdout_to_stderr
from cli.options import AsJson, Quiet, TrustModel, Verbose
from optimize.errors import UsageError

EXAMPLES = [
    ("optimize prune-scan optimize.example:digits_cnn -c configs/default.yaml", "the built-in example's layers"),
    ("optimize prune-scan model.onnx --min-cosine 0.99 --json", "unlabelled data: keep outputs within cosine 0.99"),
]

Model = Annotated[str, typer.Argument(metavar="MODEL", help="Model file or factory `package.module:callable`.")]
Config = Annotated[str | None, typer.Option("-c", "--config", metavar="CONFIG", show_default=False,
                                            help="Pipeline YAML: its model: section and data.eval are used.")]
Method = Annotated[str, typer.Option("--method", metavar="structured|magnitude", help="How each layer is pruned.")]
Ratios = Annotated[str, typer.Option("--ratios", metavar="R[,R...]", help="Ratios tried on each layer.")]
MinCosine = Annotated[float, typer.Option("--min-cosine", metavar="C", help="Target without labelled eval data.")]
MaxDrop = Annotated[float, typer.Option("--max-drop", metavar="PTS", help="Target with labelled eval data (accuracy points).")]
Layers = Annotated[list[str] | None, typer.Option("--layer", metavar="NAME", show_default=False,
                                                  help="Scan only these layers (repeatable).")]


def parse_ratios(value: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"--ratios: expected comma-separated fractions such as 0.25,0.5,0.75, got {value!r}") from None


@handle_errors
def prune_scan_cmd(
    model: Model,
    config: Config = None,
    method: Method = "structured",
    ratios: Ratios = "0.25,0.5,0.75",
    min_cosine: MinCosine = 0.95,
    max_drop: MaxDrop = 1.0,
    layer: Layers = None,
    as_json: AsJson = False,
    trust_model: TrustModel = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Prune each layer alone at several ratios, measure accuracy (or output cosine), and propose
    per-layer ratios for a target as a YAML snippet."""
    from cli.progress import setup_logging

    check_verbosity(quiet, verbose)
    setup_logging(quiet=quiet, verbose=verbose)

    def progress(done: int, total: int, name: str) -> None:
        if not quiet:
            print(f"prune-scan: {done}/{total} {name}", file=sys.stderr, flush=True)

    with quiet_warnings(quiet):
        from passes.prune.scan import scan

        with stdout_to_stderr():
            result: dict[str, Any] = scan(
                model, config_path=config, method=method, ratios=parse_ratios(ratios), min_cosine=min_cosine,
                max_drop=max_drop, trust_model=trust_model, layers=list(layer or []) or None, progress=progress,
            )
    if as_json:
        emit_json(result)
    else:
        out(scan_text(model, result))


def scan_text(model: str, result: dict[str, Any]) -> str:
    from optimize.prune_report import scan_markdown

    lines = [f"# prune-scan {model} ({result['method']}; baseline {result['baseline']})", ""]
    lines += scan_markdown(result)
    skipped = [f"- {r['name']}: {r['reason']}" for r in result["layers"] if r["reason"]]
    if skipped:
        lines += ["", "Not scanned at every ratio:"] + skipped
    lines += ["", f"Proposed for {result['target']}:", "", "```yaml", result["yaml"].rstrip(), "```"]
    return "\n".join(lines)
