"""Where a SmoothQuant division (smooth.py) can go without a Mul: into the parameters of the node
that writes the input, when nothing else reads that input.

- a fused Attention (ONNX Runtime's com.microsoft op): attention mixes tokens, never channels, so
  dividing the value projection's columns (the packed weight's and bias's last third) divides its
  output's channels;
- a normalization (LayerNorm, RMSNorm, ONNX Runtime's fused forms): y = γ·x̂ + β, so γ/s and β/s
  give y/s. In a pre-LN model (GPT, LLaMA, ViT) the norm's output feeds only the projections; in a
  post-LN encoder (BERT, MiniLM) it feeds the residual add too, and a Mul stays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from passes.quantize.prepare import fresh_name

# (op, domain) → input indices of the per-channel parameters scaled with the output (scale, bias)
NORMS: dict[tuple[str, str], tuple[int, ...]] = {
    ("LayerNormalization", ""): (1, 2),
    ("RMSNormalization", ""): (1,),
    ("SimplifiedLayerNormalization", ""): (1,),
    ("SkipLayerNormalization", "com.microsoft"): (2, 3),
    ("SkipSimplifiedLayerNormalization", "com.microsoft"): (2,),
    ("EmbedLayerNormalization", "com.microsoft"): (5, 6),
}
ATTENTION = ("Attention", "com.microsoft")


@dataclass
class Fold:
    """A node whose parameters take the division: `params` (input indices), all columns, or the
    last third for a fused attention's values."""

    node: Any
    params: tuple[int, ...]
    values_only: bool


def producer_kind(graph: Any, tensor: str) -> str | None:
    """'norm' or 'attention' when `tensor` is output 0 of such a node, else None."""
    node = _producer(graph, tensor)
    if node is None or node.output[0] != tensor:
        return None
    key = (node.op_type, node.domain or "")
    return "norm" if key in NORMS else "attention" if key == ATTENTION else None


def free_division(graph: Any, tensor: str, readers: set[str], width: int) -> Fold | None:
    """The Fold for `tensor` (its readers the nodes named `readers`, `width` channels), or None
    when a Mul is needed: another node or the graph's output reads it, or the parameters are not
    per-channel initializers of that width."""
    kind = producer_kind(graph, tensor)
    if kind is None or tensor in {o.name for o in graph.output}:
        return None
    if any(tensor in n.input and n.name not in readers for n in graph.node):
        return None
    node = _producer(graph, tensor)
    inits = {t.name: t for t in graph.initializer}
    if kind == "attention":
        if any(a.name == "qkv_hidden_sizes" for a in node.attribute):
            return None  # unequal Q/K/V widths: the value columns are not the last third
        fold, want = Fold(node, (1, 2), True), 3 * width
    else:
        fold, want = Fold(node, NORMS[(node.op_type, node.domain or "")], False), width
    params = [node.input[i] if i < len(node.input) else "" for i in fold.params]
    if not params[0] or any(p and (p not in inits or not inits[p].dims or inits[p].dims[-1] != want) for p in params):
        return None
    return Fold(node, tuple(i for i, p in zip(fold.params, params, strict=True) if p), fold.values_only)


def apply(graph: Any, fold: Fold, inv_s: np.ndarray, taken: set[str]) -> set[str]:
    """Multiply the fold's parameters' (value) columns by `inv_s`; returns the names replaced."""
    from onnx import numpy_helper

    inits = {t.name: t for t in graph.initializer}
    replaced = set()
    for i in fold.params:
        old = fold.node.input[i]
        x = numpy_helper.to_array(inits[old]).astype(np.float32).copy()
        cols = slice(2 * (x.shape[-1] // 3), None) if fold.values_only else slice(None)
        x[..., cols] *= inv_s.astype(np.float32)
        name = fresh_name(f"{old}_smoothed", taken)
        graph.initializer.append(numpy_helper.from_array(x, name))
        fold.node.input[i] = name
        replaced.add(old)
    return replaced


def _producer(graph: Any, tensor: str) -> Any:
    return next((n for n in graph.node if tensor in n.output), None)
