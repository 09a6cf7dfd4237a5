"""SmoothQuant's scales, and with `smooth_alpha: auto` each input's α chosen by the int8 error it leaves.

One α for every input is SmoothQuant's recipe; on the real all-MiniLM-L6-v2 it helps the inputs of
the attention and of the FFNs' first projections and hurts the FFN output projections below α ≈ 0.7
(there a few rows of the weight, made large, set its per-column step). So each input's α is chosen
from a grid by simulating ONNX Runtime's dynamic int8 on the user's samples in numpy: uint8 input at
one asymmetric scale per call (per batch), int8 weights symmetric per column (within ±64 with
reduce_range), the integer product exact as MatMulInteger's; the error is ‖ŷ − y‖² / ‖y‖² of the
products the input feeds. An input keeps no smoothing (and no Mul) unless its best α cuts that
error by `MIN_GAIN`: a Mul per input costs time.
"""

from __future__ import annotations

import numpy as np

GRID = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)  # MiniLM chose 0.8-1.0; below 0.5 hurt every input kind tried
MIN_GAIN = 0.2  # the relative error cut an input's Mul must buy


def scales(act_max: np.ndarray, weight_max: np.ndarray, alpha: float) -> np.ndarray:
    """SmoothQuant's s_j = max|x_j|^α / max|W_j|^(1-α), max|x_j| raised to the channels' median
    first; 1 where either is zero (a dead channel). The floor: a channel the samples saw small would
    be multiplied up, and a larger value there on other inputs would set the whole call's step
    (MiniLM, 64 samples: everyday min 0.961 without it against 0.983 unsmoothed)."""
    live = (act_max > 0) & (weight_max > 0)
    s = np.ones_like(act_max, dtype=np.float64)
    if not live.any():
        return s
    a = np.maximum(act_max[live], np.median(act_max[live]))
    s[live] = a ** alpha / weight_max[live] ** (1.0 - alpha)
    return np.clip(s, 1e-4, 1e4)


def fake_input(x: np.ndarray) -> np.ndarray:
    """`x` through dynamic uint8 quantization: one asymmetric scale over the call, 0 exact."""
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    if hi == lo:
        return x
    scale = (hi - lo) / 255.0
    zero = np.round(-lo / scale)
    return (np.clip(np.round(x / scale) + zero, 0, 255) - zero) * scale


def fake_weight(w: np.ndarray, code_max: int) -> np.ndarray:
    """`w` [in, out] through symmetric int8 with one scale per output column."""
    step = np.abs(w).max(axis=0) / code_max
    step[step == 0] = 1.0
    return np.clip(np.round(w / step), -code_max, code_max) * step


def int8_error(batches: list[np.ndarray], w: np.ndarray, s: np.ndarray | None, code_max: int) -> float:
    """‖ŷ − y‖² / ‖y‖² of `x @ w` over the batches, quantized after dividing x's channels by `s`."""
    wq = fake_weight(w if s is None else w * s[:, None], code_max)
    num = den = 0.0
    for x in batches:
        y = x @ w
        y_hat = fake_input(x if s is None else x / s) @ wq
        num += float(np.square(y_hat - y).sum())
        den += float(np.square(y).sum())
    return num / den if den > 0 else 0.0


def best_alpha(batches: list[np.ndarray], w: np.ndarray, act_max: np.ndarray, code_max: int,
               grid: tuple[float, ...] = GRID) -> tuple[float | None, float, float]:
    """(the grid's α with the least error, None when none cuts it by MIN_GAIN; the error without
    smoothing; the error at the α returned)."""
    w_max = np.abs(w).max(axis=1)
    plain = int8_error(batches, w, None, code_max)
    errors = {a: int8_error(batches, w, scales(act_max, w_max, a), code_max) for a in grid}
    alpha = min(errors, key=errors.__getitem__)
    if errors[alpha] > (1.0 - MIN_GAIN) * plain:
        return None, plain, plain
    return alpha, plain, errors[alpha]
