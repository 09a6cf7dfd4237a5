"""`shapes`: the prune pass's shape chosen by the latency measured on this machine.

Which structure buys speed depends on the CPU. On all-MiniLM-L6-v2 in dynamic int8, an attention
sublayer cost about 0.7 of an FFN on an AMD Zen 5, while on an Intel Xeon with AMX (integer matmuls
cheap) one attention sublayer was worth about six times 128 FFN neurons a block (docs/distill.md),
most of it a Softmax stalled on denormal floats that the pipeline's softmax guard now removes
(optimize/softmax_guard.py; candidates are timed as the pipeline's last steps would hand them out,
guarded and their padding cut, optimize/handed_out.py): a shape chosen on one CPU missed the speed
target on the other. So the user lists candidate shapes in their order of preference (best quality first) and a
target speedup; each candidate is pruned (untrained), exported, put through the pipeline's own
quantize pass when one follows (its settings, calibration included), and timed against the input
model exported and put through the same (for a transformers model under `exporter: auto`, both as
TorchScript with eager attention, the graph the export step keeps; `_timing_export`), interleaved in
one run (optimize.benchmark.interleaved) on measure.batch samples of data.eval. The
first candidate whose median speedup reaches the target is kept; when none does, the fastest, with
a note. Each candidate's untrained output cosine against the input
model on data.eval is recorded beside its speed, to show what the choice costs before training.

The speed is measured untrained: distillation changes weights, not shapes, so the trained model
runs like the untrained one up to what a calibrating quantize pass picks from the activations.
Every candidate's pruned model is kept until the choice (one copy of the model each).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from passes.prune import util as U
from passes.prune.config import PruneConfig, shape_config

FORMULA = ("speedup = median over interleaved rounds of (the input model's latency / the shape's latency), both "
           "exported alike and put through the same passes; interval: bootstrap of that median")


def choose(pass_cls: Any, cfg: PruneConfig, model: Any, ctx: Any) -> Any:
    """The PassResult of the chosen shape (`pass_cls(config)._run_structured` prunes one), its
    metrics holding `shapes` (every candidate's speed and untrained cosine) and a note."""
    from passes.prune.int8_margin import following_quantize

    t0 = time.perf_counter()
    qcfg = following_quantize(ctx, cfg)
    work = Path(tempfile.mkdtemp(prefix="prune-shapes-", dir=ctx.work_dir))  # private: one per process
    try:
        how, base = _base(ctx, qcfg, model, work / "input")  # the input model, exported as the shapes will be
        paths, results, rows = _candidates(pass_cls, cfg, model, ctx, qcfg, work, how)
        _time(cfg, ctx, model, base, paths, rows)
        _untrained_cosines(ctx, model, paths, rows)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    chosen, why = U.rank0(_pick(cfg, rows))
    result = results[chosen]
    result.metrics["shapes"] = {
        "target_speedup": cfg.target_speedup, "through": _through(qcfg), "exported_as": how.get("label"), "formula": FORMULA,
        "rows": rows, "chosen": chosen, "why": why, "seconds": round(time.perf_counter() - t0, 1),
    }
    result.notes.append(f"prune shapes: kept shape {chosen} ({cfg.shapes[chosen].label()}): {why}")
    ctx.log.info("prune shapes: kept shape %d: %s", chosen, why)
    return result


def _timing_export(ctx: Any, model: Any) -> dict[str, Any]:
    """How the shapes and the input model are exported for timing: as the config asks, except that
    `exporter: auto` on a transformers model takes TorchScript with eager attention, the graph the
    export step kept on every CPU measured (optimize/export_candidates.py). Timing them in the
    exporter-auto fallback (dynamo's graph, 1.49x slower there) read the config's second shape at
    1.306x where the shipped graphs read 1.19x (docs/distill.md, twenty-sixth session)."""
    from optimize.export_candidates import transformer_config

    exporter = ctx.config.output.exporter
    if exporter == "auto" and model.form == "torch" and transformer_config(model) is not None:
        return {"exporter": "torchscript", "attention": "eager", "label": "TorchScript, eager attention"}
    return {"exporter": None, "attention": None, "label": f"exporter {exporter}"}


def _base(ctx: Any, qcfg: Any, model: Any, folder: Path) -> tuple[dict[str, Any], Path]:
    """(how the shapes are exported for timing, the input model so exported and quantized): the
    TorchScript graph when `_timing_export` asks for it and it exports, else the config's exporter."""
    how = _timing_export(ctx, model)
    try:
        return how, _deployed(ctx, qcfg, model, folder, how)
    except Exception as exc:  # noqa: BLE001 - a model TorchScript cannot export is timed the configured way
        if how["exporter"] is None:
            raise
        shutil.rmtree(folder, ignore_errors=True)
        exporter = ctx.config.output.exporter
        how = {"exporter": None, "attention": None,
               "label": f"exporter {exporter} (TorchScript failed: {(str(exc).strip().splitlines() or [''])[0][:120]})"}
        return how, _deployed(ctx, qcfg, model, folder, how)


def _candidates(pass_cls: Any, cfg: PruneConfig, model: Any, ctx: Any, qcfg: Any, work: Path, how: dict[str, Any]
                ) -> tuple[dict[int, Path], list[Any], list[dict[str, Any]]]:
    """Each shape pruned, exported and put through the quantize pass: ({index: ONNX path of those
    that made it}, pass results, one row each)."""
    from optimize import progress

    paths: dict[int, Path] = {}
    results, rows = [], []
    for i, shape in enumerate(cfg.shapes):
        t0 = time.perf_counter()
        with progress.task(ctx.progress, "prune.shapes", f"prune shapes: shape {i + 1} of {len(cfg.shapes)} ({shape.label()})", None):
            result = pass_cls(shape_config(cfg, shape))._run_structured(model, ctx)
            row: dict[str, Any] = {"shape": shape.overrides(), "params_removed": result.metrics.get("params_removed"),
                                   "macs_reduction": result.metrics.get("macs_reduction")}
            try:
                paths[i] = _deployed(ctx, qcfg, result.model, work / f"shape{i}", how)
            except Exception as exc:  # a shape the exporter or quantizer refuses is not timed; the others still are
                row["reason"] = f"not timed: {type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:200]}"
        row["seconds"] = round(time.perf_counter() - t0, 1)
        results.append(result)
        rows.append(row)
    return paths, results, rows


def _deployed(ctx: Any, qcfg: Any, handle: Any, folder: Path, how: dict[str, Any]) -> Path:
    """`handle` exported (when torch), then through the quantize pass when there is one, then its
    padding cut and Softmax guarded as the pipeline's last steps would (optimize/handed_out.py): its
    ONNX path."""
    from optimize.handed_out import handed_out
    from passes.prune.int8_margin import export_on_cpu, through_quantize

    folder.mkdir(parents=True, exist_ok=True)
    onnx = (export_on_cpu(ctx, handle, folder / "model.onnx", how["exporter"], how["attention"])
            if handle.form == "torch" else handle)
    path = Path((through_quantize(ctx, qcfg, onnx, folder / "quantize") if qcfg is not None else onnx).onnx_path)
    return handed_out(path, folder / "handed-out", ctx.config.output, ctx.device)[0]


def _time(cfg: PruneConfig, ctx: Any, model: Any, base: Path, paths: dict[int, Path], rows: list[dict[str, Any]]) -> None:
    """Latency of the input model and of every shape in one interleaved run; speedups into `rows`."""
    from optimize.benchmark import interleaved
    from optimize.measure import bench_inputs_for
    from optimize.speed import estimate, round_ratios

    if not paths:
        return
    inputs = bench_inputs_for(ctx, model, ctx.data("eval"))
    names = {"input": base, **{f"shape{i}": p for i, p in paths.items()}}
    times = interleaved(names, inputs, threads=ctx.threads, warmup=3, repeat=cfg.shape_rounds,
                        progress=ctx.progress, key="prune.shapes.time", what="prune shapes: latency")
    base_ms = times["input"].times_ms
    for i in paths:
        est = estimate(round_ratios(base_ms, times[f"shape{i}"].times_ms))
        rows[i].update(ms=round(times[f"shape{i}"].median_ms, 3), input_ms=round(times["input"].median_ms, 3),
                       speedup=round(est.value, 4), interval=[round(est.low, 4), round(est.high, 4)])


def _untrained_cosines(ctx: Any, model: Any, paths: dict[int, Path], rows: list[dict[str, Any]]) -> None:
    """Each shape's output cosine (mean / min) against the input model before any training."""
    from optimize.runtime import parity, predict, session

    if not paths:
        return
    eval_ds, on = U.eval_inputs(ctx, model.inputs)
    teacher = getattr(ctx, "input_model", None)
    teacher = teacher if teacher is not None and teacher.module is not None else model
    reference = U.torch_outputs(teacher.module, eval_ds, [s.name for s in model.inputs])
    for i, path in paths.items():
        p = parity(reference, predict(session(path, threads=ctx.threads), eval_ds.inputs)[:1])
        rows[i]["untrained_cosine"] = {"mean": _round(p["mean_cosine"]), "min": _round(p["min_cosine"]), "on": on}


def _pick(cfg: PruneConfig, rows: list[dict[str, Any]]) -> tuple[int, str]:
    """The first shape reaching the target; else the fastest timed; else the first."""
    target = float(cfg.target_speedup or 0)
    timed = [(i, r["speedup"]) for i, r in enumerate(rows) if r.get("speedup") is not None]
    for i, s in timed:
        if s >= target:
            slower = [f"shape {j} {rows[j]['speedup']:.3f}x" for j, _ in timed if j < i]
            return i, f"{s:.3f}x ≥ {target:g}x, the first in order to reach it" + (f" ({', '.join(slower)})" if slower else "")
    if timed:
        i, s = max(timed, key=lambda t: t[1])
        return i, f"no shape reached {target:g}x; the fastest ({s:.3f}x)"
    return 0, "no shape could be timed (see each row's reason): the first"


def _through(qcfg: Any) -> str:
    if qcfg is None:
        return "the export only (no quantize pass follows)"
    return f"the export and the pipeline's quantize pass (mode {getattr(qcfg, 'mode', '?')})"


def _round(v: Any) -> float | None:
    return None if v is None else round(float(v), 6)
