"""`optimize batch`: `optimize run` for every job of a manifest, each in its own process."""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer

from cli.errors import STOP_LINES, handle_errors, sigterm_as_interrupt
from cli.io import check_verbosity, emit_json, err, out
from cli.options import AsJson, Quiet, TrustCode, Verbose

EXAMPLES = [
    ("optimize batch jobs.yaml", "jobs.yaml: [{model: m.onnx, config: configs/onnx-int8.yaml}]"),
    ("optimize batch jobs.yaml -j 2 --threads 1 --json", "two at a time (their latencies distort each other)"),
]

Manifest = Annotated[str, typer.Argument(metavar="MANIFEST.yaml", help="Jobs: [{model, config, output, set, name}, ...].")]
Jobs = Annotated[int, typer.Option("-j", "--jobs", min=1, metavar="N",
                                   help="Jobs run at a time (side by side they distort each other's latency).")]
Threads = Annotated[int | None, typer.Option("--threads", min=1, metavar="N", show_default=False,
                                             help="Intra-op threads for every job (keep jobs × threads ≤ cores).")]


@handle_errors
def batch(
    manifest: Manifest,
    jobs: Jobs = 1,
    threads: Threads = None,
    as_json: AsJson = False,
    trust_code: TrustCode = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Run `optimize run` for every job in MANIFEST, N at a time, each in its own process; print one
    line per job (exit code 0, or the worst job's: 130 > 2 > 1 > 3)."""
    from optimize.batch import load_manifest, run_batch

    check_verbosity(quiet, verbose)
    job_list = load_manifest(manifest, trust_code=trust_code)  # every job's config validated: exit 2 before anything runs
    if jobs > 1 and not quiet:
        err(f"warning: -j {jobs} runs jobs side by side on this machine: they compete for the CPU, so their latency "
            "numbers (speedup, max_latency_ms) distort each other; use -j 1 when the numbers matter, or one machine "
            "per job (a job array)")
    on_event = event_printer(len(job_list), quiet)
    with sigterm_as_interrupt():
        result = run_batch(job_list, parallel=jobs, threads=threads, manifest=manifest, on_event=on_event)
    show_result(result, as_json, verbose)
    if result.interrupted:
        err(STOP_LINES.get(result.exit_code, "interrupted"))
    if result.exit_code:
        raise typer.Exit(result.exit_code)


def event_printer(total: int, quiet: bool) -> Any:
    """One stderr line when a job starts and one when it ends, `[done/total]`."""
    done = [0]

    def on_event(kind: str, job: Any, res: Any) -> None:
        if quiet:
            return
        if kind == "start":
            err(f"[start] {job.name}: {job.model} → {job.output}")
            return
        done[0] += 1
        took = f" ({res.seconds:.1f}s)" if res.seconds is not None else ""
        why = f" — {res.error}" if res.error and res.exit_code else ""
        err(f"[{done[0]}/{total}] {job.name}: exit {res.exit_code} {res.status}{took}{why}")

    return on_event


def show_result(result: Any, as_json: bool, verbose: bool) -> None:
    from optimize.batch import summary_lines

    if verbose:
        for r in result.jobs:
            if r.exit_code not in (0, None) and r.error:
                err(f"{r.name}: {r.error}")
    if as_json:
        emit_json(result.to_dict())
    else:
        for line in summary_lines(result):
            out(line)
    if os.environ.get("GITHUB_ACTIONS") == "true":
        from cli.render import github_error

        for r in result.jobs:
            if r.exit_code not in (0, None):
                why = f" — {r.error}" if r.error else ""
                err(github_error(f"batch job {r.name}: exit {r.exit_code} {r.status}{why}", title="optimize batch"))
