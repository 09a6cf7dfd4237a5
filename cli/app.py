"""The `optimize` command line: a thin layer over `optimize.api` / `optimize.pipeline`.

Contract (an API for CI users; see README):
  exit 0 done, every gate passed · 1 a pass or the runtime failed · 2 usage, config or input
  rejected before any work · 3 a quality gate failed · 130 interrupted.
  stdout carries only results (with --json exactly one JSON document); progress, logs and errors
  go to stderr.

Errors are mapped to exit codes in one place, `_handle_errors` below. Heavy modules (torch, onnx,
the pipeline) are imported inside the commands so `optimize --help` is instant.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from typing import Any, Literal, TypeVar

import typer

from cli.io import check_verbosity, emit_json, out, quiet_warnings, stdout_to_stderr
from optimize import __version__
from optimize.errors import OptimizeError, UsageError

F = TypeVar("F", bound=Callable[..., Any])

EPILOG = (
    "Exit codes: 0 done · 1 a pass or the runtime failed · 2 usage, config or input rejected · "
    "3 a quality gate failed · 130 interrupted. stdout carries only results; progress, logs and "
    "errors go to stderr."
)

app = typer.Typer(
    name="optimize",
    help="Prune → quantize → distill a model from one YAML pipeline; write a verified ONNX file and "
    "a report of measured facts.",
    epilog=EPILOG,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


# ---------------------------------------------------------------- output helpers


def _err(line: str) -> None:
    """One line to stderr, unformatted (no rich wrapping: CI logs and grep want whole lines). A
    broken stderr (closed, full) loses the line, never the exit code."""
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):
        _silence(2)


def _silence(fd: int) -> None:
    """Point a broken console stream at /dev/null, so later writes and the flush at exit succeed."""
    with contextlib.suppress(Exception):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)


def _console_safe(show: Callable[..., None], *args: Any) -> None:
    """Show a result whose files are already written: a closed pipe (`--json | true`), a full disk
    (`>/dev/full`) or a closed stderr changes neither those files nor the exit code it earned."""
    try:
        show(*args)
    except (OSError, ValueError, AttributeError):
        _silence(1)
        _silence(2)


def _std_streams_open() -> None:
    """A closed stdin/stdout/stderr at start is reopened on /dev/null: otherwise the next file the
    run opens takes its number, and console writes (ours, or a C library's) would land in it."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    if sys.stdout is None:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the process's stdout from now on
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115


def _one_line(message: str) -> str:
    parts = [p.strip() for p in str(message).splitlines() if p.strip()]
    return " | ".join(parts) if parts else ""


def _stdout_console() -> Any:
    """Rich console for results. Off a terminal (files, CI logs) tables get 120 columns, not 80,
    unless COLUMNS says otherwise, so rows are not folded into unreadable stacks."""
    from rich.console import Console

    width = None
    if "COLUMNS" not in os.environ:
        try:
            width = None if sys.stdout.isatty() else 120
        except (AttributeError, ValueError):
            width = 120
    return Console(file=sys.stdout, width=width)


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(file=sys.stderr)


def print_error(exc: BaseException, verbose: bool = False) -> int:
    """Print `exc` as the contract says and return its exit code. The one error → exit-code map."""
    if verbose:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    if isinstance(exc, KeyboardInterrupt):
        code = int(getattr(exc, "exit_code", 130))  # optimize.errors.Terminated: 143 (SIGTERM), 129 (SIGHUP)
        _err(_STOP_LINES.get(code, "interrupted"))
        return code
    if isinstance(exc, OptimizeError):
        _err(f"error: {_one_line(str(exc))}")
        return int(getattr(exc, "exit_code", 1))
    detail = _one_line(str(exc))
    hint = "" if verbose else " (run with -v for the traceback)"
    _err(f"error: internal: {type(exc).__name__}{': ' + detail if detail else ''}{hint}")
    return 1


_STOP_LINES = {143: "terminated (SIGTERM)", 129: "hung up (SIGHUP)"}


def _handle_errors(fn: F) -> F:
    """Wrap a command: OptimizeError → `error: MSG` + its exit code; Ctrl-C → 130; anything else →
    `error: internal: ...` + 1. Tracebacks only with -v (the command's `verbose` parameter)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        verbose = bool(kwargs.get("verbose"))
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except BrokenPipeError:
            # stdout closed early (`optimize ... | head`): nothing left to say to anyone.
            with contextlib.suppress(Exception):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
            raise typer.Exit(1) from None
        except Exception as exc:
            if _is_click_exception(exc):
                raise
            raise typer.Exit(print_error(exc, verbose)) from None
        except KeyboardInterrupt as exc:
            raise typer.Exit(print_error(exc, verbose)) from None

    return wrapper  # type: ignore[return-value]


# click's base exception (usage errors, bad parameters): click maps these to exit 2 itself. Found
# through typer.BadParameter because typer 0.2x vendors click as typer._click, older ones import it.
_CLICK_EXCEPTION = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def _is_click_exception(exc: BaseException) -> bool:
    return isinstance(exc, _CLICK_EXCEPTION)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """While a command works, SIGTERM raises `Terminated` (a KeyboardInterrupt) so the Ctrl-C
    cleanup runs (temporary files removed, nothing under the final name) and the exit code is 143.
    A second SIGTERM during that cleanup kills at once (the default action)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    caught = [signal.SIGTERM, signal.SIGHUP] if hasattr(signal, "SIGHUP") else [signal.SIGTERM]

    def handler(signum: int, frame: Any) -> None:
        from optimize.errors import Terminated

        for sig in caught:
            signal.signal(sig, signal.SIG_DFL)
        exc = Terminated()
        exc.exit_code = 128 + signum  # SIGTERM 143, SIGHUP (the terminal closed) 129
        raise exc

    previous = {sig: signal.signal(sig, handler) for sig in caught}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# ---------------------------------------------------------------- root


def _version_callback(value: bool) -> None:
    if value:
        out(f"optimize {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", metavar="", help="Print the version and exit.", callback=_version_callback, is_eager=True
    ),
) -> None:
    """Prune → quantize → distill a model from one YAML pipeline; write a verified ONNX file and a
    report of measured facts."""


# ---------------------------------------------------------------- run

Device = Literal["cpu", "cuda", "auto"]
ProgressChoice = Literal["auto", "rich", "plain", "none"]


@app.command(epilog=EPILOG)
@_handle_errors
def run(
    model: str | None = typer.Argument(
        None,
        metavar="MODEL",
        help="Model file (.onnx, TorchScript, .pt2) or factory `package.module:callable`. "
        "Omit MODEL and -c to run the built-in example.",
        show_default=False,
    ),
    config: str | None = typer.Option(
        None, "-c", "--config", metavar="CONFIG", help="Pipeline YAML (default: configs/default.yaml).", show_default=False
    ),
    output: str | None = typer.Option(
        None, "-o", "--output", metavar="OUT.onnx", help="Output ONNX path (overrides output.path).", show_default=False
    ),
    report: str | None = typer.Option(
        None, "--report", metavar="REPORT.json", help="Report JSON path (overrides output.report).", show_default=False
    ),
    device: Device | None = typer.Option(
        None, "--device", help="cpu, cuda or auto (overrides hardware.device).", show_default=False
    ),
    threads: int | None = typer.Option(
        None, "--threads", min=1, metavar="N", help="Intra-op threads (overrides hardware.threads).", show_default=False
    ),
    set_: list[str] | None = typer.Option(
        None, "--set", metavar="KEY=VALUE", help="Override a config field, e.g. passes[0].sparsity=0.5 (repeatable).", show_default=False
    ),
    as_json: bool = typer.Option(False, "--json", metavar="", help="Print the report as one JSON document on stdout."),
    dry_run: bool = typer.Option(
        False, "--dry-run", metavar="", help="Validate, print the resolved config and the planned steps; run nothing."
    ),
    progress: ProgressChoice = typer.Option(
        "auto", "--progress", help="auto: bars on a terminal, plain lines elsewhere; rich; plain; none."
    ),
    quiet: bool = typer.Option(False, "-q", "--quiet", metavar="", help="No progress or logs; only errors."),
    verbose: bool = typer.Option(False, "-v", "--verbose", metavar="", help="Debug logs and full tracebacks on errors."),
    fail_on_gate: bool = typer.Option(
        True, "--fail-on-gate/--no-fail-on-gate", metavar="", help="Exit 3 when a quality gate fails (else report it and exit 0)."
    ),
    trust_model: bool = typer.Option(
        False, "--trust-model", metavar="", help="Allow loading pickled whole modules (runs code from the file)."
    ),
    trust_code: bool = typer.Option(
        False, "--trust-code", metavar="", help="Allow the config to name `module:callable` code (data sources, student factories) that it runs."
    ),
    seed: int | None = typer.Option(None, "--seed", min=0, metavar="N", help="Seed (overrides seed).", show_default=False),
    work_dir: str | None = typer.Option(
        None, "--work-dir", metavar="DIR", help="Keep intermediate files here (default: a temporary dir, removed).", show_default=False
    ),
    resume: bool = typer.Option(
        False, "--resume", metavar="",
        help="Continue training (distill) from its latest checkpoint (checkpoint_every); finished ONNX passes "
        "are reused from the pass cache (as on any run unless --no-cache).",
    ),
    no_cache: bool = typer.Option(
        False, "--no-cache", metavar="", help="Neither reuse nor store pass outputs in the pass cache (output.cache=false)."
    ),
    cache_dir: str | None = typer.Option(
        None, "--cache-dir", metavar="DIR", show_default=False,
        help="Pass cache folder (output.cache_dir; default $OPTIMIZE_CACHE/passes or ~/.cache/optimize/passes).",
    ),
    input_shape: list[str] | None = typer.Option(
        None, "--input-shape", metavar="NAME=DIMS", show_default=False,
        help="An input's shape for calibration, parity and latency, e.g. images=1x3x640x640 (repeatable; "
        "overrides model.input_shapes; its first dim is the measured batch unless measure.batch is set).",
    ),
) -> None:
    """Run a pipeline: load MODEL, apply the passes in CONFIG, write a verified ONNX and a report."""
    from pathlib import Path

    from cli.progress import make_progress, setup_logging
    from optimize.api import RunOptions

    check_verbosity(quiet, verbose)
    setup_logging(quiet=quiet, verbose=verbose)
    opts = RunOptions(
        model=model,
        config=config,
        overrides=list(set_ or []),
        output=output,
        report=report,
        device=device,
        threads=threads,
        seed=seed,
        trust_model=trust_model,
        trust_code=trust_code,
        fail_on_gate=fail_on_gate,
        work_dir=Path(work_dir) if work_dir else None,
        resume=resume,
        cache=False if no_cache else None,
        cache_dir=cache_dir,
        input_shapes=list(input_shape or []),
    )

    with quiet_warnings(quiet), _sigterm_as_interrupt():
        from optimize import pipeline

        if dry_run:
            with stdout_to_stderr():
                plan = pipeline.plan(opts)
            from cli.render import plan_to_dict, plan_yaml

            if as_json:
                emit_json(plan_to_dict(plan))
            else:
                out(plan_yaml(plan))
            return

        display = make_progress(progress, quiet=quiet)
        opts.progress = display
        result = None
        try:
            with display, stdout_to_stderr():
                result = pipeline.run(opts)
        except OptimizeError as exc:
            partial = getattr(exc, "report", None)
            if partial is not None:
                _console_safe(_emit_report, partial, as_json)
            raise
        from optimize.distributed import is_main

        if is_main():  # under torchrun only rank 0 prints results; every rank exits with its code
            _console_safe(_emit_report, result, as_json)
        _check_status(result, fail_on_gate)


def _check_status(report: Any, fail_on_gate: bool) -> None:
    """Exit codes follow the report even if the library returned instead of raising."""
    from optimize.errors import GateFailed

    if report.status == "failed":
        raise OptimizeError(report.error or "the run failed (see the report)")
    if report.status == "gate_failed" and fail_on_gate:
        raise GateFailed([g.name for g in report.gates if not g.passed])


def _emit_report(report: Any, as_json: bool) -> None:
    """The report on stdout (JSON or tables); every gate as one line on stderr (passed ones first);
    failed gates also as GitHub Actions error annotations when GITHUB_ACTIONS is true."""
    if as_json:
        emit_json(report.model_dump(mode="json"))
    else:
        from cli.render import print_report

        print_report(report, _stdout_console())
    from cli.render import gate_failure_lines, gate_passed_lines, github_error

    for line in gate_passed_lines(report):
        _err(line)
    lines = gate_failure_lines(report)
    for line in lines:
        _err(line)
    if os.environ.get("GITHUB_ACTIONS") == "true":
        for line in lines:
            _err(github_error(line))


# ---------------------------------------------------------------- validate


@app.command(epilog=EPILOG)
@_handle_errors
def validate(
    configs: list[str] = typer.Argument(..., metavar="CONFIG...", help="Pipeline YAML file(s)."),
    set_: list[str] | None = typer.Option(
        None, "--set", metavar="KEY=VALUE", help="Apply an override before validating (repeatable).", show_default=False
    ),
    verbose: bool = typer.Option(False, "-v", "--verbose", metavar="", help="Full tracebacks on errors."),
) -> None:
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


# ---------------------------------------------------------------- passes


@app.command(name="passes", epilog=EPILOG)
@_handle_errors
def passes_cmd(
    name: str | None = typer.Argument(None, metavar="NAME", help="Show this pass's options.", show_default=False),
    as_json: bool = typer.Option(False, "--json", metavar="", help="Print as JSON."),
    verbose: bool = typer.Option(False, "-v", "--verbose", metavar="", help="Full tracebacks on errors."),
) -> None:
    """List the registered passes, or one pass's options."""
    from optimize import registry

    if name is None:
        rows = [_pass_info(registry.get(n), options=False) for n in registry.names()]
        if as_json:
            emit_json(rows)
        else:
            from cli.render import passes_table

            _stdout_console().print(passes_table(rows))
        return

    if name not in registry.names():
        import difflib

        hint = difflib.get_close_matches(name, registry.names(), n=1)
        extra = f" (did you mean '{hint[0]}'?)" if hint else ""
        raise UsageError(f"unknown pass '{name}'{extra}; known: {', '.join(registry.names())}")
    info = _pass_info(registry.get(name), options=True)
    if as_json:
        emit_json(info)
    else:
        from cli.render import pass_detail

        _stdout_console().print(pass_detail(info))


def _pass_info(cls: Any, options: bool) -> dict[str, Any]:
    info: dict[str, Any] = {
        "name": cls.name,
        "summary": cls.summary,
        "accepts": sorted(cls.accepts),
        "trains": bool(getattr(cls, "trains", False)),
    }
    if options:
        from cli.render import pass_options

        info["options"] = pass_options(cls.config_cls)
        info["schema"] = cls.config_cls.model_json_schema()
    return info


# ---------------------------------------------------------------- schema


@app.command(epilog=EPILOG)
@_handle_errors
def schema(
    report: bool = typer.Option(False, "--report", metavar="", help="Print the report's JSON Schema instead of the config's."),
    verbose: bool = typer.Option(False, "-v", "--verbose", metavar="", help="Full tracebacks on errors."),
) -> None:
    """Print the JSON Schema of pipeline files (for editors and CI), or of the report."""
    if report:
        from optimize.report import Report

        emit_json(Report.model_json_schema())
    else:
        from optimize.config import json_schema

        emit_json(json_schema())


# ---------------------------------------------------------------- inspect


@app.command(name="inspect", epilog=EPILOG)
@_handle_errors
def inspect_cmd(
    model: str = typer.Argument(..., metavar="MODEL", help="Model file or factory `package.module:callable`."),
    as_json: bool = typer.Option(False, "--json", metavar="", help="Print the facts as one JSON document."),
    trust_model: bool = typer.Option(
        False, "--trust-model", metavar="", help="Allow loading pickled whole modules (runs code from the file)."
    ),
    input_shape: list[str] | None = typer.Option(
        None, "--input-shape", metavar="NAME=DIMS", show_default=False,
        help="An input's shape for calibration, parity and latency, e.g. images=1x3x640x640 (repeatable; "
        "checked against the model's inputs and shown as example_shape).",
    ),
    quiet: bool = typer.Option(False, "-q", "--quiet", metavar="", help="No logs; only errors."),
    verbose: bool = typer.Option(False, "-v", "--verbose", metavar="", help="Debug logs and full tracebacks on errors."),
) -> None:
    """Show a model's form, inputs, outputs, op counts, weights and sparsity."""
    from cli.progress import setup_logging

    check_verbosity(quiet, verbose)
    setup_logging(quiet=quiet, verbose=verbose)
    with quiet_warnings(quiet):
        from optimize.api import inspect_model

        with stdout_to_stderr():
            shapes = {"input_shapes": list(input_shape)} if input_shape else {}
            facts = inspect_model(model, trust_model=trust_model, **shapes)
    if as_json:
        emit_json(facts)
        return
    from cli.render import counts_table, data_renderable

    console = _stdout_console()
    rest = dict(facts)
    ops = rest.pop("ops", None)
    console.print(data_renderable(rest, title=model))
    if isinstance(ops, dict) and ops:
        console.print()
        console.print(counts_table("Ops", ops))


# ---------------------------------------------------------------- bench


def _parse_threads(value: str | None) -> list[int] | None:
    if value is None:
        return None
    return _parse_counts(value, "--threads")


def _parse_counts(value: str, flag: str) -> list[int]:
    what = "thread counts" if flag == "--threads" else "batch sizes"
    try:
        counts = [int(x) for x in value.replace(" ", "").split(",") if x]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated {what} like 1,4; got {value!r}", param_hint=f"'{flag}'") from None
    if not counts or any(t < 1 for t in counts):
        raise typer.BadParameter(f"{what} must be positive integers; got {value!r}", param_hint=f"'{flag}'")
    return sorted(set(counts))


def _shape_batches(flags: list[str] | None) -> list[int]:
    """bench without --batch: the batch of --input-shape (the first dim), else 1."""
    from optimize.shapes import shapes_from_flags

    firsts = sorted({dims[0] for dims in shapes_from_flags(flags).values() if dims})
    return firsts[:1] or [1]


@app.command(epilog=EPILOG)
@_handle_errors
def bench(
    model: str = typer.Argument(..., metavar="MODEL", help="Model to measure."),
    vs: str | None = typer.Option(
        None, "--vs", metavar="OTHER", help="A second model, timed interleaved with MODEL; reports the speedup.", show_default=False
    ),
    device: Device = typer.Option("cpu", "--device", help="cpu, cuda or auto."),
    threads: str | None = typer.Option(
        None, "--threads", metavar="N[,N...]", help="Thread counts to measure, e.g. 1,4 (default: 1, 2, 4, … all cores).", show_default=False
    ),
    batch: str | None = typer.Option(
        None, "--batch", metavar="N[,N...]", show_default=False,
        help="Batch sizes to measure, e.g. 1,8 (default: the first dim of --input-shape, else 1).",
    ),
    input_shape: list[str] | None = typer.Option(
        None, "--input-shape", metavar="NAME=DIMS", show_default=False,
        help="An input's shape for calibration, parity and latency, e.g. images=1x3x640x640 (repeatable; "
        "the batch dim is measured unless --batch is given).",
    ),
    warmup: int = typer.Option(5, "--warmup", min=0, metavar="N", help="Untimed runs first."),
    repeat: int = typer.Option(30, "--repeat", min=3, metavar="N", help="Timed runs per model and setting."),
    as_json: bool = typer.Option(False, "--json", metavar="", help="Print the results as one JSON document."),
    trust_model: bool = typer.Option(
        False, "--trust-model", metavar="", help="Allow loading pickled whole modules (runs code from the file)."
    ),
    progress: ProgressChoice = typer.Option("auto", "--progress", help="auto, rich, plain or none."),
    quiet: bool = typer.Option(False, "-q", "--quiet", metavar="", help="No progress or logs; only errors."),
    verbose: bool = typer.Option(False, "-v", "--verbose", metavar="", help="Debug logs and full tracebacks on errors."),
) -> None:
    """Measure MODEL (optionally vs OTHER, interleaved) over a batch × thread sweep: p50/p90/p99,
    throughput, outliers, parallel speedup, memory."""
    from cli.progress import make_progress, setup_logging

    check_verbosity(quiet, verbose)
    setup_logging(quiet=quiet, verbose=verbose)
    thread_list = _parse_threads(threads)  # None: the library's default (1, 2, 4, … all cores)
    batch_list = _parse_counts(batch, "--batch") if batch is not None else _shape_batches(input_shape)
    with quiet_warnings(quiet):
        from optimize.benchmark import bench_models

        display = make_progress(progress, quiet=quiet)
        with display, stdout_to_stderr():
            result = bench_models(
                model,
                vs,
                threads=thread_list,
                batch=batch_list,
                warmup=warmup,
                repeat=repeat,
                device=device,
                progress=display,
                trust_model=trust_model,
                **({"input_shapes": list(input_shape)} if input_shape else {}),
            )
    if as_json:
        emit_json(result)
        return
    from cli.render import bench_renderable

    _stdout_console().print(bench_renderable(result))


# ---------------------------------------------------------------- batch (optimize/batch.py)


@app.command(epilog=EPILOG)
@_handle_errors
def batch(
    manifest: str = typer.Argument(..., metavar="MANIFEST.yaml", help="Jobs: [{model, config, output, set, name}, ...]."),
    jobs: int = typer.Option(1, "-j", "--jobs", min=1, metavar="N", help="Jobs run at a time (side by side they distort each other's latency)."),
    threads: int | None = typer.Option(
        None, "--threads", min=1, metavar="N", help="Intra-op threads for every job (keep jobs × threads ≤ cores).", show_default=False
    ),
    as_json: bool = typer.Option(False, "--json", metavar="", help="Print the summary as one JSON document."),
    trust_code: bool = typer.Option(
        False, "--trust-code", metavar="", help="Allow the manifest and configs to name `module:callable` code that the jobs run."
    ),
    quiet: bool = typer.Option(False, "-q", "--quiet", metavar="", help="No progress lines or warnings; only errors."),
    verbose: bool = typer.Option(False, "-v", "--verbose", metavar="", help="Print a failed job's whole stderr; full tracebacks."),
) -> None:
    """Run `optimize run` for every job in MANIFEST, N at a time, each in its own process; print one
    line per job (exit code 0, or the worst job's: 130 > 2 > 1 > 3)."""
    from optimize.batch import load_manifest, run_batch, summary_lines

    check_verbosity(quiet, verbose)
    job_list = load_manifest(manifest, trust_code=trust_code)  # every job's config validated: exit 2 before anything runs
    if jobs > 1 and not quiet:
        _err(f"warning: -j {jobs} runs jobs side by side on this machine: they compete for the CPU, so their latency "
             "numbers (speedup, max_latency_ms) distort each other; use -j 1 when the numbers matter, or one machine "
             "per job (a job array)")
    total = len(job_list)
    done = [0]

    def on_event(kind: str, job: Any, res: Any) -> None:
        if quiet:
            return
        if kind == "start":
            _err(f"[start] {job.name}: {job.model} → {job.output}")
        else:
            done[0] += 1
            _err(f"[{done[0]}/{total}] {job.name}: exit {res.exit_code} {res.status}"
                 + (f" ({res.seconds:.1f}s)" if res.seconds is not None else "") + (f" — {res.error}" if res.error and res.exit_code else ""))

    with _sigterm_as_interrupt():
        result = run_batch(job_list, parallel=jobs, threads=threads, manifest=manifest, on_event=on_event)
    if verbose:
        for r in result.jobs:
            if r.exit_code not in (0, None) and r.error:
                _err(f"{r.name}: {r.error}")
    if as_json:
        emit_json(result.to_dict())
    else:
        for line in summary_lines(result):
            out(line)
    if os.environ.get("GITHUB_ACTIONS") == "true":
        for r in result.jobs:
            if r.exit_code not in (0, None):
                from cli.render import github_error

                _err(github_error(f"batch job {r.name}: exit {r.exit_code} {r.status}" + (f" — {r.error}" if r.error else ""), title="optimize batch"))
    if result.interrupted:
        _err(_STOP_LINES.get(result.exit_code, "interrupted"))
    if result.exit_code:
        raise typer.Exit(result.exit_code)


# ---------------------------------------------------------------- prune-scan (cli/prune_scan.py)

from cli.prune_scan import prune_scan_cmd  # noqa: E402

app.command(name="prune-scan", epilog=EPILOG)(_handle_errors(prune_scan_cmd))


# ---------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (`optimize = "cli.app:main"`); exits with the contract's code.

    Commands map their own errors (`_handle_errors`); click maps usage errors to 2. This catches
    what escapes both (an interrupt during option parsing, a bug in a callback).
    """
    _std_streams_open()
    try:
        code = app(args=argv, prog_name="optimize", standalone_mode=False)
    except SystemExit:
        raise
    except _CLICK_EXCEPTION as exc:  # a usage error (unknown flag, bad value): one line, exit 2
        sys.exit(_usage_error(exc))
    except BaseException as exc:  # noqa: BLE001 - the last line of defence
        if type(exc).__name__ == "Abort":  # click's Abort (e.g. EOF at a prompt)
            _err("aborted")
            sys.exit(1)
        verbose = any(a in ("-v", "--verbose") for a in (argv if argv is not None else sys.argv[1:]))
        sys.exit(print_error(exc, verbose))
    sys.exit(code if isinstance(code, int) else 0)


def _usage_error(exc: Any) -> int:
    """Print click's usage error as `error: MESSAGE (see 'optimize CMD --help')`, one line (CI logs,
    grep), and return its exit code. `optimize` with no arguments still prints the help."""
    if type(exc).__name__ == "NoArgsIsHelpError":
        exc.show()
        return int(exc.exit_code)
    ctx = getattr(exc, "ctx", None)
    where = f" (see '{ctx.command_path} --help')" if ctx is not None and getattr(ctx, "command_path", None) else ""
    _err(f"error: {_one_line(exc.format_message())}{where}")
    return int(getattr(exc, "exit_code", 2))


if __name__ == "__main__":
    main()
