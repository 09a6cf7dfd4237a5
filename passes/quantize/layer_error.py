"""The error each weighted layer adds, read from one run of the float and the quantized model.

The accuracy-aware fallback ranks layers by how much error each adds. Quantizing each layer alone
and checking the whole model (passes/quantize/layer_search.py) is the faithful measure, but it
costs one quantization and one evaluation per layer: over five minutes for the 62 convolutions of
a 736x1088 text detector. This is the cheap ranking used when that scan would not fit its budget:
both models run once on one sample with every weighted layer's input and output exposed as graph
outputs, and a layer's score is the relative error of its output minus that of its input (the
error it adds, not the error it inherits). Tensor names match because ONNX Runtime's QDQ quantizer
keeps the float graph's tensor names and inserts Q/DQ pairs beside them.

Why hand-written: ONNX Runtime's `qdq_loss_debug` compares every tensor of every sample (memory
grows with the model's activations) and ranks nothing; here only the weighted layers' tensors of
one sample are kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def added_errors(
    float_path: Path, quant_path: Path, layers: list[str], sample: dict[str, Any], work: Path, threads: int = 1,
) -> dict[str, float]:
    """Layer name → relative output error minus relative input error (both against the float
    model), measured on `sample` (one batch of inputs). Layers whose tensors the quantized model
    renamed get 0 (no evidence against them)."""
    import onnx

    model = onnx.load(str(float_path), load_external_data=False)
    wanted = set(layers)
    pairs = {n.name: (n.input[0], n.output[0]) for n in model.graph.node if n.name in wanted}
    qmodel = onnx.load(str(quant_path), load_external_data=False)
    produced = {t for n in qmodel.graph.node for t in n.output} | {i.name for i in qmodel.graph.input}
    tensors = sorted({t for pair in pairs.values() for t in pair if t in produced})
    ref = _run_with_outputs(float_path, tensors, sample, work / "float-exposed.onnx", threads)
    got = _run_with_outputs(quant_path, tensors, sample, work / "quantized-exposed.onnx", threads)
    errors = {t: _relative_error(ref[t], got[t]) for t in tensors if t in ref and t in got}
    return {name: max(0.0, errors.get(out, 0.0) - errors.get(inp, 0.0)) if out in errors else 0.0
            for name, (inp, out) in pairs.items()}


def _run_with_outputs(path: Path, tensors: list[str], sample: dict[str, Any], dst: Path, threads: int) -> dict[str, Any]:
    """Run a copy of `path` (written to `dst`, weights as external data so any size fits) with
    `tensors` added as outputs; the copy is removed afterwards."""
    import onnx

    from optimize.runtime import feeds_for, session

    model = onnx.load(str(path))
    have = {o.name for o in model.graph.output}
    for t in tensors:
        if t not in have:
            model.graph.output.append(onnx.ValueInfoProto(name=t))
    data = dst.with_name(dst.name + ".data")
    onnx.save_model(model, str(dst), save_as_external_data=True, location=data.name)
    del model
    try:
        sess = session(dst, threads=threads)
        names = [o.name for o in sess.get_outputs()]
        return dict(zip(names, sess.run(names, feeds_for(sess, sample)), strict=True))
    finally:
        dst.unlink(missing_ok=True)
        data.unlink(missing_ok=True)


def _relative_error(ref: Any, got: Any) -> float:
    import numpy as np

    r = np.asarray(ref, np.float64)
    g = np.asarray(got, np.float64)
    if r.shape != g.shape or not np.isfinite(g).all():
        return float("inf")
    return float(np.linalg.norm(g - r) / (np.linalg.norm(r) + 1e-12))
