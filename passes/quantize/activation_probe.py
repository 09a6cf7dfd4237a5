"""Intermediate activations of an ONNX model on the user's data, batch by batch.

Two choices of the quantize pass read activations the quantizer never shows: `per_token: auto`
(token outliers, token_outliers.py) and `smooth_alpha` (per-channel ranges, smooth.py). Both need
the samples the user declared (random probes would not show the outliers real inputs have) and the
values inside the graph, which ONNX Runtime returns only for graph outputs: the probe is a copy of
the model with the wanted tensors added as outputs, written beside it (so external data resolves)
and removed after.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


def batches_of(src: Path, tensors: list[str], feeds: dict[str, np.ndarray], batch: int, tag: str,
               ) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray | None]]:
    """({tensor: value}, attention mask or None) for each batch of `batch` samples of `feeds`."""
    import onnx
    import onnxruntime as ort

    from optimize.probes import slice_samples
    from optimize.runtime import feeds_for

    model = onnx.load(str(src), load_external_data=False)
    have = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None)
                              for t in tensors if t not in have)
    probe = src.with_name(f"{src.stem}.{tag}.onnx")  # beside src: its external data resolves
    onnx.save(model, str(probe))
    try:
        sess = ort.InferenceSession(str(probe), providers=["CPUExecutionProvider"])
        mask_name = next((i.name for i in sess.get_inputs() if "attention_mask" in i.name), None)
        n = max((len(v) for v in feeds.values() if np.ndim(v) > 0), default=1)
        for start in range(0, n, batch):
            feed = feeds_for(sess, slice_samples(feeds, start, start + batch))
            outs = sess.run(tensors, feed)
            yield dict(zip(tensors, (np.asarray(x) for x in outs), strict=True)), (
                feed[mask_name] if mask_name else None)
    finally:
        probe.unlink(missing_ok=True)


def real_rows(x: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """`x` as rows of its last axis, padding rows left out where the mask matches the rows."""
    rows_shape = x.shape[:-1]
    if mask is not None and mask.shape == rows_shape:
        return x[np.asarray(mask, bool)]
    return x.reshape(-1, x.shape[-1])


def batch_rows(x: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """`x` as rows of its last axis as one call of the runtime sees them: padding columns past the
    batch's longest row left out (a user batching to the longest row, or the pipeline's padding cut,
    never computes them), the padding rows of shorter sequences kept (they share the call's range)."""
    if mask is not None and mask.ndim == 2 and x.ndim == 3 and mask.shape == x.shape[:2]:
        real = np.flatnonzero(np.asarray(mask, bool).any(axis=0))
        x = x[:, : real[-1] + 1] if real.size else x[:, :0]
    return x.reshape(-1, x.shape[-1])


def user_samples(ctx: Any, n: int = 64) -> tuple[dict[str, np.ndarray], str] | None:
    """Up to `n` samples of the first declared data set among calibration (which falls back to
    train) and eval, with its name; None when the user declared none."""
    if ctx is None:
        return None
    for role in ("calibration", "eval"):
        ds = ctx.data(role)
        if ds is not None:
            declared = "calibration" if role == "calibration" and ctx.config.data.calibration else (
                "train" if role == "calibration" else role)
            return ds.take(n).inputs, f"data.{declared}"
    return None
