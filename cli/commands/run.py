"""`optimize run`: load a model, apply the pipeline's passes, write a verified ONNX and a report."""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer

from cli.errors import handle_errors, sigterm_as_interrupt
from cli.io import (
    check_verbosity,
    console_safe,
    emit_json,
    err,
    out,
    quiet_warnings,
    stdout_console,
    stdout_to_stderr,
)
from cli.options import (
    AsJson,
    Device,
    InputShapes,
    Overrides,
    ProgressOption,
    Quiet,
    TrustCode,
    TrustModel,
)
from optimize.errors import OptimizeError

EXAMPLES = [
    ("optimize run", "the built-in example (a digits CNN, configs/default.yaml)"),
    ("optimize run model.onnx -c configs/onnx-int8.yaml -o model.int8.onnx", "quantize an ONNX model to int8"),
    ("optimize run -c configs/default.yaml --dry-run", "print the resolved config and the planned steps"),
    ("optimize run m.onnx -c configs/cpu-int8.yaml --input-shape x=1x3x224x224", "fix a symbolic shape"),
    ("optimize run ./my-llm -c configs/llm-int4.yaml --set data.eval.source=e.txt",
     "a decoder LLM (folder or .gguf) to int4, tokens/s and quality measured"),
    ("optimize run -q --json > report.json", "the report as JSON, nothing else"),
]

Model = Annotated[
    str | None,
    typer.Argument(metavar="MODEL", show_default=False,
                   help="Model file (.onnx, TorchScript, .pt2, .gguf), a model folder (Hugging Face, SavedModel) "
                   "or factory `package.module:callable`. "
                   "Omit MODEL and -c to run the built-in example."),
]
Config = Annotated[str | None, typer.Option("-c", "--config", metavar="CONFIG", show_default=False,
                                            help="Pipeline YAML (default: configs/default.yaml).")]
Output = Annotated[str | None, typer.Option("-o", "--output", metavar="OUT.onnx", show_default=False,
                                            help="Output ONNX path (overrides output.path).")]
ReportPath = Annotated[str | None, typer.Option("--report", metavar="REPORT.json", show_default=False,
                                                help="Report JSON path (overrides output.report).")]
DeviceOpt = Annotated[Device | None, typer.Option("--device", metavar="cpu|cuda|auto", show_default=False,
                                                  help="Where to run (overrides hardware.device).")]
Threads = Annotated[int | None, typer.Option("--threads", min=1, metavar="N", show_default=False,
                                             help="Intra-op threads (overrides hardware.threads).")]
Verbose = Annotated[bool, typer.Option("-v", "--verbose", help="Debug logs, full tracebacks, formulas and details in the result.")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Validate, print the resolved config and the planned steps; run nothing.")]
FailOnGate = Annotated[bool, typer.Option("--fail-on-gate/--no-fail-on-gate", show_default=False,
                                          help="Exit 3 when a quality gate fails (default), or report it and exit 0.")]
Seed = Annotated[int | None, typer.Option("--seed", min=0, metavar="N", show_default=False, help="Seed (overrides seed).")]
WorkDir = Annotated[str | None, typer.Option("--work-dir", metavar="DIR", show_default=False,
                                             help="Keep intermediate files here (default: a temporary dir, removed).")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue training (distill) from its latest checkpoint; finished "
                                      "ONNX passes are reused from the pass cache (as on any run unless --no-cache).")]
NoCache = Annotated[bool, typer.Option("--no-cache", help="Neither reuse nor store pass outputs in the pass cache.")]
CacheDir = Annotated[str | None, typer.Option("--cache-dir", metavar="DIR", show_default=False,
                                              help="Pass cache folder (default $OPTIMIZE_CACHE/passes or ~/.cache/optimize/passes).")]


@handle_errors
def run(
    model: Model = None,
    config: Config = None,
    output: Output = None,
    report: ReportPath = None,
    device: DeviceOpt = None,
    threads: Threads = None,
    set_: Overrides = None,
    as_json: AsJson = False,
    dry_run: DryRun = False,
    progress: ProgressOption = "auto",
    quiet: Quiet = False,
    verbose: Verbose = False,
    fail_on_gate: FailOnGate = True,
    trust_model: TrustModel = False,
    trust_code: TrustCode = False,
    seed: Seed = None,
    work_dir: WorkDir = None,
    resume: Resume = False,
    no_cache: NoCache = False,
    cache_dir: CacheDir = None,
    input_shape: InputShapes = None,
) -> None:
    """Run a pipeline: load MODEL, apply the passes in CONFIG, write a verified ONNX and a report."""
    from pathlib import Path

    from cli.progress import setup_logging
    from optimize.api import RunOptions

    check_verbosity(quiet, verbose)
    setup_logging(quiet=quiet, verbose=verbose)
    opts = RunOptions(
        model=model, config=config, overrides=list(set_ or []), output=output, report=report, device=device,
        threads=threads, seed=seed, trust_model=trust_model, trust_code=trust_code, fail_on_gate=fail_on_gate,
        work_dir=Path(work_dir) if work_dir else None, resume=resume, cache=False if no_cache else None,
        cache_dir=cache_dir, input_shapes=list(input_shape or []),
    )
    with quiet_warnings(quiet), sigterm_as_interrupt():
        if dry_run:
            show_plan(opts, as_json)
        else:
            execute(opts, progress, quiet=quiet, verbose=verbose, as_json=as_json)


def show_plan(opts: Any, as_json: bool) -> None:
    from cli.render import plan_to_dict, plan_yaml
    from optimize import pipeline

    with stdout_to_stderr():
        plan = pipeline.plan(opts)
    if as_json:
        emit_json(plan_to_dict(plan))
    else:
        out(plan_yaml(plan))


def execute(opts: Any, progress: str, *, quiet: bool, verbose: bool, as_json: bool) -> None:
    """Run the pipeline under a progress display; the report (even a partial one) goes to stdout."""
    from cli.progress import make_progress
    from optimize import pipeline
    from optimize.distributed import is_main

    display = make_progress(progress, quiet=quiet)  # type: ignore[arg-type]
    opts.progress = display
    try:
        with display, stdout_to_stderr():
            result = pipeline.run(opts)
    except OptimizeError as exc:
        partial = getattr(exc, "report", None)
        if partial is not None:
            console_safe(emit_report, partial, as_json, verbose)
        raise
    if is_main():  # under torchrun only rank 0 prints results; every rank exits with its code
        console_safe(emit_report, result, as_json, verbose)
    check_status(result, opts.fail_on_gate)


def check_status(report: Any, fail_on_gate: bool) -> None:
    """Exit codes follow the report even if the library returned instead of raising."""
    from optimize.errors import GateFailed

    if report.status == "failed":
        raise OptimizeError(report.error or "the run failed (see the report)")
    if report.status == "gate_failed" and fail_on_gate:
        raise GateFailed([g.name for g in report.gates if not g.passed])


def emit_report(report: Any, as_json: bool, verbose: bool = False) -> None:
    """The report on stdout (JSON or tables); every gate as one line on stderr (passed ones first);
    failed gates also as GitHub Actions error annotations when GITHUB_ACTIONS is true."""
    from cli.render import gate_failure_lines, gate_passed_lines, github_error

    if as_json:
        emit_json(report.model_dump(mode="json"))
    else:
        from cli.report_view import print_report

        print_report(report, stdout_console(), verbose=verbose)
    for line in gate_passed_lines(report):
        err(line)
    lines = gate_failure_lines(report)
    for line in lines:
        err(line)
    if os.environ.get("GITHUB_ACTIONS") == "true":
        for line in lines:
            err(github_error(line))
