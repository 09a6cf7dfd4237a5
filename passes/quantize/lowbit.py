"""Binary (1-bit) and ternary (2-bit) weights for the quantize pass (`bits: 1` / `bits: 2`).

- **binary** (XNOR-Net): w ≈ α · sign(w), α = mean |w| over the output channel's non-zero weights
  (exact zeros, e.g. pruned ones, stay zero).
- **ternary** (TWN): w ≈ α · t, t ∈ {−1, 0, +1}, t = sign(w) where |w| > Δ, Δ = 0.7 · mean |w| of the
  channel, α = mean |w| over the weights above Δ.

Training (quantization-aware, quantize before distill) uses a straight-through estimator: the
forward pass sees the projected weights, the gradient reaches the float weights unchanged.

Materialization: ONNX Runtime has no 1- or 2-bit type its CPU kernels execute (its smallest is
int4, and only in some kernels), so the codes are stored as int8 {−1, 0, +1} with a float32 scale α
per output channel in a DequantizeLinear weight (QDQ), the layout ONNX Runtime fuses into integer
kernels. The model is first projected onto the grid (a no-op after QAT: the projection is
idempotent), then ONNX Runtime's static QDQ quantizer quantizes it (calibrated uint8/int8
activations, per-channel int8 weights ±127·α/127), and the weights of the projected layers are
rewritten to codes ±1 with scale α, which represent the same values. The logical bits are recorded
in the file's metadata (`optimize.inspect_onnx.LOGICAL_BITS_KEY`), so reports can give both the
logical and the stored bits.

Written by hand: neither torch (`torch.ao.quantization`) nor ONNX Runtime's quantizers offer binary
or ternary weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TERNARY_THRESHOLD = 0.7  # Δ = 0.7 · mean |w| (Li & Liu, Ternary Weight Networks)
LOWBIT_OPS = ("Conv", "Gemm", "MatMul")  # ops whose weight (input 1) is projected
SCHEME_TEXT = {
    1: "binary: α·sign(w), α = mean |w| of the output channel's non-zero weights (XNOR-Net)",
    2: "ternary: α·{−1, 0, +1}, threshold Δ = 0.7·mean |w| per output channel, α = mean |w| above Δ (TWN)",
}


def lowbit_name(bits: int) -> str:
    return {1: "binary", 2: "ternary"}[bits]


# ====================================================================== the projection (numpy / torch)


def project_numpy(w: Any, bits: int, axis: int | None) -> tuple[Any, Any, Any]:
    """(values float32, codes int8, alpha float32) of `w` projected onto the binary/ternary grid.

    `axis` is the output-channel axis (one α per channel), or None for one α per tensor. `alpha` has
    one entry per channel (shape (C,)) or is a scalar array. `values == codes * alpha` exactly.
    """
    import numpy as np

    w64 = np.asarray(w, dtype=np.float32).astype(np.float64)
    moved = w64.reshape(1, -1) if axis is None else np.moveaxis(w64, axis, 0).reshape(w64.shape[axis], -1)
    absw = np.abs(moved)
    if bits == 1:
        mask = absw > 0
    else:
        delta = TERNARY_THRESHOLD * absw.mean(axis=1, keepdims=True)
        mask = absw > delta
    count = mask.sum(axis=1)
    alpha64 = np.where(count > 0, (absw * mask).sum(axis=1) / np.maximum(count, 1), 0.0)
    alpha = alpha64.astype(np.float32)
    codes_flat = (np.sign(moved) * mask).astype(np.int8)
    if axis is None:
        codes = codes_flat.reshape(w64.shape)
        alpha = alpha.reshape(())
        values = codes.astype(np.float32) * alpha
    else:
        moved_shape = (w64.shape[axis],) + tuple(np.delete(np.array(w64.shape), axis))
        codes = np.moveaxis(codes_flat.reshape(moved_shape), 0, axis)
        shape = [1] * w64.ndim
        shape[axis] = -1
        values = codes.astype(np.float32) * alpha.reshape(shape)
    return values.astype(np.float32), codes, alpha


def project_torch(w: Any, bits: int, per_channel: bool) -> Any:
    """`w` projected onto the binary/ternary grid (per output channel = dim 0), no gradient."""
    import torch

    wf = w.detach()
    flat = wf.reshape(wf.shape[0], -1) if per_channel and wf.dim() > 1 else wf.reshape(1, -1)
    absw = flat.abs().double()
    if bits == 1:
        mask = absw > 0
    else:
        mask = absw > TERNARY_THRESHOLD * absw.mean(dim=1, keepdim=True)
    count = mask.sum(dim=1, keepdim=True)
    alpha = torch.where(count > 0, (absw * mask).sum(dim=1, keepdim=True) / count.clamp(min=1), 0.0).float()
    codes = torch.sign(flat.float()) * mask
    return (codes * alpha).reshape(wf.shape).to(w.dtype)


def _lowbit_class() -> type:
    """The parametrization module, built on first use so importing this file does not import torch."""
    cls = globals().get("_LOWBIT_FAKE_QUANT")
    if cls is not None:
        return cls
    import torch

    class LowBitWeightFakeQuant(torch.nn.Module):
        """Binary/ternary weight fake quantization with a straight-through gradient."""

        def __init__(self, bits: int, per_channel: bool) -> None:
            super().__init__()
            self.bits = int(bits)
            self.per_channel = bool(per_channel)

        def forward(self, w: torch.Tensor) -> torch.Tensor:
            # q + (w - w.detach()): exactly q in value (w + (q - w).detach() is off by an ulp at times, and
            # finalized weights must lie on the grid), gradient 1 to w (straight-through)
            return project_torch(w, self.bits, self.per_channel) + (w - w.detach())

        def extra_repr(self) -> str:
            return f"{lowbit_name(self.bits)} {'per-channel' if self.per_channel else 'per-tensor'}"

    LowBitWeightFakeQuant.__module__ = __name__
    LowBitWeightFakeQuant.__qualname__ = "LowBitWeightFakeQuant"
    globals()["_LOWBIT_FAKE_QUANT"] = LowBitWeightFakeQuant
    return LowBitWeightFakeQuant


def fake_quant_module(bits: int, per_channel: bool) -> Any:
    return _lowbit_class()(bits, per_channel)


# ====================================================================== ONNX: project, then rewrite codes


@dataclass
class Projected:
    """One weight initializer projected onto the grid, and the weighted nodes that use it."""

    name: str
    axis: int | None
    codes: Any  # int8
    alpha: Any  # float32, (C,) or ()
    nodes: list[str]


def _channel_axis(node: Any, ndim: int) -> int | None:
    """Output-channel axis of input 1 of a Conv/Gemm/MatMul (ONNX Runtime's per-channel axis)."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    if node.op_type == "MatMul" and ndim == 2:
        return 1
    return None


def project_model(
    src: Path, dst: Path, bits: int, per_channel: bool, op_types: list[str] | None, exclude: list[str],
    include: list[str] | None,
) -> dict[str, Projected]:
    """Write `src` with the weights of eligible layers projected onto the grid; returns them by name.

    Eligible: Conv/Gemm/MatMul (and in `op_types` when given) whose input 1 is a float32
    initializer of the main graph (static quantization leaves subgraphs in float) read directly (2-D for MatMul), the node named, not excluded, in `include` when given,
    and every other weighted use of the same tensor eligible with the same axis.
    """
    import onnx
    from onnx import TensorProto, numpy_helper

    from optimize import onnx_io
    from optimize.inspect_onnx import iter_weight_uses

    model = onnx.load(str(src))
    wanted = set(op_types) if op_types is not None else set(LOWBIT_OPS)
    uses: dict[str, list[Any]] = {}
    for use in iter_weight_uses(model):
        uses.setdefault(use.key, []).append(use)
    projected: dict[str, Projected] = {}
    for key, group in uses.items():
        first = group[0]
        tensor = first.tensor
        if first.graph is not model.graph or first.constant_node is not None or tensor.data_type != TensorProto.FLOAT or len(tensor.dims) < 2:
            continue
        axes = set()
        ok = True
        for u in group:
            n = u.node
            if (
                n.op_type not in LOWBIT_OPS or n.op_type not in wanted or u.input_index != 1 or u.via
                or not n.name or n.name in exclude or (include is not None and n.name not in include)
            ):
                ok = False
                break
            axes.add(_channel_axis(n, len(tensor.dims)))
        if not ok or len(axes) != 1 or None in axes:
            continue
        axis = axes.pop() if per_channel else None
        values, codes, alpha = project_numpy(numpy_helper.to_array(tensor), bits, axis)
        tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
        projected[key] = Projected(key, axis, codes, alpha, [u.node.name for u in group])
    onnx_io.save(model, dst)  # weights go to external data when the model is large
    return projected


def materialize_codes(path: Path, projected: dict[str, Projected], bits: int) -> dict[str, Any]:
    """Rewrite the QDQ weights ONNX Runtime made from projected weights as int8 codes {−1, 0, 1}
    with scale α, and record their logical bits in the file's metadata. Returns what was done."""
    import numpy as np
    import onnx
    from onnx import TensorProto, numpy_helper

    from optimize import onnx_io
    from optimize.inspect_onnx import iter_weight_uses

    model = onnx.load(str(path))
    by_node = {node: p for p in projected.values() for node in p.nodes}
    inits = {i.name: i for i in model.graph.initializer}
    consumers: dict[str, int] = {}
    producers = {o: n for n in model.graph.node for o in n.output}
    for n in model.graph.node:
        for name in n.input:
            consumers[name] = consumers.get(name, 0) + 1
    logical: dict[str, int] = {}
    done: set[str] = set()
    rewritten: set[str] = set()
    mismatched: list[str] = []
    for use in iter_weight_uses(model):
        p = by_node.get(use.node.name)
        if p is None or use.input_index != 1 or use.key in done:
            continue
        dq = use.via[-1] if use.via else None
        tensor = use.tensor
        if dq is None or dq.op_type != "DequantizeLinear" or tensor.data_type != TensorProto.INT8 \
                or tuple(tensor.dims) != p.codes.shape or dq.input[1] not in inits:
            continue  # not quantized by ONNX Runtime (left float, already projected)
        scale = inits[dq.input[1]]
        zp = inits.get(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else None
        s = numpy_helper.to_array(scale)
        dq_axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        dq_axis = dq_axis % len(tensor.dims)
        same_layout = (p.axis is None and s.size == 1) or (p.axis is not None and s.ndim == 1 and dq_axis == p.axis
                                                              and s.size == p.codes.shape[p.axis])
        shared = consumers.get(dq.input[1], 0) > 1 or (zp is not None and consumers.get(zp.name, 0) > 1)
        q = numpy_helper.to_array(tensor)
        if not same_layout or shared or not np.array_equal(np.sign(q), p.codes):
            mismatched.append(use.node.name)
            continue
        alpha = np.where(p.alpha > 0, p.alpha, np.float32(1.0)).astype(np.float32).reshape(s.shape)
        tensor.CopyFrom(numpy_helper.from_array(p.codes.astype(np.int8), tensor.name))
        scale.CopyFrom(numpy_helper.from_array(alpha, scale.name))
        if zp is not None:
            zp.CopyFrom(numpy_helper.from_array(np.zeros(s.shape, dtype=np.int8), zp.name))
        for node in model.graph.node:
            if node.name in p.nodes and node.op_type in ("Conv", "Gemm"):
                _requantize_bias(node, producers, inits, consumers, alpha)
        logical[tensor.name] = bits
        done.add(use.key)
        rewritten.add(p.name)
    set_logical_bits(model, logical)
    onnx_io.save(model, path)
    left_float = sorted(n for p in projected.values() if p.name not in rewritten for n in p.nodes
                        if n not in mismatched)
    return {"codes": logical, "left_float": left_float, "mismatched": sorted(set(mismatched))}


def _requantize_bias(node: Any, producers: dict[str, Any], inits: dict[str, Any], consumers: dict[str, int],
                     alpha: Any) -> None:
    """Re-express a Conv/Gemm's int32 QDQ bias in units of input scale × α.

    ONNX Runtime's integer kernels add the int32 bias to the accumulator as it is, assuming its scale
    is input scale × weight scale (× beta for Gemm); the weight scale changed from α/127 to α, so the
    bias must follow or it would count 127 times too much."""
    import numpy as np
    from onnx import TensorProto, numpy_helper

    if len(node.input) < 3 or not node.input[2]:
        return
    bias_dq = producers.get(node.input[2])
    x_dq = producers.get(node.input[0])
    if bias_dq is None or bias_dq.op_type != "DequantizeLinear" or x_dq is None or x_dq.op_type != "DequantizeLinear":
        return
    q_init, s_init = inits.get(bias_dq.input[0]), inits.get(bias_dq.input[1])
    x_scale = inits.get(x_dq.input[1])
    if q_init is None or s_init is None or x_scale is None or q_init.data_type != TensorProto.INT32:
        return
    if consumers.get(q_init.name, 0) > 1 or consumers.get(s_init.name, 0) > 1:
        return
    beta = next((a.f for a in node.attribute if a.name == "beta"), 1.0) if node.op_type == "Gemm" else 1.0
    old_scale = numpy_helper.to_array(s_init).astype(np.float64)
    bias = numpy_helper.to_array(q_init).astype(np.float64) * old_scale  # the float bias ORT quantized
    new_scale = (numpy_helper.to_array(x_scale).astype(np.float32) * alpha.astype(np.float32)
                 * np.float32(beta)).astype(np.float32).reshape(old_scale.shape)
    new_scale = np.where(new_scale == 0, np.float32(1.0), new_scale).astype(np.float32)
    info = np.iinfo(np.int32)
    q = np.clip(np.round(bias / new_scale.astype(np.float64)), info.min, info.max).astype(np.int32)
    q_init.CopyFrom(numpy_helper.from_array(q, q_init.name))
    s_init.CopyFrom(numpy_helper.from_array(new_scale, s_init.name))


def set_logical_bits(model: Any, logical: dict[str, int]) -> None:
    """Set (or remove, when empty) the logical-bits metadata entry of an ONNX ModelProto."""
    from optimize.inspect_onnx import LOGICAL_BITS_KEY

    keep = [p for p in model.metadata_props if p.key != LOGICAL_BITS_KEY]
    del model.metadata_props[:]
    for p in keep:
        model.metadata_props.add(key=p.key, value=p.value)
    if logical:
        model.metadata_props.add(key=LOGICAL_BITS_KEY, value=json.dumps(logical, sort_keys=True))
