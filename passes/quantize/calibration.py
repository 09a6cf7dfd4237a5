"""Calibration feeds for ONNX Runtime's static quantizer: small batches, ranges merged batch by batch.

ONNX Runtime's strided calibration (`CalibStridedMinMax`) asks the reader for `__len__` and
`set_range`, so ranges (and the histograms of entropy/percentile) are computed and merged chunk by
chunk and memory stays bounded. ONNX Runtime's own `CalibMaxIntermediateOutputs` is not used: it
discards the batches collected before each flush, so ranges would come from the last batches only.
"""

from __future__ import annotations

from typing import Any

CALIBRATION_BATCH = 16  # samples per calibration feed


class CalibrationReader:
    """Feeds calibration samples in small batches; supports ONNX Runtime's strided calibration
    (`__len__` / `set_range`), so ranges are computed and merged chunk by chunk."""

    def __init__(self, batches: list[dict[str, Any]], progress: Any = None, key: str = "") -> None:
        self.batches = batches
        self.progress = progress
        self.key = key
        self.start, self.end = 0, len(batches)
        self.pos = 0

    def get_next(self) -> dict[str, Any] | None:
        if self.pos >= self.end:
            return None
        batch = self.batches[self.pos]
        self.pos += 1
        if self.progress is not None:
            self.progress.advance(self.key)
        return batch

    def __len__(self) -> int:
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.start, self.end = start_index, min(end_index, len(self.batches))
        self.pos = start_index

    def rewind(self) -> None:
        self.start, self.end, self.pos = 0, len(self.batches), 0


def calibration_feed(path: Any, ctx: Any, n: int) -> tuple[Any, int, str]:
    """(batches, samples used, source) for calibrating `path`: the declared data, or random inputs from
    the input spec generated one batch at a time (memory independent of `n`). Batches of large samples
    are smaller (optimize.probes.bounded_batch): ONNX Runtime's calibrator keeps every activation of a
    batch at once."""
    import numpy as np

    from optimize.probes import (
        RANDOM_IDS_SOURCE,
        RANDOM_SOURCE,
        bounded_batch,
        random_batches,
        token_id_inputs,
    )

    axes = {s.name: s.batch_axis for s in ctx.inputs if s.batch_axis}
    if ctx.data("calibration") is not None:
        samples, source = ctx.sample_inputs("calibration", n)
        batches, used = calibration_batches(path, samples, bounded_batch(samples, CALIBRATION_BATCH))
        return ModelLayout(batches, axes), used, source
    ctx.resolve_shapes_from_data()
    one = {s.name: np.empty(s.concrete_shape(1), dtype=np.uint8) for s in ctx.inputs}  # shapes only
    batches = random_batches(list(ctx.inputs), n, bounded_batch(one, CALIBRATION_BATCH), ctx.seed)
    source = RANDOM_IDS_SOURCE if token_id_inputs(list(ctx.inputs)) else RANDOM_SOURCE
    return ModelLayout(batches, axes), min(n, len(batches) * batches.batch), source


class ModelLayout:
    """Sample-major batches as the model takes them: an input batched on axis k (an RNN state
    `[2, batch, 128]`, TensorSpec.batch_axis) gets its sample axis moved there for ONNX Runtime."""

    def __init__(self, batches: Any, axes: dict[str, int]) -> None:
        from optimize.probes import sample_count

        self.batches, self.axes = batches, axes
        self.batch = getattr(batches, "batch", None) or (sample_count(batches[0]) if len(batches) else None)

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: Any) -> Any:
        from optimize.runtime import to_model_layout

        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return {k: to_model_layout(v, self.axes.get(k, 0)) for k, v in self.batches[i].items()}


def model_inputs(path: Any) -> list[tuple[str, Any, int | None, int]]:
    """(name, numpy dtype, fixed first dim or None, rank) of the graph inputs that are not initializers."""
    import onnx
    from onnx import helper

    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    out = []
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        tt = inp.type.tensor_type
        dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type) if tt.elem_type else None
        dims = list(tt.shape.dim)
        fixed = int(dims[0].dim_value) if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0 else None
        out.append((inp.name, dtype, fixed, len(dims)))
    return out


def calibration_batches(path: Any, samples: dict[str, Any], batch: int) -> tuple[list[dict[str, Any]], int]:
    """Feeds of `batch` samples (the file's fixed batch when it has one). A 0-d input is not batched:
    every feed gets its one value (the first sample's when the data holds one per sample)."""
    import numpy as np

    from optimize.errors import DataError

    inputs = model_inputs(path)
    missing = [name for name, *_ in inputs if name not in samples]
    if missing:
        raise DataError(
            f"calibration data has no arrays for model inputs {missing} (it has {sorted(samples)})"
        )
    scalars = {name: _scalar(samples[name]) for name, _, _, rank in inputs if rank == 0}
    batched = [(name, dtype, fixed) for name, dtype, fixed, rank in inputs if rank != 0]
    n = min((len(samples[name]) for name, _, _ in batched), default=1 if scalars else 0)
    fixed = {f for _, _, f in batched if f is not None}
    if fixed:
        batch = min(fixed)
    batches = []
    for start in range(0, n - batch + 1 if fixed else n, batch):
        feed = {name: np.asarray(value) for name, value in scalars.items()}
        for name, _, _ in batched:
            feed[name] = samples[name][start : start + batch]
        for name, dtype, *_ in inputs:
            if dtype is not None and feed[name].dtype != dtype:
                feed[name] = feed[name].astype(dtype)
        batches.append(feed)
    used = min(n, len(batches) * batch) if batched else len(batches)
    return batches, used


def _scalar(arr: Any) -> Any:
    import numpy as np

    a = np.asarray(arr)
    return a if a.ndim == 0 else a.reshape(-1)[0]
