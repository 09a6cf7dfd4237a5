"""Keep-masks in numpy, shared by the torch and ONNX forms so both prune identically and the
counts are exact: magnitude (per layer, or one global threshold), N:M along the input dimension,
and the per-layer report entry."""

from __future__ import annotations

from typing import Any

import numpy as np


def keep_largest(absval: np.ndarray, n_zero: int) -> np.ndarray:
    """A flat keep-mask that drops exactly the `n_zero` smallest entries of `absval`."""
    keep = np.ones(absval.size, dtype=bool)
    if n_zero >= absval.size:
        keep[:] = False
    elif n_zero > 0:
        keep[np.argpartition(absval, n_zero - 1)[:n_zero]] = False
    return keep


def magnitude_keep(
    weights: dict[str, np.ndarray], sparsity: float, scope: str, per_layer: dict[str, float] | None = None
) -> dict[str, np.ndarray]:
    """Keep-masks zeroing the smallest |w|: `sparsity` of each tensor (layer) or of all of them
    together (global: one threshold across the tensors). Tensors named in `per_layer` are pruned
    on their own to their own fraction."""
    per_layer = per_layer or {}
    absval = {k: np.abs(np.asarray(w, dtype=np.float32)).ravel() for k, w in weights.items()}
    out: dict[str, np.ndarray] = {}
    for k, a in absval.items():
        if scope == "layer" or k in per_layer:
            out[k] = keep_largest(a, int(round(per_layer.get(k, sparsity) * a.size))).reshape(weights[k].shape)
    rest = {k: a for k, a in absval.items() if k not in out}
    if not rest:
        return out
    flat = np.concatenate(list(rest.values()))
    keep = keep_largest(flat, int(round(sparsity * flat.size)))
    start = 0
    for k, a in rest.items():
        out[k] = keep[start : start + a.size].reshape(weights[k].shape)
        start += a.size
    return out



class GlobalCut:
    """Global magnitude pruning, one tensor at a time: the threshold comes from one flat float32
    array of |w| over the selected weights (partitioned in place, no index array), then each
    tensor drops its entries below it, and entries equal to it in order until exactly
    round(sparsity × total) are dropped (as `keep_largest` does on the concatenation)."""

    def __init__(self, chosen: dict[str, Any], read: Any, sparsity: float) -> None:
        sizes = {n: int(np.prod(us[0].tensor.dims, dtype=np.int64)) for n, us in chosen.items()}
        total = sum(sizes.values())
        self.n_zero = int(round(sparsity * total))
        self.threshold: float | None = None
        self.ties_left = 0
        if 0 < self.n_zero < total:
            flat = np.empty(total, dtype=np.float32)
            start = 0
            for n in chosen:
                flat[start : start + sizes[n]] = np.abs(np.asarray(read(n), dtype=np.float32)).ravel()
                start += sizes[n]
            flat.partition(self.n_zero - 1)
            self.threshold = float(flat[self.n_zero - 1])
            below = int(np.count_nonzero(flat < self.threshold))
            del flat
            self.ties_left = self.n_zero - below

    def keep(self, arr: np.ndarray) -> np.ndarray:
        if self.n_zero <= 0:
            return np.ones(arr.shape, dtype=bool)
        if self.threshold is None:  # every weight goes
            return np.zeros(arr.shape, dtype=bool)
        a = np.abs(np.asarray(arr, dtype=np.float32))
        keep = ~(a < self.threshold)
        if self.ties_left > 0:
            ties = np.flatnonzero(a == self.threshold)[: self.ties_left]
            keep.flat[ties] = False
            self.ties_left -= len(ties)
        return keep


def nm_keep(w: np.ndarray, in_axes: tuple[int, ...], n: int, m: int) -> np.ndarray | None:
    """Keep the `n` largest |w| of every `m` consecutive weights along the input dimension.

    `in_axes` are the axes that make up one output unit's inputs (for a Conv: in-channels and
    kernel, flattened in that order). None when their size is not divisible by `m`.
    """
    rest = [a for a in range(w.ndim) if a not in in_axes]
    perm = rest + list(in_axes)
    t = np.abs(np.asarray(w, dtype=np.float32)).transpose(perm)
    in_size = int(np.prod([w.shape[a] for a in in_axes]))
    if in_size == 0 or in_size % m:
        return None
    groups = t.reshape(-1, in_size // m, m)
    top = np.argsort(-groups, axis=-1, kind="stable")[..., :n]
    keep = np.zeros(groups.shape, dtype=bool)
    np.put_along_axis(keep, top, True, axis=-1)
    return keep.reshape(t.shape).transpose(np.argsort(perm))


def layer_entry(name: str, before: tuple[int, ...], after: tuple[int, ...], zeros: int, total: int) -> dict[str, Any]:
    return {
        "name": name,
        "shape_before": list(before),
        "shape_after": list(after),
        "weights": int(total),
        "zeros": int(zeros),
        "sparsity": round(zeros / total, 6) if total else 0.0,
    }

