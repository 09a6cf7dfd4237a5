"""The benchmark suite: `make bench` (or `.venv/bin/python bench/run.py [--quick] [--only NAME]`).

Three cases, each measured side by side in one interleaved run (A B C A B C ..., ONNX Runtime
spinning off, 2 threads by default) and reported as the median of per-round ratios against FP32:

1. `mlp`    — MLP 1024-4096-1024 at batch 1 and 64: FP32 ONNX vs ONNX Runtime's quantize_dynamic
              with defaults vs `optimize` with configs/onnx-int8.yaml vs `optimize` with a static
              QDQ config (bench/configs/mlp-static-qdq.yaml).
2. `digits` — the built-in example (`optimize run` with no model): teacher vs optimized accuracy,
              speedup, sizes, and the tool's own seconds per pass.
3. `resnet` — a ResNet-18-style CNN (bench/models.py): FP32 vs quantize_static QDQ defaults vs
              `optimize` structured pruning 50% (bench/configs/resnet-prune50.yaml).

Writes bench/results.md (and bench/results.json with the raw numbers). A case or variant that
fails is reported as an error row with its message; nothing is estimated or filled in.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from bench import report as md  # noqa: E402

CASES = ("mlp", "digits", "resnet")

# Targets from the issues. speedup/size ratios are FP32 / candidate; accuracy drop in points.
MLP_TARGET = {1: 2.4, 64: 1.6}
RESNET_SPEEDUP_TARGET = 3.0
RESNET_SIZE_TARGET = 3.5
DIGITS_MAX_DROP = 1.5

SETTINGS = {
    # timed rounds per interleaved run; warm-up runs per model before them
    "full": {"mlp_warmup": 10, "mlp_repeat": 100, "digits_warmup": 10, "digits_repeat": 100,
             "resnet_res": 224, "resnet_batch": 8, "resnet_warmup": 3, "resnet_repeat": 20,
             "resnet_calib": 16, "parity_samples": 64},
    "quick": {"mlp_warmup": 5, "mlp_repeat": 40, "digits_warmup": 5, "digits_repeat": 40,
              "resnet_res": 112, "resnet_batch": 8, "resnet_warmup": 2, "resnet_repeat": 10,
              "resnet_calib": 8, "parity_samples": 32},
}


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300] if text else ''}".rstrip(": ")


# ---------------------------------------------------------------------------- measuring helpers


def size_bytes(path: Path) -> int:
    from optimize.onnx_io import total_bytes

    return int(total_bytes(path))


def outputs_of(path: Path, inputs: dict[str, np.ndarray], threads: int) -> list[np.ndarray]:
    from optimize.runtime import predict, session

    return predict(session(path, threads=threads), inputs, batch_size=64)


def min_cosine(ref: list[np.ndarray], got: list[np.ndarray]) -> float | None:
    from optimize.runtime import parity

    return parity(ref, got)["min_cosine"]


def ratios(num: Any, den: Any) -> list[float]:
    return [a / b for a, b in zip(num.times_ms, den.times_ms, strict=True) if b > 0]


def speed_columns(timings: dict[str, Any], base: str) -> dict[str, dict[str, Any]]:
    """Per model: median ms, speedup = median of per-round base/model ratios, and its IQR."""
    from optimize.benchmark import pairwise_ratio

    out: dict[str, dict[str, Any]] = {}
    for name, t in timings.items():
        r = ratios(timings[base], t)
        q1, q3 = (np.percentile(r, [25, 75]).tolist() if r else (None, None))
        out[name] = {
            "median_ms": t.median_ms,
            "speedup": pairwise_ratio(timings[base], t),
            "speedup_iqr": [q1, q3],
            "runs": len(t.times_ms),
        }
    return out


class PhaseTimer:
    """A `Progress` that records when the pipeline's phases start and finish (baseline export,
    calibration and epochs inside passes, verification, accuracy, latency), so the tool's own time
    is visible per phase, not only per pass."""

    def __init__(self) -> None:
        self.open: dict[str, tuple[float, str, bool]] = {}
        self.phases: list[dict[str, Any]] = []

    def start(self, key: str, description: str, total: int | None) -> None:
        if key not in self.open:
            self.open[key] = (time.perf_counter(), description, "pipeline" in self.open)

    def advance(self, key: str, steps: int = 1, info: str | None = None) -> None:
        pass

    def finish(self, key: str, info: str | None = None) -> None:
        if key in self.open:
            t0, desc, nested = self.open.pop(key)
            self.phases.append({"key": key, "what": desc, "start": t0, "seconds": time.perf_counter() - t0,
                                "inside_pass": nested})


def run_optimize(model: str | None, config: str | None, out: Path, threads: int,
                 overrides: list[str] | None = None) -> tuple[Any, float, PhaseTimer]:
    """`optimize run` through the library; returns (report, wall seconds, phase timer). Gates never
    raise here: the report's status says whether they passed."""
    from optimize.api import RunOptions
    from optimize.pipeline import run

    out.parent.mkdir(parents=True, exist_ok=True)
    timer = PhaseTimer()
    opts = RunOptions(
        model=model, config=config, output=str(out), threads=threads, overrides=list(overrides or []),
        fail_on_gate=False, work_dir=out.parent / f"{out.stem}.work",  # keeps the FP32 export for timing
        progress=timer,
    )
    t0 = time.perf_counter()
    report = run(opts)
    return report, time.perf_counter() - t0, timer


def tool_time_rows(report: Any, timer: PhaseTimer, wall: float) -> list[dict[str, Any]]:
    """The tool's own time: each phase in the order it ran, each pass (report.steps[].seconds) with
    the phases it reported inside it, and the remainder (diagnostics, writing, loading)."""
    rows: list[dict[str, Any]] = []
    top = [p for p in timer.phases if not p["inside_pass"] and p["key"] != "pipeline"]
    pipeline = next((p for p in timer.phases if p["key"] == "pipeline"), None)
    nested = [p for p in timer.phases if p["inside_pass"]]
    events = sorted(top + ([pipeline] if pipeline else []), key=lambda p: p["start"])
    for p in events:
        if p["key"] != "pipeline":
            rows.append({"step": "", "pass": p["what"], "form": "", "seconds": p["seconds"], "params": ""})
            continue
        # steps run back to back from the pipeline's start: each nested phase goes under the step
        # whose time span holds its start
        left = sorted(nested, key=lambda p: p["start"])
        end = p["start"]
        for i, st in enumerate(report.steps):
            end += st.seconds
            rows.append({"step": st.index, "pass": st.type + (" (inserted)" if st.inserted else ""), "seconds": st.seconds,
                         "form": f"{st.form_in} → {st.form_out}", "params": f"{st.params_before} → {st.params_after}"})
            last = i == len(report.steps) - 1
            while left and (last or left[0]["start"] < end):
                n = left.pop(0)
                rows.append({"step": "", "pass": f"↳ inside it: {n['what']}", "form": "", "seconds": n["seconds"], "params": ""})
    accounted = sum(p["seconds"] for p in top) + sum(st.seconds for st in report.steps)
    rows.append({"step": "", "pass": "the rest (loading, counting weights, writing files)", "form": "", "seconds": wall - accounted,
                 "params": ""})
    rows.append({"step": "", "pass": "**total `optimize run`** (wall)", "form": "", "seconds": wall, "params": ""})
    return rows


def torch_eager_row(factory: str, fp32: Path, inputs: dict[str, np.ndarray], threads: int, warmup: int,
                    repeat: int) -> dict[str, Any]:
    """torch eager (FP32, inference_mode) — what a user without ONNX runs — interleaved round by
    round with the FP32 ONNX session on the same input (spinning off, same threads); speedup is the
    median of per-round FP32-ONNX / torch ratios, as for every other row."""
    import torch

    from optimize.benchmark import MIN_SAMPLE_MS
    from optimize.loaders import load_model
    from optimize.runtime import feeds_for, session

    h = load_model(factory)
    module = h.module.eval()
    torch.set_num_threads(threads)
    names = [sp.name for sp in h.inputs] or list(inputs)
    args = tuple(torch.from_numpy(inputs[n]) for n in names)
    sess = session(fp32, threads=threads)
    feed = feeds_for(sess, inputs)
    with torch.inference_mode():
        fastest = float("inf")
        for _ in range(max(warmup, 1)):
            t0 = time.perf_counter()
            module(*args)
            sess.run(None, feed)
            fastest = min(fastest, (time.perf_counter() - t0) * 1000.0)
        inner = max(1, min(1000, int(MIN_SAMPLE_MS / max(fastest / 2, 1e-3))))
        onnx_ms, torch_ms = [], []
        for r in range(repeat):
            for which in (("onnx", "torch") if r % 2 == 0 else ("torch", "onnx")):
                t0 = time.perf_counter()
                for _ in range(inner):
                    module(*args) if which == "torch" else sess.run(None, feed)
                (torch_ms if which == "torch" else onnx_ms).append((time.perf_counter() - t0) * 1000.0 / inner)
    ratios = [a / b for a, b in zip(onnx_ms, torch_ms, strict=True) if b > 0]
    q1, q3 = np.percentile(ratios, [25, 75]).tolist()
    return {"variant": f"torch eager FP32 ({torch.__version__}, interleaved with FP32 ONNX)",
            "median_ms": float(np.median(torch_ms)), "speedup": float(np.median(ratios)), "speedup_iqr": [q1, q3],
            "runs": len(torch_ms), "size_mb": None, "size_ratio": None, "cosine": None}


def tool_summary(report: Any, seconds: float) -> str:
    sp = report.metrics.get("speedup")
    sp_txt = f"{sp.value:.2f}x" if sp is not None and sp.value is not None else "n/a"
    lat = report.latency.get("output")
    where = f" at batch {lat.batch}, {lat.threads} threads" if lat else ""
    steps = ", ".join(f"{s.type}{' (inserted)' if s.inserted else ''} {s.seconds:.1f}s" for s in report.steps)
    text = (f"optimize run: status {report.status}, {seconds:.1f}s wall ({steps}); "
            f"its own measured speedup {sp_txt}{where}")
    if report.findings:
        text += "; its findings: " + " | ".join(f.replace("|", "/") for f in report.findings)
    return text


def target_ge(measured: float | None, target: float, unit: str = "x") -> str:
    if measured is None:
        return "not measured"
    if measured >= target:
        return f"met ({measured:.2f}{unit} ≥ {target}{unit})"
    return f"missed by {target - measured:.2f}{unit} ({measured:.2f}{unit} < {target}{unit})"


def target_le(measured: float | None, target: float, unit: str) -> str:
    if measured is None:
        return "not measured"
    if measured <= target:
        return f"met ({measured:.2f}{unit} ≤ {target}{unit})"
    return f"missed by {measured - target:.2f}{unit} ({measured:.2f}{unit} > {target}{unit})"


# ---------------------------------------------------------------------------- case 1: MLP


def case_mlp(work: Path, threads: int, s: dict[str, Any]) -> dict[str, Any]:
    from onnxruntime.quantization import quantize_dynamic

    from optimize.benchmark import interleaved
    from optimize.export import export_to_onnx
    from optimize.loaders import load_model

    d = work / "mlp"
    d.mkdir(parents=True, exist_ok=True)
    case: dict[str, Any] = {"name": "mlp", "title": "MLP 1024-4096-1024 (FP32 vs int8)", "tables": [],
                            "targets": [], "notes": []}
    say("mlp: export FP32 ONNX")
    handle = load_model("bench.models:mlp")
    fp32 = export_to_onnx(handle, d / "fp32.onnx").onnx_path
    case["notes"].append(f"FP32 ONNX exported with {export_to_onnx.__module__}.export_to_onnx (opset 18).")
    spec = handle.inputs[0]

    variants: dict[str, Path | None] = {"FP32 ONNX": fp32}
    errors: dict[str, str] = {}

    def build(label: str, fn: Any) -> None:
        say(f"mlp: build '{label}'")
        try:
            variants[label] = fn()
        except Exception as exc:  # reported as an error row
            variants[label] = None
            errors[label] = first_line(exc)
            say(f"mlp: '{label}' failed: {errors[label]}")
            logging.getLogger("bench").debug("build failed", exc_info=True)

    def ort_dynamic() -> Path:
        out = d / "ort_dynamic.onnx"
        quantize_dynamic(str(fp32), str(out))
        return out

    def opt(config: str, name: str) -> Any:
        def go() -> Path:
            report, secs, timer = run_optimize(str(fp32), str(REPO / config), d / f"{name}.onnx", threads)
            case["notes"].append(f"`{config}` — {tool_summary(report, secs)}.")
            case["tables"].append({"caption": f"the tool's own time, `{config}` (phases and passes)", "kind": "steps",
                                   "rows": tool_time_rows(report, timer, secs)})
            return Path(report.files["model"])
        return go

    build("onnxruntime quantize_dynamic (defaults)", ort_dynamic)
    build("optimize configs/onnx-int8.yaml (dynamic, per-channel)", opt("configs/onnx-int8.yaml", "opt_dynamic"))
    build("optimize bench/configs/mlp-static-qdq.yaml (static QDQ, random calibration)",
          opt("bench/configs/mlp-static-qdq.yaml", "opt_static"))

    ok = {k: v for k, v in variants.items() if v is not None}
    rng = np.random.default_rng(1)
    par_in = {spec.name: spec.random(s["parity_samples"], rng)}
    ref = outputs_of(fp32, par_in, threads)
    cos = {k: min_cosine(ref, outputs_of(p, par_in, threads)) for k, p in ok.items()}
    sizes = {k: size_bytes(p) for k, p in ok.items()}

    for batch in (1, 64):
        say(f"mlp: interleaved timing, batch {batch}, {len(ok)} models x {s['mlp_repeat']} rounds")
        inputs = {spec.name: spec.random(batch, np.random.default_rng(2))}
        timings = interleaved({k: str(p) for k, p in ok.items()}, inputs, threads=threads,
                              warmup=s["mlp_warmup"], repeat=s["mlp_repeat"])
        cols = speed_columns(timings, "FP32 ONNX")
        rows = []
        for label in variants:
            if label in errors:
                rows.append({"variant": label, "error": errors[label]})
                continue
            rows.append({"variant": label, **cols[label], "size_mb": sizes[label] / 1e6,
                         "size_ratio": sizes["FP32 ONNX"] / sizes[label], "cosine": cos[label]})
        say(f"mlp: torch eager FP32, batch {batch}")
        try:
            rows.append(torch_eager_row("bench.models:mlp", fp32, inputs, threads, s["mlp_warmup"], s["mlp_repeat"]))
        except Exception as exc:
            rows.append({"variant": "torch eager FP32", "error": first_line(exc)})
        case["tables"].append({"caption": f"batch {batch}, {threads} threads", "kind": "speed", "rows": rows})
        for label in variants:
            if label.startswith("optimize"):
                measured = cols[label]["speedup"] if label in cols else None
                case["targets"].append({
                    "target": f"{label.split(' (')[0]}: speedup ≥ {MLP_TARGET[batch]}x at batch {batch}",
                    "result": f"error: {errors[label]}" if label in errors else target_ge(measured, MLP_TARGET[batch]),
                })
    case["notes"].append(
        f"Output cosine: minimum over {s['parity_samples']} random inputs (uniform [-1, 1]) of the per-sample "
        "cosine between the candidate's and the FP32 model's outputs."
    )
    return case


# ---------------------------------------------------------------------------- case 2: digits


def case_digits(work: Path, threads: int, s: dict[str, Any]) -> dict[str, Any]:
    from optimize.benchmark import interleaved
    from optimize.data import digits
    from optimize.example import ensure_teacher

    d = work / "digits"
    case: dict[str, Any] = {"name": "digits", "title": "Built-in digits example (`optimize run`, configs/default.yaml)",
                            "tables": [], "targets": [], "notes": []}
    say("digits: teacher (trained once, then cached)")
    t0 = time.perf_counter()
    ensure_teacher()
    teach_s = time.perf_counter() - t0
    say("digits: optimize run (no model, default config)")
    report, secs, timer = run_optimize(None, None, d / "digits.opt.onnx", threads)
    teacher_onnx = d / "digits.opt.work" / "input" / "model.onnx"
    out_onnx = Path(report.files["model"])

    acc = report.metrics.get("accuracy")
    base_acc = acc.inputs.get("baseline") if acc and acc.value is not None else None
    opt_acc = acc.inputs.get("optimized") if acc and acc.value is not None else None
    drop = acc.inputs.get("drop") if acc and acc.value is not None else None

    x_te, _ = digits("test")
    models = {"teacher (FP32 ONNX)": teacher_onnx, "optimized": out_onnx}
    cols_by_batch = {}
    for batch in (1, 32):
        say(f"digits: interleaved timing, batch {batch}")
        timings = interleaved({k: str(p) for k, p in models.items()}, {"x": x_te[:batch]}, threads=threads,
                              warmup=s["digits_warmup"], repeat=s["digits_repeat"])
        cols_by_batch[batch] = speed_columns(timings, "teacher (FP32 ONNX)")
    sizes = {k: size_bytes(p) for k, p in models.items()}
    rows = []
    for label, accuracy in (("teacher (FP32 ONNX)", base_acc), ("optimized", opt_acc)):
        c1, c32 = cols_by_batch[1][label], cols_by_batch[32][label]
        rows.append({
            "variant": label, "accuracy": accuracy,
            "median_ms_b1": c1["median_ms"], "speedup_b1": c1["speedup"], "speedup_b1_iqr": c1["speedup_iqr"],
            "median_ms_b32": c32["median_ms"], "speedup_b32": c32["speedup"], "speedup_b32_iqr": c32["speedup_iqr"],
            "size_mb": sizes[label] / 1e6, "size_ratio": sizes["teacher (FP32 ONNX)"] / sizes[label],
        })
    case["tables"].append({"caption": f"{threads} threads; accuracy on the {len(x_te)}-sample digits test split",
                           "kind": "digits", "rows": rows})
    steps = tool_time_rows(report, timer, secs)
    case["tables"].append({"caption": "the tool's own time (phases and passes; report.steps[].seconds)", "kind": "steps",
                           "rows": steps})
    sp = report.metrics.get("speedup")
    case["notes"].append(
        f"Teacher: ensure_teacher() took {teach_s:.1f}s in this run (training happens once; later runs load the cache). "
        f"{tool_summary(report, secs)}; report status `{report.status}`"
        + (f", gates: {'; '.join(g.message for g in report.gates)}" if report.gates else "") + "."
    )
    if sp is not None and sp.value is not None:
        case["notes"].append(f"The report's own speedup: {sp.value:.2f}x ({sp.formula}).")
    case["targets"].append({"target": f"digits: accuracy within {DIGITS_MAX_DROP} points of the teacher",
                            "result": target_le(drop, DIGITS_MAX_DROP, " pts")})
    return case


# ---------------------------------------------------------------------------- case 3: ResNet


class _RandomReader:
    """CalibrationDataReader for quantize_static: random batches drawn from the input spec."""

    def __init__(self, spec: Any, samples: int, batch: int, seed: int = 3) -> None:
        rng = np.random.default_rng(seed)
        self._batches = [{spec.name: spec.random(min(batch, samples - i), rng)} for i in range(0, samples, batch)]
        self._it = iter(self._batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._batches)


def case_resnet(work: Path, threads: int, s: dict[str, Any]) -> dict[str, Any]:
    from onnxruntime.quantization import QuantFormat, quantize_static

    from optimize.benchmark import interleaved
    from optimize.export import export_to_onnx
    from optimize.handle import TensorSpec
    from optimize.loaders import load_model

    res, batch = s["resnet_res"], s["resnet_batch"]
    d = work / "resnet"
    d.mkdir(parents=True, exist_ok=True)
    case: dict[str, Any] = {"name": "resnet", "title": f"ResNet-18-style CNN, batch {batch}, {res}×{res}",
                            "tables": [], "targets": [], "notes": []}
    spec = TensorSpec("x", ("batch", 3, res, res))
    overrides = [] if res == 224 else [f"model.inputs=[{{name: x, shape: [batch, 3, {res}, {res}], dtype: float32}}]"]
    variants: dict[str, Path | None] = {}
    errors: dict[str, str] = {}
    prune_label = "optimize structured prune 50% (bench/configs/resnet-prune50.yaml)"
    ort_label = "onnxruntime quantize_static QDQ (defaults, random calibration)"

    say("resnet: optimize run (structured prune 50%)")
    fp32: Path | None = None
    steps_table: dict[str, Any] | None = None
    try:
        report, secs, timer = run_optimize("bench.models:resnet18_like", str(REPO / "bench/configs/resnet-prune50.yaml"),
                                    d / "pruned.onnx", threads, overrides)
        fp32 = d / "pruned.work" / "input" / "model.onnx"  # the tool's own FP32 export of the input
        variants[prune_label] = Path(report.files["model"])
        case["notes"].append(f"{tool_summary(report, secs)}.")
        steps_table = {"caption": "the tool's own time, structured prune 50% (phases and passes)", "kind": "steps",
                       "rows": tool_time_rows(report, timer, secs)}
        pm = report.metrics.get("params_removed")
        if pm is not None and pm.value is not None:
            case["notes"].append(f"Weights removed by pruning: {pm.value:.1%} ({pm.inputs}).")
    except Exception as exc:
        errors[prune_label] = first_line(exc)
        variants[prune_label] = None
        say(f"resnet: prune failed: {errors[prune_label]}")
    if fp32 is None or not fp32.is_file():
        say("resnet: export FP32 ONNX")
        h = load_model("bench.models:resnet18_like")
        h = h.replace(inputs=[spec])
        fp32 = export_to_onnx(h, d / "fp32.onnx").onnx_path
    assert fp32 is not None
    variants = {"FP32 ONNX": fp32, **variants}

    say(f"resnet: quantize_static (QDQ defaults, {s['resnet_calib']} random calibration samples)")
    try:
        out = d / "ort_static_qdq.onnx"
        quantize_static(str(fp32), str(out), _RandomReader(spec, s["resnet_calib"], batch), quant_format=QuantFormat.QDQ)
        variants[ort_label] = out
    except Exception as exc:
        errors[ort_label] = first_line(exc)
        variants[ort_label] = None
        say(f"resnet: quantize_static failed: {errors[ort_label]}")
    order = ["FP32 ONNX", ort_label, prune_label]
    ok = {k: variants[k] for k in order if variants.get(k) is not None}

    rng = np.random.default_rng(4)
    inputs = {"x": spec.random(batch, rng)}
    ref = outputs_of(fp32, inputs, threads)
    cos = {k: min_cosine(ref, outputs_of(p, inputs, threads)) for k, p in ok.items()}  # type: ignore[arg-type]
    sizes = {k: size_bytes(p) for k, p in ok.items()}  # type: ignore[arg-type]
    say(f"resnet: interleaved timing, {len(ok)} models x {s['resnet_repeat']} rounds")
    timings = interleaved({k: str(p) for k, p in ok.items()}, inputs, threads=threads,
                          warmup=s["resnet_warmup"], repeat=s["resnet_repeat"])
    cols = speed_columns(timings, "FP32 ONNX")
    rows = []
    for label in order:
        if label in errors:
            rows.append({"variant": label, "error": errors[label]})
            continue
        rows.append({"variant": label, **cols[label], "size_mb": sizes[label] / 1e6,
                     "size_ratio": sizes["FP32 ONNX"] / sizes[label], "cosine": cos[label]})
    say("resnet: torch eager FP32")
    try:
        rows.append(torch_eager_row("bench.models:resnet18_like", fp32, inputs, threads, s["resnet_warmup"],
                                    s["resnet_repeat"]))
    except Exception as exc:
        rows.append({"variant": "torch eager FP32", "error": first_line(exc)})
    case["tables"].append({"caption": f"batch {batch}, {res}×{res}, {threads} threads", "kind": "speed", "rows": rows})
    if steps_table is not None:
        case["tables"].append(steps_table)
    if prune_label in errors:
        for t in ("speedup ≥ 3x", "size ≥ 3.5x smaller"):
            case["targets"].append({"target": f"ResNet pruned 50%: {t}", "result": f"error: {errors[prune_label]}"})
    else:
        case["targets"].append({"target": f"ResNet pruned 50%: speedup ≥ {RESNET_SPEEDUP_TARGET}x",
                                "result": target_ge(cols[prune_label]["speedup"], RESNET_SPEEDUP_TARGET)})
        case["targets"].append({"target": f"ResNet pruned 50%: ≥ {RESNET_SIZE_TARGET}x smaller",
                                "result": target_ge(sizes["FP32 ONNX"] / sizes[prune_label], RESNET_SIZE_TARGET)})
    case["notes"].append(
        "Random weights, no fine-tuning: the pruned model's output cosine shows how far pruning moved the outputs "
        "before any recovery training, not a trained model's accuracy. The FP32 row is the tool's own export of "
        "the input model (the same file the pipeline measures against); quantize_static quantizes that file "
        f"with its defaults (QDQ, int8 activations and weights, per-tensor, min/max) after {s['resnet_calib']} "
        "random calibration samples."
    )
    return case


# ---------------------------------------------------------------------------- main


def machine_profile(threads: int) -> dict[str, Any]:
    from optimize import hardware

    hw = hardware.describe()
    return {
        "cpu": hw.get("cpu"), "arch": hw.get("arch"), "cores": hw.get("cores"), "isa": hw.get("isa", []),
        "int8_dot_product": hardware.has_int8_dot_product(), "gpu": hw.get("gpu"),
        "onnxruntime_providers": hw.get("onnxruntime_providers"), "versions": hardware.versions(),
        "threads": threads, "loadavg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def load1() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def wait_idle(limit_s: float, cores: int) -> None:
    """Wait (up to limit_s) until the 1-minute load average drops below 75% of the cores."""
    deadline = time.monotonic() + limit_s
    while (load := load1()) is not None and load > 0.75 * cores and time.monotonic() < deadline:
        say(f"waiting for the machine to go idle (1-min load {load:.2f} on {cores} cores)")
        time.sleep(10)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="optimize benchmark suite → bench/results.md")
    ap.add_argument("--quick", action="store_true", help="fewer rounds, ResNet at 112×112 (a few minutes)")
    ap.add_argument("--only", action="append", default=None, metavar="NAME",
                    help=f"run only these cases ({', '.join(CASES)}); repeatable or comma-separated")
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads for every session (default 2)")
    ap.add_argument("--output", default=str(REPO / "bench" / "results.md"), help="Markdown results file")
    ap.add_argument("--keep", metavar="DIR", default=None, help="keep the models and reports in DIR")
    ap.add_argument("--wait-idle", type=float, default=0, metavar="SECONDS",
                    help="before each case, wait up to this long for the load average to drop (default 0)")
    ap.add_argument("-v", "--verbose", action="store_true", help="log tracebacks of failures")
    args = ap.parse_args(argv)

    only = [c for item in (args.only or []) for c in item.split(",") if c] or list(CASES)
    unknown = [c for c in only if c not in CASES]
    if unknown:
        ap.error(f"unknown case(s) {unknown}; known: {', '.join(CASES)}")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    # torch's ONNX exporter logs one warning per torchvision op it cannot register; not ours to show
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    out = Path(args.output).resolve()
    keep = Path(args.keep).resolve() if args.keep else None
    os.chdir(REPO)  # factories (bench.models:...) and config paths resolve from the repository root

    mode = "quick" if args.quick else "full"
    s = SETTINGS[mode]
    started = dt.datetime.now(dt.timezone.utc)
    t_start = time.perf_counter()
    work = keep or Path(tempfile.mkdtemp(prefix="optimize-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    profile = machine_profile(args.threads)
    results: list[dict[str, Any]] = []
    runners = {"mlp": case_mlp, "digits": case_digits, "resnet": case_resnet}
    try:
        for name in only:
            if args.wait_idle > 0:
                wait_idle(args.wait_idle, profile["cores"] or 1)
            load_before = load1()
            t0 = time.perf_counter()
            try:
                case = runners[name](work, args.threads, s)
            except Exception as exc:
                say(f"{name}: failed: {first_line(exc)}")
                if args.verbose:
                    traceback.print_exc()
                case = {"name": name, "title": name, "error": first_line(exc), "tables": [], "notes": [],
                        "targets": [{"target": name, "result": f"error: {first_line(exc)}"}]}
            case["seconds"] = time.perf_counter() - t0
            case["load"] = [load_before, load1()]
            results.append(case)
            say(f"{name}: done in {case['seconds']:.0f}s")
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)
    total = time.perf_counter() - t_start
    command = "bench/run.py" + (" --quick" if args.quick else "") + "".join(f" --only {c}" for c in (args.only or []))
    doc = md.render(profile=profile, cases=results, mode=mode, settings=s, started=started, seconds=total,
                    command=command)
    out.write_text(doc)
    out.with_suffix(".json").write_text(json.dumps(
        {"started": started.isoformat(timespec="seconds"), "mode": mode, "settings": s, "seconds": total,
         "machine": profile, "cases": results}, indent=2, default=str) + "\n")
    say(f"wrote {out} ({total:.0f}s)")
    print(doc)
    return 1 if any("error" in c for c in results) else 0


if __name__ == "__main__":
    sys.exit(main())
