"""The post-processing tail: nodes after the last weighted layer on every path to an output.

Static quantization puts Quantize/Dequantize pairs around `Concat`, `Sigmoid`, `Mul`, … too. In a
detector's head that is harmful and buys nothing: YOLOv8's last `Concat` joins box coordinates
(hundreds of pixels) with class scores (0–1) into one tensor with ONE int8 scale, so every score
moved by up to ~2.5 (scores of 1.28 after a sigmoid, measured on a real YOLOv8n), while a cosine
over the whole output still read 0.995 because the boxes dominate it. The tail does no weighted
compute, so keeping it in float costs no integer kernel; NNCF's and Ultralytics' int8 exports keep
detection heads' post-processing in float for the same reason. Written by hand: ONNX Runtime's
quantizer has no notion of it.
"""

from __future__ import annotations

from pathlib import Path

WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm", "Attention", "LSTM", "GRU", "RNN", "Einsum"})


def float_tail(path: Path) -> list[str]:
    """Names of the main graph's nodes from which no weighted op is reachable downstream (nodes
    without a name cannot be excluded from ONNX Runtime's quantizer and are skipped)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(graph.node):
        for name in node.input:
            consumers.setdefault(name, []).append(i)
    tail: set[int] = set()
    for i in range(len(graph.node) - 1, -1, -1):  # ONNX nodes are stored in topological order
        node = graph.node[i]
        if node.op_type in WEIGHTED_OPS or node.op_type in ("If", "Loop", "Scan"):
            continue
        downstream = [j for out in node.output for j in consumers.get(out, [])]
        if all(j in tail for j in downstream):
            tail.add(i)
    if len(tail) == len(graph.node):
        return []  # no weighted op at all: nothing is a "tail" of anything
    return [graph.node[i].name for i in sorted(tail) if graph.node[i].name]
