"""The pipeline engine: plan (validate the whole chain before any work), run the passes, export,
verify, measure, apply gates, write outputs atomically, return the Report.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optimize import __version__, files
from optimize.api import RunOptions, config_overrides
from optimize.config import PipelineConfig, dump_config, load_config
from optimize.context import RunContext
from optimize.errors import (
    ConfigError,
    GateFailed,
    ModelLoadError,
    OptimizeError,
    PassError,
    UsageError,
    VerificationError,
)
from optimize.handle import ModelHandle
from optimize.lineage import Lineage
from optimize.model_facts import model_facts, weight_count
from optimize.pass_api import PassResult
from optimize.planner import PlannedStep, form_needs_inputs, plan_steps

log = logging.getLogger("optimize")

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_FACTORY = "optimize.example:digits_cnn"


def default_config_path() -> Path:
    return REPO_ROOT / "configs" / "default.yaml"


@dataclass
class Plan:
    config: PipelineConfig
    config_dump: dict[str, Any]
    steps: list[PlannedStep]
    model: str
    output_path: Path
    report_path: Path
    config_file: str | None
    base_dir: Path
    handle: ModelHandle | None = None  # None for the built-in example until its teacher exists
    example: bool = False
    device: str = "cpu"
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- planning


def _resolve_device(requested: str) -> str:
    if requested == "cpu":
        return "cpu"
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if requested == "cuda" and not has_cuda:
        raise UsageError("--device cuda: no CUDA device is visible here; use --device auto to fall back to the CPU")
    return "cuda" if has_cuda else "cpu"


def _output_paths(cfg: Any, model_spec: str, example: bool) -> tuple[Path, Path]:
    if cfg.output.path:
        out = Path(cfg.output.path)
    else:
        stem = "digits_cnn" if example else Path(model_spec.split(":")[-1]).stem
        out = Path.cwd() / f"{stem}.opt.onnx"
        if not example and cfg.model.task == "text-generation":  # ONNX + tokenizer files: a folder that serves
            src = Path(model_spec).resolve()
            out = Path.cwd() / f"{src.name if src.is_dir() else src.stem}.opt" / "model.onnx"
        elif not example and Path(model_spec).is_dir():
            from optimize.frameworks import detect

            if detect(Path(model_spec)) == "hf":  # ONNX + tokenizer files: a folder that serves as is
                out = Path.cwd() / f"{Path(model_spec).resolve().name}.opt" / "model.onnx"
    if out.suffix.lower() != ".onnx":
        raise UsageError(f"output path must end in .onnx: {out}")
    report = Path(cfg.output.report) if cfg.output.report else out.with_suffix(".report.json")
    return out, report


def _checked_config(opts: RunOptions, example: bool) -> tuple[Any, str]:
    """The config with flags applied, checked before any model is loaded (exit 2 on any problem)."""
    config_file = opts.config or (str(default_config_path()) if example else None)
    if config_file is None:
        raise UsageError("no pipeline given: pass -c PIPELINE.yaml (ready ones are in configs/)")
    cfg = load_config(config_file, config_overrides(opts))
    from optimize.shapes import apply_to_config

    apply_to_config(cfg, opts.input_shapes)  # --input-shape: an override of model.input_shapes
    from optimize.imports import check_trusted

    check_trusted(cfg, opts.trust_code, config_file)  # before the model loads: a config runs no code unasked
    if cfg.output.charts is True:  # charts required: matplotlib must be importable (exit 2 now, not after the work)
        from optimize.charts import require

        require(config_file)
    return cfg, config_file


def plan(opts: RunOptions) -> Plan:
    """Validate config, model, chain and outputs before any work. Raises exit-2 errors."""
    example = opts.model is None
    cfg, config_file = _checked_config(opts, example)
    from optimize.llm import route as llm_route  # decoder LLMs (model.task: text-generation)

    llm = llm_route.resolve_task(opts.model, cfg, config_file)
    if llm:
        llm_route.check_plan(cfg, config_file)  # passes, gates, data: before any weights are read
    base_dir = Path.cwd()
    files.check_data_files(cfg, base_dir)  # before the model is read
    device = _resolve_device(cfg.hardware.device)

    handle: ModelHandle | None = None
    shape_notes: list[str] = []
    if example:
        from optimize.handle import TensorSpec

        model_desc = f"{EXAMPLE_FACTORY} (built-in example: CNN trained on scikit-learn digits)"
        form = "torch"
        inputs = [TensorSpec("x", ("batch", 1, 8, 8))]
    elif llm:  # the KV-cache graph's shapes are its own (prefill, decode): nothing to resolve
        handle = llm_route.load_handle(opts.model)  # type: ignore[arg-type]
        model_desc, form, inputs = handle.source, handle.form, handle.inputs
    else:
        from optimize.loaders import load_model

        # no progress line here: planning either succeeds quickly (ONNX data stays on disk) or exits 2
        # with one line, and a progress line before that one line would break the contract
        handle = load_model(opts.model, model_cfg=cfg.model, trust_model=opts.trust_model, base_dir=base_dir)
        handle, shape_notes = _resolve_shapes(handle, cfg)
        model_desc, form, inputs = handle.source, handle.form, handle.inputs

    output, report = _output_paths(cfg, opts.model or "", example)
    if not example and not (opts.model and ":" in opts.model and not Path(opts.model).exists()):
        src = Path(opts.model).resolve()  # type: ignore[arg-type]
        if output.resolve() == src or report.resolve() == src:
            raise UsageError(f"output would overwrite the input model: {output}")
    if report.resolve() == output.resolve():
        raise UsageError("the report path equals the model output path")
    if llm:
        llm_route.check_output_dir(opts.model, output)  # type: ignore[arg-type]
    _check_files(opts, cfg, config_file, base_dir, output, report)

    steps = plan_steps(cfg, config_file, handle, form, has_inputs=bool(inputs))
    if not llm and opts.fail_on_gate:
        _check_parity_evidence(cfg, config_file, inputs)
    if not inputs and form_needs_inputs(steps):
        raise ConfigError(
            "the model's inputs are unknown: declare model.inputs (name, shape, dtype)", file=config_file, key="model.inputs"
        )

    return Plan(
        config=cfg, config_dump=dump_config(cfg), steps=steps, model=model_desc, output_path=output,
        report_path=report, config_file=config_file, base_dir=base_dir, handle=handle, example=example, device=device,
        notes=shape_notes,
    )


def _check_parity_evidence(cfg: Any, config_file: str | None, inputs: list[Any]) -> None:
    """A parity gate that would be judged on random token ids is exit 2 before any work: such a
    probe is no evidence either way (MiniLM dynamic int8 read 0.64 on random ids and 0.98 on real
    sentences; other models overstate: 0.997 vs 0.977)."""
    from optimize.probes import random_ids_would_be_used

    if cfg.gates.min_parity_cosine is None:
        return
    ids = random_ids_would_be_used(cfg, inputs, role="eval")
    if ids:
        listed = ", ".join(f"'{n}'" for n in ids)
        raise ConfigError(
            f"min_parity_cosine would be judged on random token ids for {listed}, which tell neither a good model "
            "nor a broken one: set data.eval to real inputs (a .npz named as the model's inputs; for a text model a "
            ".txt or .jsonl file, tokenized with its tokenizer: files beside an ONNX file or model.tokenizer.path), or run "
            "with --no-fail-on-gate to report the gate without enforcing it", file=config_file, key="gates.min_parity_cosine")


def _resolve_shapes(handle: ModelHandle, cfg: Any) -> tuple[ModelHandle, list[str]]:
    """Concrete probe shapes (model.input_shapes / --input-shape, the file's metadata) or exit 2
    naming each symbolic dim that nothing resolves (optimize.shapes)."""
    from optimize.shapes import resolve_for_model

    where = "model.input_shapes (--input-shape)"
    specs, notes = resolve_for_model(
        handle.onnx_path if handle.form == "onnx" else None, handle.inputs, cfg.model.input_shapes, where, cfg
    )
    return handle.replace(inputs=specs), notes


def _check_files(opts: RunOptions, cfg: Any, config_file: str | None, base_dir: Path, output: Path, report: Path) -> None:
    """Before any work: no output is (by file identity) an input, the config or a data file; names
    the file system may refuse are refused now; the report stays JSON."""
    from optimize import charts

    for path, what in ((output, "the output"), (report, "the report")):
        files.check_output_name(path, what)
    if report.suffix.lower() == ".md":
        raise UsageError(f"--report {report}: the report is JSON, name it .json (the Markdown report is written beside it as .md)")
    reads = files.read_paths(opts.model, cfg, config_file, base_dir)
    writes = files.write_paths(output, report, bool(cfg.output.markdown), charts.wanted(cfg))
    files.check_no_clash(reads, writes, Path(opts.work_dir) if opts.work_dir else None)
    files.check_rejected_name(writes["the rejected model"], report)


# ---------------------------------------------------------------- running


def run(opts: RunOptions) -> Any:
    """Run the pipeline; returns the Report. Raises GateFailed (with `.report`) on a failed gate
    unless `opts.fail_on_gate` is False."""
    started = time.time()
    started_at = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    pl = plan(opts)
    from optimize import distributed  # torchrun: only rank 0 writes; every rank ends the same way

    distributed.setup(pl.device)
    main = distributed.is_main()
    if not main:
        from optimize.progress import NullProgress

        opts.progress = NullProgress()
    own_work = opts.work_dir is None
    if own_work:
        from optimize.files import own_temp_work_dir

        work, lock = own_temp_work_dir()
    else:
        lock = _claim_work_dir(pl, opts) if main else None
        work = Path(opts.work_dir)  # type: ignore[arg-type]
    work.mkdir(parents=True, exist_ok=True)
    lineage = Lineage()
    try:
        result = _execute(pl, opts, work, lineage, started, started_at)
        distributed.conclude(lineage.passes_done, None, result)
        return result
    except (OptimizeError, KeyboardInterrupt) as exc:
        if main:
            _remove_stale(pl.output_path)
        if main and isinstance(exc, OptimizeError) and not isinstance(exc, GateFailed) and not isinstance(exc, UsageError):
            exc.report = _failure_report(pl, lineage, exc, started, started_at)  # type: ignore[attr-defined]
        distributed.conclude(lineage.passes_done, exc)
        raise
    except Exception as exc:  # a bug or an unexpected library failure: exit 1, still say where
        err = OptimizeError(f"internal: {type(exc).__name__}: {exc}")
        if main:
            _remove_stale(pl.output_path)
            err.report = _failure_report(pl, lineage, err, started, started_at)  # type: ignore[attr-defined]
        distributed.conclude(lineage.passes_done, err)
        raise err from exc
    finally:
        distributed.teardown()
        if lock is not None:
            lock.close()
        if own_work:
            shutil.rmtree(work, ignore_errors=True)


def _claim_work_dir(pl: Plan, opts: RunOptions) -> Any:
    """--work-dir: this run's own (new, empty, or a resume of the same input and config), locked."""
    reads = files.read_paths(opts.model, pl.config, pl.config_file, pl.base_dir)
    try:
        return files.claim_work_dir(Path(opts.work_dir), files.run_key(reads, pl.config_dump))  # type: ignore[arg-type]
    except UsageError:
        from optimize import distributed

        distributed.teardown()
        raise


def _remove_stale(output: Path) -> None:
    """After a failed run no model stays under the final name (not even one from an earlier run)."""
    for p in (output, output.parent / (output.name + ".data")):
        try:
            p.unlink(missing_ok=True)
        except OSError:
            pass


def _failure_report(pl: Plan, lineage: Lineage, exc: Exception, started: float, started_at: str) -> Any:
    from optimize import hardware, onnx_io
    from optimize.report import ModelFacts, Report

    try:
        report = Report(
            tool={"name": "optimize", "version": __version__},
            status="failed",
            error=str(exc),
            started_at=started_at,
            seconds=round(time.time() - started, 3),
            seed=pl.config.seed,
            config=pl.config_dump,
            environment=hardware.versions(),
            hardware=hardware.describe(),
            input=ModelFacts(**lineage.input_facts) if lineage.input_facts else ModelFacts(path=pl.model, form="unknown"),
            steps=lineage.steps,
        )
        onnx_io.write_bytes_atomic(report.to_json().encode(), pl.report_path)
        report.files["report"] = str(pl.report_path)
        if pl.config.output.markdown:  # the Markdown beside it, written atomically like the JSON
            from optimize.report_md import to_markdown

            md_path = pl.report_path.with_suffix(".md")
            onnx_io.write_bytes_atomic(to_markdown(report).encode(), md_path)
            report.files["markdown"] = str(md_path)
        return report
    except Exception:
        log.debug("could not write the failure report", exc_info=True)
        return None


def _seed_everything(seed: int, threads: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)


def _run_step(step: PlannedStep, obj: Any, current: ModelHandle, ctx: RunContext) -> Any:
    try:
        return obj.run(current, ctx)
    except (OptimizeError, KeyboardInterrupt):
        raise
    except Exception as exc:
        log.debug("pass %s failed", step.type, exc_info=True)
        msg = str(exc).strip().splitlines()[0][:400] if str(exc).strip() else ""
        raise PassError(step.type, f"{type(exc).__name__}: {msg}", index=step.index) from exc


def _execute(pl: Plan, opts: RunOptions, work: Path, lineage: Lineage, started: float, started_at: str) -> Any:
    from optimize import distributed, hardware

    cfg = pl.config
    threads = cfg.hardware.threads or (os.cpu_count() or 1)
    _seed_everything(cfg.seed, threads)
    handle = pl.handle if pl.handle is not None else _example_teacher(cfg, opts.progress)
    ctx = RunContext(
        config=cfg, work_dir=work, device=pl.device, threads=threads, seed=cfg.seed, progress=opts.progress,
        input_model=handle, inputs=list(handle.inputs), base_dir=pl.base_dir, resume=opts.resume,
    )
    baseline = _baseline(handle, ctx)
    ctx.baseline = baseline
    lineage.input_facts = {**model_facts(baseline.onnx_path, handle.form, baseline), "path": handle.source}  # type: ignore[arg-type]

    follower = distributed.active() and not distributed.is_main()  # stops after the last training step
    current, last_torch = _run_passes(pl, ctx, handle, lineage, follower)
    lineage.passes_done = True
    if follower:  # rank 0 exports, measures and writes; this rank returns (or raises) its outcome
        return distributed.receive()
    if current.form != "onnx" or current.onnx_path is None:
        raise PassError("export", "the pipeline ended without an ONNX model (internal planning error)")

    llm = cfg.model.task == "text-generation"
    if llm:  # a KV-cache graph: tokens/s, token agreement, perplexity (optimize/llm/measure_run.py)
        from optimize.llm.measure_run import measure_llm

        report = measure_llm(pl=pl, ctx=ctx, baseline=baseline, final=current, lineage=lineage, started=started,
                             started_at=started_at, env=hardware.versions(), hw=hardware.describe())
    else:
        from optimize import pad_trim, skip_layernorm, softmax_guard
        from optimize.measure import bench_inputs_for, measure

        timing = bench_inputs_for(ctx, baseline, ctx.data("eval"))
        current = pad_trim.apply(ctx, current, lineage, timing)  # first: the rewrites after it are timed on its graph
        current = softmax_guard.apply(ctx, current, lineage, timing)
        current = skip_layernorm.apply(ctx, current, lineage, timing)
        report = measure(
            pl=pl, ctx=ctx, baseline=baseline, final=current, last_torch=last_torch, lineage=lineage,
            started=started, started_at=started_at, env=hardware.versions(), hw=hardware.describe(),
        )
    if cfg.model.task == "embedding" or cfg.gates.min_embedding_cosine is not None:
        from optimize.frameworks.embedding import add_embedding_accuracy

        add_embedding_accuracy(report, ctx, baseline, current)
    try:
        return _write_outputs(pl, opts, current, report, serving=_serving_dir(ctx, baseline) if llm else None)  # type: ignore[union-attr]
    except OSError as exc:  # disk full, read-only folder, ...: exit 1 with the reason, not "internal"
        from optimize.errors import OutputError

        reason = exc.strerror or str(exc) or type(exc).__name__
        raise OutputError(f"cannot write the outputs in {pl.output_path.parent}: {reason} (errno {exc.errno})") from exc


def _example_teacher(cfg: PipelineConfig, progress: Any) -> ModelHandle:
    """The built-in example: train (once, cached) the teacher CNN and load it."""
    from optimize.example import ensure_teacher
    from optimize.loaders import load_model

    progress.start("teacher", "built-in example: teacher CNN on digits (cached after the first run)", None)
    weights = ensure_teacher()
    progress.finish("teacher")
    cfg.model.weights = str(weights)
    return load_model(EXAMPLE_FACTORY, model_cfg=cfg.model)


def _baseline(handle: ModelHandle, ctx: RunContext) -> ModelHandle:
    """What everything is measured against: the input model as FP32 ONNX on the same runtime."""
    if handle.form != "torch":
        return handle
    from optimize.export import ExportError, export_to_onnx

    cfg = ctx.config
    if cfg.model.task == "text-generation":
        return _llm_baseline(handle, ctx)
    ctx.progress.start("baseline", "export the input model (baseline for every comparison)", None)
    try:
        baseline = export_to_onnx(handle, ctx.work_dir / "input" / "model.onnx", cfg.output.opset, cfg.output.exporter)
    except ExportError as exc:
        raise PassError("export", f"the input model: {exc}") from None
    ctx.progress.finish("baseline")
    return baseline


def _llm_baseline(handle: ModelHandle, ctx: RunContext) -> ModelHandle:
    """A decoder's baseline: its KV-cache export (optimize.llm.route), which the export step reuses."""
    from optimize.llm.route import baseline_path, export_handle

    ctx.progress.start("baseline", "export the decoder with its KV cache (FP32 baseline)", None)
    try:
        baseline = export_handle(handle, baseline_path(ctx.work_dir), ctx.config.output.opset)
    except (OptimizeError, KeyboardInterrupt):
        raise
    except Exception as exc:
        msg = (str(exc).strip().splitlines() or [""])[0][:300]
        raise PassError("export", f"the decoder: {type(exc).__name__}: {msg}") from exc
    ctx.progress.finish("baseline")
    return baseline


def _run_passes(pl: Plan, ctx: RunContext, handle: ModelHandle, lineage: Lineage,
                follower: bool) -> tuple[ModelHandle, ModelHandle | None]:
    """Every planned step in order, each recorded in the lineage: (final model, last torch model)."""
    from optimize import cache, distributed
    from optimize.memory import release_garbage

    progress = ctx.progress
    current, last_torch = handle, (handle if handle.form == "torch" else None)
    progress.start("pipeline", "pipeline", len(pl.steps))
    last_training = max((i for i, s in enumerate(pl.steps, 1) if s.pass_obj is not None and s.pass_obj.trains), default=0)
    # content-keyed pass outputs: re-runs and --resume reuse them (only the writing rank)
    pass_cache = cache.for_run(pl.config) if distributed.is_main() else None
    for n, step in enumerate(pl.steps, start=1):
        if follower and n > last_training:
            break
        ctx.step_index = n
        t0 = time.perf_counter()
        before, form_in = weight_count(current), current.form
        label = f"{step.type}" + (" (inserted)" if step.inserted else "")
        progress.advance("pipeline", 0, info=label)
        result, pcfg_dump, cached = _run_one(step, current, ctx, pass_cache)
        # onnx-ir models a pass built are garbage in reference cycles (optimize.memory); float32 bytes
        release_garbage(4 * before if before else None)
        seconds = time.perf_counter() - t0
        current = result.model
        if current.form == "torch":
            last_torch = current
        lineage.steps.append(_step_record(n, step, pcfg_dump, form_in, current, seconds, before, result, cached))
        progress.advance("pipeline", 1, info=f"{label} {seconds:.1f}s")
    progress.finish("pipeline")
    return current, last_torch


def _step_record(n: int, step: PlannedStep, pcfg_dump: dict[str, Any], form_in: str, model: ModelHandle,
                 seconds: float, before: int | None, result: PassResult, cached: bool) -> Any:
    from optimize import registry
    from optimize.report import Step

    # what the pass declares (a materialize step has no pass object: its class, by registry name)
    cls = type(step.pass_obj) if step.pass_obj is not None else registry.get(step.type)
    return Step(
        index=n, pass_index=step.index, type=step.type, config=pcfg_dump, form_in=form_in, form_out=model.form,
        seconds=round(seconds, 3), params_before=before, params_after=weight_count(model),
        metrics=_jsonable(result.metrics), notes=list(result.notes), inserted=step.inserted, cached=cached,
        trains=cls.trains, sparsifies=cls.sparsifies,
    )


def _run_one(step: PlannedStep, current: ModelHandle, ctx: RunContext, pass_cache: Any) -> tuple[PassResult, dict[str, Any], bool]:
    """One step, through the pass cache: (result, the pass config as run, served from the cache?)."""
    from optimize import cache

    obj = step.pass_obj
    if obj is None:
        return _materialize(step, current, ctx)
    pcfg_dump = obj.config.model_dump(mode="json")
    result, cached = cache.run_step(
        pass_cache, pass_obj=obj, pass_config=pcfg_dump, inserted=step.inserted, current=current,
        ctx=ctx, tool_version=__version__, run=lambda: _run_step(step, obj, current, ctx),
    )
    if obj.produces_onnx:  # work deferred by earlier passes stays pending until after the export
        result.model = result.model.replace(pending=current.pending)
    return result, pcfg_dump, cached


def _materialize(step: PlannedStep, current: ModelHandle, ctx: RunContext) -> tuple[PassResult, dict[str, Any], bool]:
    """Complete the work a pass deferred (`Pass.finalize`) now that the model is ONNX."""
    from optimize import registry

    name, pcfg = next(((n, c) for n, c in current.pending if n == step.type), (None, None))
    if name is None:
        raise PassError(step.type, "nothing was deferred to materialize (internal planning error)")
    try:
        result = registry.get(name)(pcfg).finalize(current, ctx)
    except (OptimizeError, KeyboardInterrupt):
        raise
    except Exception as exc:
        raise PassError(step.type, f"materializing after export: {type(exc).__name__}: {exc}") from exc
    result.model = result.model.replace(pending=[x for x in current.pending if x[0] != name])
    return result, pcfg.model_dump(mode="json"), False


def _jsonable(obj: Any) -> Any:
    import json

    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def _write_charts(pl: Plan, report: Any, model_path: Path) -> None:
    """PNG charts beside the report (optimize/charts.py), each written atomically; listed in
    report.files. Without matplotlib (output.charts: auto) a finding says why there are none."""
    from optimize import charts

    if not charts.wanted(pl.config) or pl.config.model.task == "text-generation":  # a decoder: no chart yet
        return
    reason = charts.missing_reason()
    if reason is not None:
        report.findings.append(f"charts not drawn: {reason}")
        return
    drawn = charts.write_charts(report, pl.report_path.with_suffix(""), model_path)
    report.files.update({key: str(path) for key, path in drawn.files.items()})
    for key, why in drawn.skipped.items():
        report.findings.append(f"chart {key.removeprefix('chart_')} not drawn: {why}")


def _serving_dir(ctx: RunContext, baseline: ModelHandle) -> Path:
    """A decoder's serving files come from its export step's chosen graph, else from the baseline."""
    return ctx.serving_dir or baseline.onnx_path.parent  # type: ignore[union-attr]


def _write_outputs(pl: Plan, opts: RunOptions, final: ModelHandle, report: Any, serving: Path | None = None) -> Any:
    from optimize import onnx_io
    from optimize.report_md import to_markdown

    failed = [g for g in report.gates if not g.passed]
    target = pl.output_path
    if failed:
        target = target.with_name(target.name[: -len(".onnx")] + ".rejected.onnx")
        _remove_stale(pl.output_path)
    opts.progress.start("write", f"write {target.name} and the report", None)  # seconds for a large model
    onnx_io.write_atomic(final.onnx_path, target)  # type: ignore[arg-type]
    report.files["model"] = str(target)
    tokenizer = getattr(pl.handle, "tokenizer", None)
    if serving is not None:  # a decoder: tokenizer, chat template, generation config, llm.json (optimize.llm.route)
        from optimize.llm.route import write_serving_files as write_llm_serving_files

        report.files.update(write_llm_serving_files(serving, target.parent, target.name))
    elif tokenizer is not None:  # a text model: its tokenizer beside the ONNX, so the folder serves as is
        from optimize.frameworks.hf import write_serving_files

        report.files.update(write_serving_files(tokenizer, target.parent))
    report.output.path = str(target)
    report.files["report"] = str(pl.report_path)
    md_path = pl.report_path.with_suffix(".md")
    if pl.config.output.markdown:
        report.files["markdown"] = str(md_path)
    _write_charts(pl, report, target)
    onnx_io.write_bytes_atomic(report.to_json().encode(), pl.report_path)
    if pl.config.output.markdown:
        onnx_io.write_bytes_atomic(to_markdown(report).encode(), md_path)
    opts.progress.finish("write")
    if failed and opts.fail_on_gate:
        err = GateFailed([g.message for g in failed])
        err.report = report  # type: ignore[attr-defined]
        raise err
    return report


__all__ = ["plan", "run", "Plan", "PlannedStep", "default_config_path", "ModelLoadError", "VerificationError"]
