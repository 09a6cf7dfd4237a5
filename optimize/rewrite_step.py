"""What the graph rewrites after the passes share (optimize/pad_trim.py, optimize/skip_layernorm.py,
optimize/softmax_guard.py).

Each rewrite computes the same values as the graph it rewrites and changes only how fast ONNX
Runtime's CPU kernels run it, so each is timed against the unrewritten file on this machine
(interleaved rounds, more added while the verdict is open) and recorded in the lineage as an inserted
step with its metrics and notes. A failure to decide is a note, never the run's: verification judges
the model next.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("optimize")

ROUNDS = 20  # interleaved rounds for `auto` (more are added while the verdict is open, up to 3x)
EXTRA_SECONDS = 10.0


@dataclass
class Choice:
    path: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def time_pair(files: dict[str, Path], inputs: dict[str, np.ndarray], *, threads: int, warmup: int, repeat: int,
              tolerance: float, progress: Any, key: str, what: str) -> tuple[Any, float, float, int]:
    """The two `files` ({name: path}, the unrewritten first) timed interleaved: (the estimate of the
    first's latency over the second's, their medians in ms, rounds). Rounds are added (up to 3x
    `repeat`) while the estimate is not settled."""
    from optimize import benchmark
    from optimize.speed import estimate, round_ratios

    a, b = files

    def done(times: dict[str, list[float]]) -> bool:
        return estimate(round_ratios(times[a], times[b]), tolerance).settled

    t = benchmark.interleaved(files, inputs, threads=threads, warmup=warmup, repeat=repeat, progress=progress, key=key,
                              what=what, more=benchmark.MoreRounds(done, 3 * repeat, EXTRA_SECONDS))
    ratios = round_ratios(t[a].times_ms, t[b].times_ms)
    return estimate(ratios, tolerance), t[a].median_ms, t[b].median_ms, len(ratios)


def timing_metrics(names: tuple[str, str], timed: tuple[Any, float, float, int], threads: int,
                   inputs: dict[str, np.ndarray]) -> dict[str, Any]:
    """What a rewrite step records of `time_pair`'s result `timed` for the files `names`
    (unrewritten first): each median as `NAME_ms`, the speedup with its interval and verdict, the
    rounds, threads and batch."""
    est, a_ms, b_ms, rounds = timed
    return {f"{names[0]}_ms": round(a_ms, 3), f"{names[1]}_ms": round(b_ms, 3), "speedup": round(est.value, 4),
            "interval": [round(est.low, 4), round(est.high, 4)], "verdict": est.verdict, "rounds": rounds,
            "threads": threads, "batch": batch_of(inputs)}


def batch_of(inputs: dict[str, np.ndarray]) -> int:
    from optimize.probes import sample_count

    return sample_count(inputs)


def apply_step(ctx: Any, final: Any, lineage: Any, inputs: dict[str, np.ndarray], *, mode: str, choose: Callable[..., Any],
               step_type: str, what: str, kept_when_failed: dict[str, Any]) -> Any:
    """The pipeline's step after the passes: `choose(model path, scratch folder, mode=…, inputs=…,
    threads=…, warmup=…, repeat=…, tolerance=…, progress=…)` picks the file to hand on (None:
    nothing to decide); returns the final model (a new handle when it changed), the choice recorded
    in the lineage. `auto` decides on `--device cpu` runs only. An exception is recorded as a note
    ("`what` not decided") with `kept_when_failed` metrics."""
    from optimize.model_facts import weight_count
    from optimize.report import Step

    if mode == "auto" and ctx.device != "cpu":
        return final
    m = ctx.config.measure
    t0 = time.perf_counter()
    out_dir = ctx.work_dir / f"{len(lineage.steps) + 1:02d}-{step_type}"
    try:
        choice = choose(Path(final.onnx_path), out_dir, mode=mode, inputs=inputs, threads=ctx.threads, warmup=m.warmup,
                        repeat=min(ROUNDS, m.repeat), tolerance=m.speed_tolerance, progress=ctx.progress)
    except Exception as exc:  # noqa: BLE001 - optional step: the model is handed on as the passes wrote it
        log.debug("%s failed", step_type, exc_info=True)
        shutil.rmtree(out_dir, ignore_errors=True)
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        choice = Choice(Path(final.onnx_path), {"mode": mode, **kept_when_failed, "error": reason},
                        [f"{what} not decided ({type(exc).__name__}: {reason}); the graph is kept"])
    if choice is None:
        return final
    weights = weight_count(final)
    lineage.steps.append(Step(index=len(lineage.steps) + 1, pass_index=None, type=step_type, config={"mode": mode},
                              form_in="onnx", form_out="onnx", seconds=round(time.perf_counter() - t0, 3),
                              params_before=weights, params_after=weights, metrics=choice.metrics, notes=choice.notes,
                              inserted=True))
    return final if choice.path == Path(final.onnx_path) else final.replace(onnx_path=choice.path)
