"""quantize `format: auto` and the accuracy-aware fallback: candidates measured on the target.

`format: auto` builds the quantized forms that fit the model and the hardware (dynamic int8 for
MatMul/Gemm models, static QDQ per-channel when calibration is possible; never QOperator, which
measured 0.1–0.2x of float32 on CPUs without VNNI), keeps the float input as a candidate, checks
each against the float input (parity on eval data or the input spec, and top-1 accuracy when
labelled eval data and `gates.max_accuracy_drop` exist), times them all interleaved with the float
input (same threads, batch, warm-up and repeats as `measure:`), and keeps the fastest passing one
(`objective: latency`) or the smallest (`objective: size`). A quantized model is chosen over float
only when it was measured faster; with `objective: size` a slower choice is said in the notes.

A candidate that misses the goal gets the accuracy-aware fallback (passes/quantize/layer_search.py):
its most sensitive layers kept in float until it holds the floor. This module holds what the
search and the fallback share: the goal, the checks against the float input, the candidates.

Why hand-written: ONNX Runtime's quantizers quantize one given configuration; choosing among
configurations by measured speed and accuracy on the target is what this tool adds. The timing
(`optimize.benchmark.interleaved`), parity (`optimize.runtime.parity`) and the quantizers
themselves are the shared ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WEIGHTED_LAYER_OPS = ("MatMul", "Gemm", "Conv")
DEFAULT_AUTO_FLOOR = 0.99  # min cosine vs the float input when no floor is configured (format: auto)


@dataclass
class Check:
    """How a model compares with the float input on the pass's evaluation data."""

    min_cosine: float | None
    mean_cosine: float | None
    max_abs_diff: float | None
    all_finite: bool
    accuracy: float | None = None
    accuracy_drop: float | None = None

    def error(self) -> float:
        """The error a model adds: 1 − mean cosine (infinite when outputs are not finite)."""
        return float("inf") if not self.all_finite or self.mean_cosine is None else 1.0 - self.mean_cosine


@dataclass
class Goal:
    floor: float | None  # min cosine; None: not checked
    max_accuracy_drop: float | None  # points; None: not checked
    floor_source: str = ""

    def judge(self, c: Check) -> tuple[bool, str | None]:
        if not c.all_finite:
            return False, "non-finite outputs"
        if self.floor is not None and (c.min_cosine is None or c.min_cosine < self.floor):
            return False, f"parity min cosine {c.min_cosine:.4f} < floor {self.floor} ({self.floor_source})"
        if self.max_accuracy_drop is not None and c.accuracy_drop is not None and c.accuracy_drop > self.max_accuracy_drop:
            return False, f"accuracy drop {c.accuracy_drop:.2f} pts > {self.max_accuracy_drop} (gates.max_accuracy_drop)"
        return True, None

    @property
    def active(self) -> bool:
        return self.floor is not None or self.max_accuracy_drop is not None


class Evaluator:
    """Runs models on the pass's evaluation inputs and compares them with the float input."""

    def __init__(self, ctx: Any, float_path: Path, *, want_accuracy: bool) -> None:
        from optimize.probes import sample_count
        from optimize.runtime import reference_outputs, session

        self.ctx = ctx
        self.float_path = float_path
        cfg = ctx.config
        self.inputs, self.source = ctx.sample_inputs("eval", ctx.parity_count())  # what the final parity reads
        self.samples = sample_count(self.inputs) if self.inputs else 0
        sess = session(float_path, threads=ctx.threads)
        # a model whose outputs depend on its batch-mates is judged at the batch it is used at
        self.reference, self.batch = reference_outputs(sess, self.inputs, cfg.data.batch_size, cfg.measure.batch,
                                                       self.source)
        self.eval_ds = None
        self.float_accuracy: float | None = None
        if want_accuracy:
            self.measure_accuracy()

    def measure_accuracy(self) -> None:
        """Also judge accuracy (classification with labelled eval data); a no-op when already on."""
        from optimize.runtime import session

        cfg = self.ctx.config
        ds = self.ctx.data("eval") if self.eval_ds is None else None
        if ds is not None and ds.labels is not None and cfg.model.task == "classification":
            self.eval_ds = ds
            self.float_accuracy = self._accuracy(session(self.float_path, threads=self.ctx.threads))

    @property
    def realistic(self) -> bool:
        """Whether the inputs are data the user gave (not random draws from the input spec)."""
        from optimize.probes import RANDOM_IDS_SOURCE, RANDOM_SOURCE

        return self.source not in (RANDOM_SOURCE, RANDOM_IDS_SOURCE)

    def _accuracy(self, sess: Any) -> float | None:
        import numpy as np

        from optimize.runtime import predict

        assert self.eval_ds is not None
        out = predict(sess, self.eval_ds.inputs, self.batch)[0]
        if not np.isfinite(out).all():
            return None
        return float((out.argmax(axis=-1) == self.eval_ds.labels).mean() * 100)

    def held_out(self, path: Path) -> dict[str, Any] | None:
        """Parity on data.eval samples no choice was made on: those after the ones parity
        reads (ctx.parity_count(); as many again at most). None without such samples (or without
        real data). The fallback keeps layers in float until the samples it judges on meet the
        floor, so those read optimistic; these do not. Parity only: an accuracy goal is judged on
        all of data.eval."""
        from optimize.probes import slice_samples
        from optimize.runtime import parity, predict, session

        ds = self.ctx.data("eval") if self.realistic else None
        if ds is None or len(ds) <= self.samples:
            return None
        stop = min(len(ds), 2 * self.samples)
        inputs = slice_samples(ds.inputs, self.samples, stop)
        ref = predict(session(self.float_path, threads=self.ctx.threads), inputs, self.batch)
        p = parity(ref, predict(session(path, threads=self.ctx.threads), inputs, self.batch))
        return {"samples": stop - self.samples, "min_cosine": p["min_cosine"], "mean_cosine": p["mean_cosine"],
                "all_finite": p["all_finite"],
                "on": f"data.eval samples {self.samples}–{stop - 1} (the choice was made on the first {self.samples})"}

    def check(self, path: Path) -> Check:
        from optimize.runtime import parity, predict, session

        sess = session(path, threads=self.ctx.threads)
        p = parity(self.reference, predict(sess, self.inputs, self.batch))
        c = Check(p["min_cosine"], p["mean_cosine"], p["max_abs_diff"], p["all_finite"])
        if self.eval_ds is not None and self.float_accuracy is not None:
            c.accuracy = self._accuracy(sess)
            c.accuracy_drop = None if c.accuracy is None else self.float_accuracy - c.accuracy
        return c


@dataclass
class Candidate:
    name: str
    path: Path
    settings: dict[str, Any]
    quantized: bool = True
    check: Check | None = None
    passed: bool = False
    reason: str | None = None
    float_nodes: list[str] = field(default_factory=list)
    sensitivity: dict[str, float] | None = None
    median_ms: float | None = None
    speedup: float | None = None
    speed_low: float | None = None  # the lower end of the speedup's 95% interval (bootstrap of the rounds)
    bytes: int | None = None
    failed: bool = False  # could not be built, loaded or run: rejected, never timed

    def row(self, float_bytes: int) -> dict[str, Any]:
        c = self.check
        return {
            "name": self.name,
            **self.settings,
            "latency_ms": self.median_ms,
            "speedup": self.speedup,
            "speedup_low": self.speed_low,
            "bytes": self.bytes,
            "size_ratio": (float_bytes / self.bytes) if self.bytes else None,
            "min_cosine": c.min_cosine if c else None,
            "mean_cosine": c.mean_cosine if c else None,
            "accuracy": c.accuracy if c else None,
            "accuracy_drop": c.accuracy_drop if c else None,
            "passed": self.passed,
            "reason": self.reason,
            "float_nodes": list(self.float_nodes),
            "failed": self.failed,
        }


# A function that quantizes the pass's prepared input with the given overrides of the pass config
# (and optional node include / exclude lists) into `out`.
QuantizeFn = Callable[..., None]


def weighted_layers(path: Path, op_types: list[str] | None, exclude: list[str]) -> list[str]:
    """Names of the nodes a quantizer would consider: MatMul/Gemm/Conv with a constant weight."""
    import onnx

    from optimize.inspect_onnx import iter_weight_uses

    model = onnx.load(str(path), load_external_data=False)
    wanted = set(op_types) if op_types is not None else set(WEIGHTED_LAYER_OPS)
    names: list[str] = []
    for use in iter_weight_uses(model):
        n = use.node
        if n.op_type in WEIGHTED_LAYER_OPS and n.op_type in wanted and n.name and n.name not in exclude:
            if n.name not in names:
                names.append(n.name)
    return names


def bench_inputs(ctx: Any, specs: list[Any]) -> dict[str, Any]:
    """The latency inputs `measure` uses: eval data when it has a full batch, else random from the spec."""
    import numpy as np

    m = ctx.config.measure
    ds = ctx.data("eval")
    if ds is not None and len(ds) >= m.batch:
        return ds.take(m.batch).inputs
    rng = np.random.default_rng(ctx.seed)
    return {s.name: s.random(m.batch, rng) for s in specs}


def time_candidates(ctx: Any, float_path: Path, candidates: list[Candidate], specs: list[Any]) -> dict[str, Any]:
    """Time the float input and every candidate interleaved; fill median_ms and speedup."""
    from optimize.benchmark import interleaved, pairwise_ratio
    from optimize.speed import median_interval, round_ratios

    m = ctx.config.measure
    models: dict[str, Any] = {"float input": float_path}
    for c in candidates:
        if c.quantized or c.path != float_path:
            models[c.name] = c.path
    timings = interleaved(
        models, bench_inputs(ctx, specs), threads=ctx.threads, warmup=m.warmup, repeat=m.repeat,
        progress=ctx.progress, key="quantize.auto.latency",
    )
    base = timings["float input"]
    for c in candidates:
        t = timings.get(c.name)
        if t is None:  # the float input itself
            c.median_ms, c.speedup = base.median_ms, 1.0
        else:
            c.median_ms, c.speedup = t.median_ms, pairwise_ratio(base, t)
            c.speed_low = median_interval(round_ratios(base.times_ms, t.times_ms))[0]
    return {"threads": ctx.threads, "batch": m.batch, "warmup": m.warmup, "repeat": m.repeat,
            "float_ms": base.median_ms, "runtime": base.runtime}


SIZE_TIE = 0.02


def _size_choice(among: list[Candidate], candidates: list[Candidate]) -> str:
    """'objective: size would choose NAME (N.Nx smaller)': the smallest of `among` against the float input."""
    smallest = min(among, key=lambda c: c.bytes or 0)
    float_bytes = next((c.bytes for c in candidates if not c.quantized and c.bytes), None)
    size = f" ({float_bytes / smallest.bytes:.1f}x smaller)" if float_bytes and smallest.bytes else ""
    return f"objective: size would choose {smallest.name}{size}"


def choose(candidates: list[Candidate], objective: str, skipped: tuple[str, ...] = ()) -> tuple[Candidate, list[str]]:
    """The chosen candidate and the notes that explain the choice (`skipped`: why the formats that
    were not built were not, named when no quantized candidate was)."""
    notes: list[str] = []
    passing = [c for c in candidates if c.passed]
    quantized = [c for c in passing if c.quantized]
    if objective == "size":
        # Sizes within SIZE_TIE of the smallest count as equal: among those, the fastest wins (a
        # 0.3 % smaller file is not worth a 30x slower model).
        smallest_bytes = min(c.bytes or 0 for c in passing)
        near = [c for c in passing if (c.bytes or 0) <= smallest_bytes * (1 + SIZE_TIE)]
        best = max(near, key=lambda c: (c.speedup or 0.0, -(c.bytes or 0)))
        if best.quantized and best.speedup is not None and best.speedup < 1.0:
            notes.append(
                f"objective size: chose {best.name}, the smallest passing candidate, although it runs SLOWER than "
                f"float ({best.speedup:.2f}x)"
            )
        return best, notes
    best = max(passing, key=lambda c: (c.speedup or 0.0, -(c.bytes or 0)))
    slower = [c for c in candidates if c.quantized and c.speedup is not None and c.speedup < 1.0]
    exact = max((c for c in passing if not c.quantized), key=lambda c: c.speedup or 0.0, default=None)
    if best.quantized and exact is not None and best.speed_low is not None and best.speed_low <= (exact.speedup or 1.0):
        # not measurably faster than the fastest float graph, which keeps the float outputs at that speed
        notes.append(
            f"kept {exact.name}: the fastest quantized candidate, {best.name}, measured {best.speedup:.2f}x (95% interval "
            f"from {best.speed_low:.2f}x), not measurably faster than {exact.name} ({exact.speedup or 1.0:.2f}x) here; "
            + _size_choice(quantized, candidates)
        )
        return exact, notes
    if not best.quantized and slower:
        notes.append(
            "kept float: every quantized candidate ran SLOWER than the float input on this hardware ("
            + ", ".join(f"{c.name} {c.speedup:.2f}x" for c in slower) + "); " + _size_choice(slower, candidates)
        )
    elif not best.quantized and not any(c.quantized for c in candidates):
        notes.append("kept float: no quantized candidate was built" + (": " + "; ".join(skipped) if skipped else ""))
    elif not best.quantized and not quantized:
        notes.append("kept float: no quantized candidate met the parity/accuracy goal")
    elif best.quantized and best.speedup is not None and best.speedup < 1.05:
        low = f" (95% interval from {best.speed_low:.2f}x)" if best.speed_low is not None else ""
        notes.append(f"chose {best.name} at {best.speedup:.2f}x{low}: a small gain on this machine")
    return best, notes
