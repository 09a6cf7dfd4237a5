"""Make a valid ONNX model quantizable before ONNX Runtime's quantizer sees it.

ONNX Runtime's quantizers look weights up only among the initializers of the node's own graph
(`operators/conv.py`, `matmul.py`), so three kinds of valid files crash them or come back broken:

- weights written as `Constant` nodes (the PaddlePaddle exporter writes every weight that way) or
  behind `Identity` / `Cast` → onnx-ir's `LiftConstantsToInitializersPass` and onnxscript's constant
  folding turn them into initializers;
- weights that a node inside an `If` / `Loop` body takes from an outer scope → copied into the
  body that uses them (moved when no other scope uses them). onnx-ir has the opposite pass (lift
  subgraph initializers to the main graph), not this one, hence the few lines here;
- per-channel QDQ on opset < 13 (`DequantizeLinear` has no `axis` before 13) → onnx's version
  converter raises the opset; when it cannot, the caller falls back to per-tensor;
- a `Gemm` bias of shape `[1, N]` (ONNX Runtime's own optimizer writes it when it fuses MatMul + Add
  of a tf2onnx export, e.g. magika's) → `[N]`, the same by broadcasting: the QDQ quantizer's int32
  bias check compares it per output channel as if it were 1-D and raises ("truth value of an
  array ... is ambiguous").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PER_CHANNEL_QDQ_OPSET = 13
FOLD_SIZE_LIMIT = 1 << 26  # elements: fold Cast/Identity/Transpose of any realistic weight


@dataclass
class Prepared:
    """What preparation changed, for the step's metrics and notes."""

    constants_lifted: int = 0
    folded: bool = False
    outer_weights_localized: list[str] = field(default_factory=list)
    gemm_biases_flattened: int = 0
    opset_from: int | None = None
    opset_to: int | None = None
    notes: list[str] = field(default_factory=list)

    def metrics(self) -> dict[str, Any]:
        return {
            "constants_lifted": self.constants_lifted,
            "constant_folding": self.folded,
            "outer_scope_weights_localized": len(self.outer_weights_localized),
            "gemm_biases_flattened": self.gemm_biases_flattened,
            "opset_converted": None if self.opset_to is None else f"{self.opset_from} -> {self.opset_to}",
        }


def default_opset(model: Any) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def prepare(src: Path, dst: Path, *, min_opset: int | None, large: bool) -> Prepared:
    """Write a quantizable equivalent of `src` to `dst` (same outputs on every input)."""
    import onnx
    import onnx_ir as ir

    info = Prepared()
    proto = onnx.load(str(src))
    if min_opset is not None and default_opset(proto) < min_opset:
        proto = _convert_opset(proto, min_opset, info)
    model = ir.from_proto(proto)
    del proto
    info.constants_lifted = _lift_constants(model)
    info.folded = _fold(model, info)
    info.constants_lifted += _lift_constants(model)  # folding leaves its results as Constant nodes
    info.outer_weights_localized = localize_outer_weights(model)
    info.gemm_biases_flattened = flatten_gemm_biases(model)
    if info.outer_weights_localized:
        info.notes.append(
            f"{len(info.outer_weights_localized)} weight(s) used inside If/Loop bodies were given to those bodies "
            "as their own initializers (ONNX Runtime's quantizer looks weights up only in the node's own graph)"
        )
    out = ir.to_proto(model)
    from optimize import onnx_io

    if large:
        onnx.save(out, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=dst.name + ".data")
    else:
        onnx_io.save(out, dst)
    return info


def _convert_opset(proto: Any, target: int, info: Prepared) -> Any:
    from onnx import version_converter

    before = default_opset(proto)
    try:
        converted = version_converter.convert_version(proto, target)
    except Exception as exc:  # the converter lacks an adapter for some op: keep the opset
        info.notes.append(f"could not convert opset {before} to {target} ({str(exc).splitlines()[0]})")
        return proto
    info.opset_from, info.opset_to = before, target
    info.notes.append(
        f"opset {before} converted to {target} with onnx's version converter: per-channel QDQ "
        f"(DequantizeLinear with an axis) needs opset {PER_CHANNEL_QDQ_OPSET}"
    )
    return converted


def _lift_constants(model: Any) -> int:
    from onnx_ir.passes.common import LiftConstantsToInitializersPass

    before = sum(len(g.initializers) for g in model.graphs())
    LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=1)(model)
    return sum(len(g.initializers) for g in model.graphs()) - before


def _fold(model: Any, info: Prepared) -> bool:
    """onnxscript's constant folding (Cast/Identity/Transpose of weights, shape arithmetic)."""
    import logging

    from onnxscript.optimizer import fold_constants

    quiet = logging.getLogger("onnxscript")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        fold_constants(model, input_size_limit=FOLD_SIZE_LIMIT, output_size_limit=FOLD_SIZE_LIMIT)
        return True
    except Exception as exc:  # folding is an aid, not a requirement
        info.notes.append(f"constant folding skipped ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})")
        return False
    finally:
        quiet.setLevel(level)


def flatten_gemm_biases(model: Any) -> int:
    """Give each Gemm whose bias C is a `[1, N]` initializer, read by Gemms only as C, the `[N]` of it."""
    import onnx_ir as ir

    done = 0
    for graph in model.graphs():
        for node in graph:
            bias = node.inputs[2] if node.op_type == "Gemm" and len(node.inputs) > 2 else None
            if bias is None or bias.const_value is None or bias.shape is None or len(bias.shape) != 2:
                continue
            if bias.shape[0] != 1 or any(u.node.op_type != "Gemm" or u.idx != 2 for u in bias.uses()):
                continue
            flat = bias.const_value.numpy().reshape(-1)
            bias.const_value = ir.tensor(flat, name=bias.name)
            bias.shape = ir.Shape(flat.shape)
            done += 1
    return done


def localize_outer_weights(model: Any) -> list[str]:
    """Give every If/Loop/Scan body its own copy of the initializers its nodes read from an outer
    scope (the outer one is removed when nothing else reads it). Returns the names copied."""
    import onnx_ir as ir

    taken = {v.name for g in model.graphs() for v in _graph_values(g)}
    copied: list[str] = []
    for graph in model.graphs():
        if graph is model.graph:
            continue
        local: dict[str, Any] = {}
        for node in ir.traversal.RecursiveGraphIterator(graph):
            if node.graph is not graph:
                continue  # deeper bodies get their own copies in their own turn
            for i, value in enumerate(node.inputs):
                if value is None or not value.is_initializer() or value.graph is graph:
                    continue
                if value.name not in local:
                    name = fresh_name(f"{value.name}.{graph.name or 'body'}", taken)
                    copy = ir.Value(name=name, shape=value.shape, type=value.type, const_value=value.const_value)
                    graph.register_initializer(copy)
                    local[value.name] = copy
                    copied.append(value.name)
                node.replace_input_with(i, local[value.name])
        for outer in {v.name: v for g in model.graphs() for v in g.initializers.values()}.values():
            if outer.graph is not None and not outer.uses() and not outer.is_graph_output() and outer.name in local:
                outer.graph.initializers.pop(outer.name)
    return copied


def _graph_values(graph: Any) -> list[Any]:
    values = list(graph.inputs) + list(graph.initializers.values())
    for node in graph:
        values.extend(node.outputs)
    return values


def fresh_name(base: str, taken: set[str]) -> str:
    """`base`, or `base.k` for the first k not in `taken`; added to `taken`."""
    name, k = base, 1
    while name in taken:
        name, k = f"{base}.{k}", k + 1
    taken.add(name)
    return name
