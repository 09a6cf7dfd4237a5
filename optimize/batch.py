"""`optimize batch MANIFEST.yaml -j N`: optimize many models from one manifest.

```yaml
jobs:
  - model: models/a.onnx
    config: pipelines/int8.yaml
    output: out/a.int8.onnx          # optional: MODEL_STEM.opt.onnx in the manifest's folder
    set: [hardware.threads=2]         # optional --set overrides
    name: a-int8                      # optional label (default: the model's stem)
```

Relative paths, in the manifest and in the configs it names (data files), resolve from the
manifest's folder: every job runs there. The manifest is validated like a pipeline file (pydantic,
unknown keys rejected, `FILE:LINE: key: message`), and so is every job's config with its `set:`,
before any job starts: one bad job stops the batch with exit 2 and nothing run.

Each job is a separate `python -m cli run ... --json -q` process, so a crash, a leak or an
out-of-memory kill stays inside that job, and each job's own atomic writes keep its outputs whole.
N jobs run at a time (default 1). Jobs side by side on one CPU slow each other down, which distorts
their latency numbers (`speedup`, `max_latency_ms`); use -j 1 when the numbers matter, or one
machine per job (a job array).

Exit code of the batch: 0 when every job exited 0; otherwise the most severe job code by the order
130/143/129 (interrupted) > 2 (rejected: usage, config or input) > 1 (a pass or the runtime failed;
also a job killed by a signal) > 3 (a quality gate failed). Gates come last because a gate failure
is a finished run with a verdict, while 1 and 2 mean a job did not produce its result. Ctrl-C
(or SIGTERM, or SIGHUP) stops the running jobs (each gets one SIGTERM, which `optimize run` handles like
Ctrl-C: temporary files removed, nothing under the final name; a second Ctrl-C kills them at once),
starts no more, and the batch exits 130 (143, 129).

Hand-written scheduling (subprocess + polling) rather than concurrent.futures: the executor's
worker threads cannot forward a signal to the job they wait on or stop it, and that is most of
what this module has to do.
"""

from __future__ import annotations

import difflib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from optimize.errors import ConfigError
from optimize.yaml_source import YamlDocument, read_yaml, render_key_path

# Higher wins when the batch's exit code is chosen; see the module docstring.
EXIT_PRIORITY = {0: 0, 3: 1, 1: 2, 2: 3, 129: 4, 143: 4, 130: 5}
STOP_GRACE_S = 60.0  # how long a stopped job may clean up before it is killed


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")


class JobSpec(_M):
    model: str = Field(description="Model file or factory `package.module:callable` (as `optimize run MODEL`).")
    config: str = Field(description="Pipeline YAML for this job.")
    output: str | None = Field(None, description="Output ONNX path (default: MODEL_STEM.opt.onnx in the manifest's folder).")
    set: list[str] = Field(default_factory=list, description="`--set KEY=VALUE` overrides for this job.")
    name: str | None = Field(None, description="Label in the summary (default: the model's stem).")


class Manifest(_M):
    schema_version: Literal[1] = Field(1, description="Manifest format version; 1.")
    jobs: list[JobSpec] = Field(min_length=1, description="The jobs, run in this order.")


@dataclass
class Job:
    index: int  # 0-based position in the manifest
    name: str
    model: str  # as given (a factory spec) or absolute
    config: str
    output: str
    overrides: list[str]
    workdir: str  # the manifest's folder: the job runs there
    trust_code: bool = False  # `batch --trust-code`: passed on to each job


@dataclass
class JobResult:
    name: str
    model: str
    output: str
    exit_code: int | None  # None: not started (the batch was interrupted first)
    status: str  # the report's status (ok, gate_failed, failed), or rejected / interrupted / killed / not started
    seconds: float | None = None
    speedup: float | None = None
    accuracy: float | None = None
    accuracy_drop: float | None = None
    gates_failed: list[str] = field(default_factory=list)
    model_written: str | None = None  # the model file the job wrote (NAME.rejected.onnx after a failed gate)
    report: str | None = None
    error: str | None = None  # the job's `error:` line (or the last line of its stderr)


@dataclass
class BatchResult:
    manifest: str
    parallel: int
    jobs: list[JobResult]
    exit_code: int
    interrupted: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------- loading


def _allowed(loc: tuple[Any, ...]) -> list[str]:
    model = JobSpec if len(loc) >= 3 and loc[0] == "jobs" else Manifest
    return list(model.model_fields)


def _message(err: dict[str, Any]) -> str:
    loc = tuple(err["loc"])
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        allowed = _allowed(loc)
        hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        return "unknown key" + (f" (did you mean '{hint[0]}'?)" if hint else f" (allowed: {', '.join(allowed)})")
    if kind == "missing":
        return "required key missing"
    if kind == "too_short":
        return "needs at least one job"
    return str(err.get("msg", "invalid value"))


def load_manifest(path: str | Path, trust_code: bool = False) -> list[Job]:
    """Read and validate MANIFEST, resolve paths from its folder, and validate every job's config
    (with its `set:`) and model path. Raises ConfigError (exit 2) pointing at the manifest line.
    `module:callable` code named in the manifest or a job's config runs only with `trust_code`."""
    doc = read_yaml(path)
    base = Path(path).resolve().parent
    if not isinstance(doc.data, dict):
        raise ConfigError("a manifest is a mapping with a 'jobs:' list", file=doc.file, line=1)
    try:
        manifest = Manifest.model_validate(doc.data)
    except ValidationError as exc:
        # a misspelt key first: its "did you mean" also explains the "required key missing" it causes
        errors = sorted(exc.errors(), key=lambda e: e.get("type") != "extra_forbidden")
        loc = tuple(errors[0]["loc"])
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ConfigError(_message(errors[0]) + more, file=doc.file, line=doc.line_of(loc),
                          key=render_key_path(loc) or None) from None
    jobs: list[Job] = []
    outputs: dict[Path, int] = {}
    names: dict[str, int] = {}
    files: list[tuple[dict[str, Path], dict[str, Path]]] = []
    for i, spec in enumerate(manifest.jobs):
        jobs.append(_resolve(i, spec, base, doc, outputs, names, files, trust_code))
    _check_across_jobs(files, doc)
    return jobs


def _check_across_jobs(files: list[tuple[dict[str, Path], dict[str, Path]]], doc: YamlDocument) -> None:
    """No job writes (by file identity) what any job reads: `a→b, b→c` would lose the original b."""
    from optimize.errors import UsageError
    from optimize.files import check_no_clash

    reads = {f"jobs[{i}] {label}": p for i, (r, _) in enumerate(files) for label, p in r.items()}
    for i, (_, writes) in enumerate(files):
        try:
            check_no_clash(reads, {f"jobs[{i}] {label}": p for label, p in writes.items()})
        except UsageError as exc:
            raise ConfigError(str(exc), file=doc.file, line=doc.line_of(("jobs", i)), key=f"jobs[{i}]") from None


def _resolve(i: int, spec: JobSpec, base: Path, doc: YamlDocument, outputs: dict[Path, int],
             names: dict[str, int], files: list[tuple[dict[str, Path], dict[str, Path]]], trust_code: bool) -> Job:
    from optimize import charts
    from optimize.config import load_config
    from optimize.files import read_paths, write_paths
    from optimize.imports import check_trusted

    def fail(key: str, message: str) -> ConfigError:
        return ConfigError(message, file=doc.file, line=doc.line_of(("jobs", i, key)), key=f"jobs[{i}].{key}")

    model_path = base / spec.model
    factory = ":" in spec.model and not model_path.exists()
    if not factory and not model_path.exists():
        raise fail("model", f"model not found: {model_path}")
    if factory and not trust_code:
        raise fail("model", f"'{spec.model}' is code the manifest would import and run; pass --trust-code to allow it")
    config = base / spec.config
    if not config.is_file():
        raise fail("config", f"config file not found: {config}")
    try:
        cfg = load_config(config, spec.set)
    except ConfigError as exc:
        if exc.file == "--set":  # a bad override: point at this job's `set:` line
            raise fail("set", f"{exc.key + ': ' if exc.key else ''}{exc.message}") from None
        raise
    check_trusted(cfg, trust_code, str(config))
    stem = spec.model.split(":")[-1] if factory else Path(spec.model).stem
    output = (base / spec.output) if spec.output else base / f"{stem}.opt.onnx"
    if output.suffix.lower() != ".onnx":
        raise fail("output", f"output path must end in .onnx: {output}")
    key = output.resolve()
    if key in outputs:
        raise fail("output" if spec.output else "model",
                   f"two jobs would write {output}: jobs[{outputs[key]}] and jobs[{i}] (set output:)")
    outputs[key] = i
    report = base / cfg.output.report if cfg.output.report else output.with_suffix(".report.json")
    files.append((read_paths(spec.model if factory else str(model_path), cfg, str(config), base),
                  write_paths(output, report, bool(cfg.output.markdown), charts.wanted(cfg))))
    name = spec.name or stem
    if name in names:
        raise fail("name" if spec.name else "model", f"job name '{name}' is used by jobs[{names[name]}] too (set name:)")
    names[name] = i
    return Job(index=i, name=name, model=spec.model if factory else str(model_path), config=str(config),
               output=str(output), overrides=list(spec.set), workdir=str(base), trust_code=trust_code)


# ---------------------------------------------------------------- running


def job_argv(job: Job, threads: int | None = None) -> list[str]:
    """The job's command line: `python -m cli run` (the `optimize` CLI) with one JSON report on stdout."""
    argv = [sys.executable, "-m", "cli", "run", job.model, "-c", job.config, "-o", job.output,
            "--json", "-q", "--progress", "none"]
    for s in job.overrides:
        argv += ["--set", s]
    if job.trust_code:
        argv.append("--trust-code")
    if threads:
        argv += ["--threads", str(threads)]
    return argv


def combine_exit_codes(codes: list[int]) -> int:
    """The batch's exit code from its jobs' codes (see the module docstring); 0 for none."""
    worst = 0
    for code in codes:
        code = code if code in EXIT_PRIORITY else 1  # a signal (negative) or an unknown code: the job failed
        if EXIT_PRIORITY[code] > EXIT_PRIORITY[worst]:
            worst = code
    return worst


@dataclass
class _Running:
    job: Job
    proc: subprocess.Popen
    out: Path
    err: Path
    started: float


Event = Callable[[str, Job, "JobResult | None"], None]


def run_batch(
    jobs: list[Job], *, parallel: int = 1, threads: int | None = None, manifest: str = "",
    on_event: Event | None = None, argv_for: Callable[[Job], list[str]] | None = None,
) -> BatchResult:
    """Run the jobs, `parallel` at a time, each in its own process (its own session, so a terminal's
    Ctrl-C reaches only this process, which forwards it once). KeyboardInterrupt (SIGINT, or
    `optimize.errors.Terminated` for SIGTERM) stops every running job and starts no more; the
    result then has `interrupted` and exit code 130 (143)."""
    if parallel < 1:
        raise ValueError("parallel must be at least 1")
    argv_for = argv_for or (lambda j: job_argv(j, threads))
    emit = on_event or (lambda kind, job, res: None)
    results: dict[int, JobResult] = {}
    pending = list(jobs)
    running: dict[int, _Running] = {}
    interrupted: int | None = None
    with tempfile.TemporaryDirectory(prefix="optimize-batch-") as tmp:
        with _StopSignals() as stop:
            try:
                while (pending or running) and stop.code is None:
                    while pending and len(running) < parallel:
                        job = pending.pop(0)
                        running[job.index] = _start(job, argv_for(job), Path(tmp))
                        emit("start", job, None)
                    for idx, r in list(running.items()):
                        if r.proc.poll() is not None:
                            del running[idx]
                            results[idx] = _collect(r)
                            emit("done", r.job, results[idx])
                    time.sleep(0.05)
            except KeyboardInterrupt as exc:  # outside the main thread, signals still arrive as exceptions
                interrupted = int(getattr(exc, "exit_code", 130))
        interrupted = stop.code if stop.code is not None else interrupted
        if interrupted is not None:
            # SIGTERM, not SIGINT: a job started from a shell that ignores SIGINT (a background job, nohup)
            # inherits that; SIGTERM runs the same cleanup in `optimize run` (its Ctrl-C path, exit 143).
            _stop(running, signal.SIGTERM)
            for idx, r in running.items():
                results[idx] = _collect(r, interrupted=True)
                emit("done", r.job, results[idx])
    for job in jobs:
        if job.index not in results:
            results[job.index] = JobResult(name=job.name, model=job.model, output=job.output, exit_code=None,
                                           status="not started")
    ordered = [results[j.index] for j in jobs]
    code = interrupted if interrupted is not None else combine_exit_codes(
        [r.exit_code for r in ordered if r.exit_code is not None])
    return BatchResult(manifest=manifest, parallel=parallel, jobs=ordered, exit_code=code,
                       interrupted=interrupted is not None)


class _StopSignals:
    """SIGINT / SIGTERM / SIGHUP during the batch loop are recorded (exit code 128 + signal), not
    raised: an exception landing inside `Popen.poll()` can leave its wait lock held, and stopping the
    jobs would then hang in `wait()`. The loop checks `code`; the previous handlers are
    back before the jobs are stopped, so a second Ctrl-C during that cleanup acts as before. Outside
    the main thread no handler can be set and the exceptions stay as they were."""

    def __init__(self) -> None:
        self.code: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)):
                if sig is not None and signal.getsignal(sig) is not signal.SIG_IGN:  # nohup's ignore stays
                    self._previous[sig] = signal.signal(sig, self._record)
        return self

    def _record(self, signum: int, _frame: Any) -> None:
        if self.code is None:
            self.code = 128 + signum  # SIGINT 130, SIGTERM 143, SIGHUP 129

    def __exit__(self, *_: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _start(job: Job, argv: list[str], tmp: Path) -> _Running:
    out, err = tmp / f"{job.index}.out", tmp / f"{job.index}.err"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("GITHUB_ACTIONS", None)  # annotations are the batch's to make, not each job's captured stderr's
    with open(out, "wb") as fo, open(err, "wb") as fe:
        proc = subprocess.Popen(argv, stdout=fo, stderr=fe, stdin=subprocess.DEVNULL,
                                cwd=job.workdir, env=env,
                                start_new_session=True)
    return _Running(job, proc, out, err, time.monotonic())


def _stop(running: dict[int, _Running], sig: int) -> None:
    """One signal to each running job, then wait for them to clean up (killed after STOP_GRACE_S, or
    at once on a second Ctrl-C)."""
    for r in running.values():
        if r.proc.poll() is None:
            try:
                r.proc.send_signal(sig)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + STOP_GRACE_S
    try:
        for r in running.values():
            try:
                r.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                r.proc.kill()
                r.proc.wait()
    except KeyboardInterrupt:  # the second Ctrl-C: no more waiting
        for r in running.values():
            if r.proc.poll() is None:
                r.proc.kill()
        for r in running.values():
            r.proc.wait()


def _collect(r: _Running, interrupted: bool = False) -> JobResult:
    job, code = r.job, r.proc.returncode
    res = JobResult(name=job.name, model=job.model, output=job.output, exit_code=code, status="failed",
                    seconds=round(time.monotonic() - r.started, 3))
    err_text = r.err.read_text(errors="replace") if r.err.exists() else ""
    err_lines = [ln for ln in err_text.splitlines() if ln.strip()]
    errors = [ln for ln in err_lines if ln.startswith("error:")]
    res.error = errors[-1] if errors else (err_lines[-1] if err_lines and code else None)
    report = _read_report(r.out)
    if report is not None:
        res.status = str(report.get("status", "failed"))
        metrics = report.get("metrics") or {}
        res.speedup = (metrics.get("speedup") or {}).get("value")
        acc = metrics.get("accuracy") or {}
        if acc.get("value") is not None:
            res.accuracy = acc.get("value")
            res.accuracy_drop = (acc.get("inputs") or {}).get("drop")
        res.gates_failed = [g.get("name") for g in report.get("gates") or [] if not g.get("passed")]
        files = report.get("files") or {}
        res.model_written, res.report = files.get("model"), files.get("report")
    if interrupted and code != 0:
        res.status, res.error = "interrupted", "stopped: the batch was interrupted"
    elif code in (129, 130, 143):
        res.status = "interrupted"
    elif code is not None and code < 0:
        res.status = f"killed (signal {-code})"
    elif code == 2 and report is None:
        res.status = "rejected"
    return res


def _read_report(path: Path) -> dict[str, Any] | None:
    try:
        text = path.read_text(errors="replace").strip()
        data = json.loads(text) if text else None
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def summary_lines(result: BatchResult) -> list[str]:
    """One line per job: NAME  MODEL → OUTPUT  exit N  STATUS  speedup …  accuracy …; then a tally."""
    rows = []
    for r in result.jobs:
        facts = []
        if r.speedup is not None:
            facts.append(f"speedup {r.speedup:.2f}x")
        if r.accuracy is not None:
            drop = f" (drop {r.accuracy_drop:+.2f} pts)" if r.accuracy_drop is not None else ""
            facts.append(f"accuracy {r.accuracy:.2f}%{drop}")
        if r.gates_failed:
            facts.append("gates failed: " + ", ".join(r.gates_failed))
        if r.error and r.exit_code not in (0, None) and not r.gates_failed:
            facts.append(r.error)
        written = r.model_written or r.output
        rows.append([r.name, f"{_rel(r.model)} → {_rel(written)}",
                     "exit -" if r.exit_code is None else f"exit {r.exit_code}", r.status, "  ".join(facts)])
    widths = [max(len(row[c]) for row in rows) for c in range(4)]
    lines = ["  ".join(cell.ljust(widths[c]) for c, cell in enumerate(row[:4])) + ("  " + row[4] if row[4] else "")
             for row in rows]
    counts: dict[str, int] = {}
    for r in result.jobs:
        counts[r.status] = counts.get(r.status, 0) + 1
    tally = ", ".join(f"{n} {s}" for s, n in counts.items())
    lines.append(f"{len(result.jobs)} job{'s' if len(result.jobs) != 1 else ''}: {tally}; exit {result.exit_code}"
                 + (" (interrupted)" if result.interrupted else ""))
    return [ln.rstrip() for ln in lines]


def _rel(path: str) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:
        return path


__all__ = ["BatchResult", "Job", "JobResult", "Manifest", "combine_exit_codes", "job_argv", "load_manifest",
           "run_batch", "summary_lines"]
