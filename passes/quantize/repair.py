"""One bad node never fails the run: quantize, and when ONNX Runtime's quantizer raises on a node or
its output does not load in ONNX Runtime, keep the offending nodes in float and try again.

The offending nodes are read from the error first: the quantizer names a tensor (`Expected X to be
an initializer`), and ONNX Runtime's loader names a node of the quantized graph whose names derive
from the input's tensors (`X_DequantizeLinear`, `X_quantized`). Those map back to the nodes of the
quantizer's input that read them. When the error names nothing that maps back, half of the
remaining quantizable nodes are kept in float per try (bisection), within `MAX_TRIES`.

Written by hand: ONNX Runtime's quantizers stop at the first failure and offer no recovery.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

MAX_TRIES = 8
_QUOTED = re.compile(r"""["']([^"'\s][^"']*)["']|\bExpected (\S+) to be an initializer""")
_DERIVED = ("_DequantizeLinear", "_QuantizeLinear", "_quantized", "_scale", "_zero_point", "_output_0", "_MatMul")


@dataclass
class Repair:
    """The nodes kept in float to make the quantizer's output build and load, and why."""

    float_nodes: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)


def quantize_with_repair(
    quantize: Callable[[list[str]], None], out: Path, qin: Path, candidates: list[str], load_error: Callable[[Path], str | None],
) -> Repair:
    """Call `quantize(extra_exclude)` until its output at `out` loads; raise the last error when no
    node can be blamed. `candidates` are the node names a quantizer would touch (for bisection)."""
    repair = Repair()
    for _ in range(MAX_TRIES):
        error = _attempt(quantize, repair.float_nodes, out, load_error)
        if error is None:
            return repair
        blamed = [n for n in blame(error, qin) if n not in repair.float_nodes]
        if not blamed:
            blamed = _bisect(candidates, repair.float_nodes)
        if not blamed:
            raise RepairFailed(error)
        repair.float_nodes.extend(blamed)
        repair.reasons.append(f"{', '.join(blamed)}: {error}")
    error = _attempt(quantize, repair.float_nodes, out, load_error)
    if error is not None:
        raise RepairFailed(error)
    return repair


class RepairFailed(Exception):
    """No node could be blamed for the error, or too many tries."""


def _attempt(quantize: Callable[[list[str]], None], exclude: list[str], out: Path,
             load_error: Callable[[Path], str | None]) -> str | None:
    from optimize.errors import OptimizeError

    try:
        quantize(list(exclude))
    except OptimizeError:
        raise  # the tool's own errors (no calibration data, …) are not a node's fault
    except Exception as exc:
        return str(exc).strip() or type(exc).__name__
    return load_error(out)


def blame(error: str, qin: Path) -> list[str]:
    """Nodes of the quantizer's input (any graph) that read a tensor, or carry a name, the error names."""
    import onnx

    from optimize.inspect_onnx import all_graphs

    names = {a or b for a, b in _QUOTED.findall(error)}
    names |= {_strip(n) for n in names}
    model = onnx.load(str(qin), load_external_data=False)
    found: list[str] = []
    for graph in all_graphs(model.graph):
        for node in graph.node:
            if node.name and (node.name in names or any(i in names for i in node.input)) and node.name not in found:
                found.append(node.name)
    return found


def _strip(name: str) -> str:
    changed = True
    while changed:
        changed = False
        for suffix in _DERIVED:
            if name.endswith(suffix):
                name, changed = name[: -len(suffix)], True
    return name


def _bisect(candidates: list[str], excluded: list[str]) -> list[str]:
    left = [n for n in candidates if n not in excluded]
    return left[: max(1, len(left) // 2)] if len(left) > 1 else []
