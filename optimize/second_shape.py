"""Validate the output on a second shape: a model whose dims stay symbolic is run by users at
sizes other than the one every probe used, so after the pipeline the input and output models are
also compared at a second size for each such dim (half the declared size; image H/W kept a
multiple of 32, the usual largest stride of a detection head). Reported beside the parity at the
declared shape (`metrics.parity.inputs.second_shape`); never fails the run on its own.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from optimize.handle import TensorSpec

STRIDE = 32  # image H/W of the second shape stay a multiple of this (detection heads' largest stride)
SAMPLES = 8


def second_specs(specs: list[TensorSpec]) -> list[TensorSpec] | None:
    """The specs at the second size, or None when no non-batch dim stays symbolic."""
    out, changed = [], False
    for s in specs:
        base = s.concrete_shape(1) if not s.is_scalar else ()
        dims = list(base)
        image = len(s.shape) == 4
        for axis, d in enumerate(s.shape):
            if axis == 0 or (isinstance(d, int) and d > 0):
                continue
            size = base[axis] // 2
            if image and axis >= 1 and base[axis] >= 2 * STRIDE:
                size = max(STRIDE, size // STRIDE * STRIDE)
            if 0 < size < base[axis]:
                dims[axis], changed = size, True
        out.append(replace(s, example_shape=tuple(dims)) if dims != list(base) else s)
    return out if changed else None


def second_shape_parity(base_sess: Any, out_sess: Any, specs: list[TensorSpec], seed: int, batch_size: int) -> dict | None:
    """Parity at the second shape on random inputs (or the reason it could not run); None when
    every dim is fixed or the batch axis is the only symbolic one."""
    from optimize.probes import degenerate_reason, sample_count
    from optimize.runtime import parity, predict

    second = second_specs(specs)
    if second is None:
        return None
    rng = np.random.default_rng(seed + 1)
    inputs = {s.name: s.random(SAMPLES, rng) for s in second}
    shapes = {k: list(np.shape(v)) for k, v in inputs.items()}
    try:
        ref = predict(base_sess, inputs, batch_size)
        got = predict(out_sess, inputs, batch_size)
        par = parity(ref, got)
    except Exception as exc:  # a model that cannot run at this size: say so, do not fail the run
        return {"shapes": shapes, "error": " ".join(str(exc).split())[:500], "source": "random inputs"}
    degenerate = degenerate_reason(ref, sample_count(inputs))
    return {"shapes": shapes, "min_cosine": par["min_cosine"], "agreement": par["agreement"],
            "all_finite": par["all_finite"], "samples": sample_count(inputs), "source": "random inputs",
            "degenerate": degenerate}


def finding(second: dict | None, first_value: float | None) -> str | None:
    """A finding when the second shape tells a different story than the declared one."""
    if not second:
        return None
    shapes = ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in second["shapes"].items())
    if second.get("error"):
        return f"at a second input size ({shapes}) a model failed to run: {second['error']}"
    value = second.get("min_cosine")
    if value is None:
        return f"at a second input size ({shapes}) the output model produced NaN or Inf"
    if first_value is not None and value < first_value - 0.02:
        return f"parity at a second input size ({shapes}) is {value:.4f}, below {first_value:.4f} at the declared size"
    return None
