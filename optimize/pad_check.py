"""The check before the padding cut is kept (optimize/pad_trim.py): does the model read its padding?

The uncut and the cut file run the eval batch with `EXTRA` more masked columns; every output row
must agree within `TOL` (relative L2). Float rounding passes; a model that reads its padding (pooling
over every column, a mask it ignores) does not. A graph that quantizes activations per call moves
with its pad rows for another reason: the per-call scale is the largest value of the whole tensor,
pad rows included (all-MiniLM-L6-v2's int8 embeddings moved by up to 15% of their norm between 136
and 47 columns). So such a graph is checked as a twin with those scales held: every
`DynamicQuantizeLinear` becomes a `QuantizeLinear` at the scale and zero point it computed on the
padded batch, and every `DynamicQuantizeMatMul` (whose scale cannot be read out) a float MatMul by its
dequantized weights; then only what the model reads can move its outputs. Both files run without
ONNX Runtime's graph optimizations: it fuses the two differently (the cut graph no longer states the
sequence length, so e.g. SkipLayerNormalization is not fused there), and its int8 kernels for the
fused and unfused forms differ by more than the tolerance (MiniLM with per-token scales: 4% of a
row's norm; each as close to the float model as the other).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

EXTRA = 8  # masked columns added to the eval batch: something to cut even where it has none
TOL = 1e-4  # relative L2 error of an output row: float rounding passes, reading the padding does not
_PREFIX = "pad_check"


def padded(inputs: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
    """`inputs` with EXTRA more columns, masked (zeros: id 0, segment 0, mask 0), on each of `names`."""
    return {k: np.concatenate([v, np.zeros((v.shape[0], EXTRA), v.dtype)], axis=1) if k in names else v
            for k, v in inputs.items()}


def compare(plain: Path, cut: Path, feeds: dict[str, np.ndarray], threads: int) -> dict[str, Any]:
    """The two files' outputs on `feeds`: {"difference": the largest relative L2 error of a row of any
    output (inf where integer outputs differ), "tolerance", "passed"}; outputs of other shapes fail."""
    from optimize.runtime import feeds_for, session

    outs = []
    for path in (plain, cut):  # as written: the runtime fuses the two differently (the cut hides shapes)
        sess = session(path, threads, optimize_graph=False)
        outs.append(sess.run(None, feeds_for(sess, feeds)))
    diff = 0.0
    for a, b in zip(*outs, strict=True):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            return {"difference": None, "tolerance": TOL, "passed": False, "shapes": [list(a.shape), list(b.shape)]}
        if a.size and np.issubdtype(a.dtype, np.floating):
            diff = max(diff, _row_error(a, b))
        elif not np.array_equal(a, b):
            diff = float("inf")
    return {"difference": diff, "tolerance": TOL, "passed": diff <= TOL}


def _row_error(a: np.ndarray, b: np.ndarray) -> float:
    """The largest relative L2 error of a row (first axis) of `b` against `a`."""
    a2, b2 = a.reshape(a.shape[0], -1).astype(np.float64), b.reshape(b.shape[0], -1).astype(np.float64)
    norms = np.maximum(np.linalg.norm(a2, axis=1), 1e-30)
    return float((np.linalg.norm(a2 - b2, axis=1) / norms).max())


def held_scales(src: Path, feeds: dict[str, np.ndarray], threads: int, scratch: Path) -> Path | None:
    """`src`'s twin with its per-call quantizers held (see the module's docstring), written to
    `scratch`; None when `src` has none. Raises ValueError on one this cannot hold."""
    from optimize import onnx_io

    model = onnx_io.load(src, load_external_data=False)
    ops = {n.op_type for n in model.graph.node}
    if "DynamicQuantizeLSTM" in ops:
        raise ValueError("a DynamicQuantizeLSTM cannot be held at fixed scales")
    if not ops & {"DynamicQuantizeLinear", "DynamicQuantizeMatMul"}:
        return None
    values = _scales(src, model, feeds, threads, scratch / "scales")
    model = onnx_io.load(src, load_external_data=False)
    nodes = []
    for i, n in enumerate(model.graph.node):
        if n.op_type == "DynamicQuantizeLinear":
            nodes.append(_held_quantize(model, n, i, values))
        elif n.op_type == "DynamicQuantizeMatMul":
            nodes += _float_matmul(n, i)
        else:
            nodes.append(n)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx_io.save_streaming(model, scratch / "held" / "model.onnx", Path(src).parent)
    return scratch / "held" / "model.onnx"


def _scales(src: Path, model: Any, feeds: dict[str, np.ndarray], threads: int, folder: Path) -> dict[str, np.ndarray]:
    """{name: value} of every DynamicQuantizeLinear's scale and zero point on `feeds` (a copy of
    `model` returning those only, written to `folder`)."""
    from onnx import helper

    from optimize import onnx_io
    from optimize.runtime import feeds_for, session

    wanted = [x for n in model.graph.node if n.op_type == "DynamicQuantizeLinear" for x in n.output[1:] if x]
    if not wanted:
        return {}
    del model.graph.output[:]
    model.graph.output.extend(helper.make_empty_tensor_value_info(x) for x in wanted)
    onnx_io.save_streaming(model, folder / "model.onnx", Path(src).parent)
    sess = session(folder / "model.onnx", threads)
    return dict(zip(wanted, sess.run(None, feeds_for(sess, feeds)), strict=True))


def _held_quantize(model: Any, n: Any, i: int, values: dict[str, np.ndarray]) -> Any:
    """A QuantizeLinear at the scale and zero point `n` (a DynamicQuantizeLinear) computed."""
    from onnx import helper, numpy_helper

    pair = []
    for k, x in enumerate(n.output[1:3], start=1):
        name = x or f"{_PREFIX}_{i}_{k}"
        value = values.get(x)
        if value is None:  # an output nothing reads: any value, the node needs the input
            value = np.array(1.0, np.float32) if k == 1 else np.array(0, np.uint8)
        model.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
        pair.append(name)
    return helper.make_node("QuantizeLinear", [n.input[0], *pair], [n.output[0]], name=n.name)


def _float_matmul(n: Any, i: int) -> list[Any]:
    """`n` (a DynamicQuantizeMatMul: A, B, b_scale, b_zero_point?, bias?) as a float MatMul of A by
    B dequantized (per column when its scale is a vector), plus the bias."""
    from onnx import helper

    ins = list(n.input) + [""] * (5 - len(n.input))
    p = f"{_PREFIX}_{i}"
    deq = [ins[1], ins[2]] + ([ins[3]] if ins[3] else [])
    nodes = [helper.make_node("DequantizeLinear", deq, [f"{p}_b"], name=f"{p}_b", axis=1),
             helper.make_node("MatMul", [ins[0], f"{p}_b"], [f"{p}_y" if ins[4] else n.output[0]], name=f"{p}_mm")]
    if ins[4]:
        nodes.append(helper.make_node("Add", [f"{p}_y", ins[4]], [n.output[0]], name=f"{p}_bias"))
    return nodes
