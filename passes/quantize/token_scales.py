"""`per_token` in dynamic mode: chosen MatMuls quantize their input at one scale per token.

ONNX Runtime's `quantize_dynamic` gives each MatMul's input one scale per call, so the largest
value of any token sets the step for every token. After an MLP's activation (GELU) a few tokens
hold outliers and the rest lose resolution. Its quantizer has no per-token option, so the chosen
MatMuls are rewritten here first, with the kernel decoders already use (prompt_int8.int8_nodes: a
DynamicQuantizeMatMul on the input divided by each row's max |x|, multiplied back after), and
`quantize_dynamic` then takes the MatMuls left.

Measured on the real all-MiniLM-L6-v2 (embedding cosine to the FP32 model, mean / min on 300
held-out docstring sentences; speed against all per-call at batch 8 × 128; AMD EPYC family 26 (Zen 5)
with AVX-512 VNNI, 2 threads; bench/results-prune-kd.md): all per-call 0.9929 / 0.9844; `mlp` (the six
FFN output projections) 0.9957 / 0.9917 at 0.953x [0.949, 0.960]. Each row's scale costs passes over
the projection's input: 0.883x with Abs and a Div per row, 0.953x since the Abs is skipped where
the graph proves the activation's floor (activation_floor.py) and the Div is a multiply by the
row's reciprocal. `all` read 0.9977 / 0.9949 at 0.820x (bench/token_scales_bench.py, before both).
An earlier 1.008x for `mlp` was measured against a per-call graph in which ONNX Runtime fused the
FFNs' residual adds into its slow SkipLayerNormalization kernel, which this rewrite happens to
prevent; the pipeline now avoids that fusion itself (optimize/skip_layernorm.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def reads_activation(x: str, producers: dict[str, Any], constants: set[str]) -> bool:
    """Whether `x` is an activation's output: an activation op (Gelu, Relu, …), or elementwise ops
    within two steps of one (GELU spelled out as x · (1 + erf(x / √2)) · 0.5, SwiGLU's silu(gate) · up),
    after at most one scale by a constant. A norm's output is not (its last step is x · γ, and
    before it a Div or rsqrt, no activation)."""
    node = producers.get(x)
    if node is not None and node.op_type in ("Mul", "Div") and len(node.input) == 2 and node.input[1] in constants:
        node = producers.get(node.input[0])  # the constant scale after the activation
    return node is not None and _activation_within(node, producers, constants, 2)


def _activation_within(node: Any, producers: dict[str, Any], constants: set[str], depth: int) -> bool:
    from passes.quantize.prompt_int8 import ACTIVATIONS

    if node.op_type in ACTIVATIONS:
        return True
    if depth == 0 or node.op_type not in ("Mul", "Add", "Div"):
        return False
    return any(_activation_within(producers[i], producers, constants, depth - 1)
               for i in node.input if i not in constants and i in producers)


def chosen_matmuls(graph: Any, scope: str, include: list[str] | None, exclude: list[str]) -> set[str]:
    """Names of the MatMuls by a 2-D float initializer to scale per token: every one (`all`) or
    those whose input is an activation's output (`mlp`, `reads_activation`), within `include` and
    not in `exclude`."""
    inits = {t.name: t for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    constants = set(inits) | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    chosen = set()
    for node in graph.node:
        w = inits.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if w is None or len(w.dims) != 2 or w.data_type != 1 or node.name in exclude:
            continue
        if include is not None and node.name not in include:
            continue
        if scope == "all" or reads_activation(node.input[0], producers, constants):
            chosen.add(node.name)
    return chosen


def scale_per_token(src: Path, dst: Path, scope: str, *, code_max: int, per_channel: bool,
                    include: list[str] | None, exclude: list[str]) -> int:
    """Write `src` to `dst` with the `scope` MatMuls as per-token DynamicQuantizeMatMul (weights
    symmetric within ±`code_max`); returns how many (0: nothing chosen, nothing written). Unnamed
    nodes are named first (the choice is by name)."""
    import onnx

    from passes.quantize.int4 import save
    from passes.quantize.prompt_int8 import rewrite_matmuls

    model = onnx.load(str(src))
    graph = model.graph
    _name_nodes(graph)
    chosen = chosen_matmuls(graph, scope, include, exclude)
    if not chosen:
        return 0
    others = {n.name for n in graph.node if n.name not in chosen}
    rewrite_matmuls(model, others, code_max=code_max, per_channel=per_channel, tag="tok")
    save(model, dst)
    return len(chosen)


def _name_nodes(graph: Any) -> None:
    """Unnamed nodes named by position (the choice is by name; the same names on every load)."""
    for i, node in enumerate(graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}_token_scales"


def candidate_inputs(src: Path, scope: str, include: list[str] | None, exclude: list[str]) -> dict[str, str]:
    """{name: input tensor} of the MatMuls `scale_per_token` would choose in `src` for `scope`."""
    import onnx

    graph = onnx.load(str(src), load_external_data=False).graph
    _name_nodes(graph)
    chosen = chosen_matmuls(graph, scope, include, exclude)
    return {n.name: n.input[0] for n in graph.node if n.name in chosen}
