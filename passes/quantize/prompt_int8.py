"""The prompt path's body as 8-bit weights with int8 activations (`prefill: int8_weights`).

Why: on a 128-token prompt the 4-bit kernels cannot beat FP32's SGEMM on a CPU without int8 dot
products: at float activations ONNX Runtime dequantizes every weight block per call (SmolLM2's body
172 ms per prompt against SGEMM's 170, AMD EPYC AVX2, 2 threads), at int8 activations its 4-bit
kernel runs 190 ms. Its 8-bit `DynamicQuantizeMatMul` (per-column int8 weights, activations
quantized per call) ran the same MatMuls in 100 ms (1.7x SGEMM). So the prompt path may hold the
body a second time at 8 bits: each 4-bit node's own weights, dequantized (the folded zero-point
correction summed back into its K rows, so the prompt path needs no block sums), requantized per
output column — the prompt path computes the int4 model's weights, not the float model's. 7-bit
codes (±63): AVX2's u8 × s8 multiply-add saturates 16-bit pair sums past that (the reason ONNX
Runtime's quantizer has `reduce_range`), and the file may run on such a CPU (8-bit codes took
SmolLM2's prompt-path perplexity from 23.6 to 5.5 million).

The kernel quantizes its input with one scale per call, and a whole prompt holds tokens far
larger than the rest (SmolLM2's down projections: one token's largest value 482 against a median
token's 37), so each token is first divided by its own largest magnitude (4 small ops per
distinct input) and each product multiplied back: SmolLM2's prompt-path perplexity ratio with
every body MatMul at 8 bits was 1.65 quantized per call, 1.014 per token (1,024 tokens of held-out
text), and its 128-token prefill 1.37x of the FP32 TorchScript export's against 0.97x with the
4-bit kernels at float activations (one interleaved run, 12 rounds).

The MLPs' inner projections (down_proj: input silu(gate) · up, or an activation's output) keep the
4-bit kernels at float activations: their inputs carry channels 10-100x the median even within a
token, and on 2,048 tokens of the GPL-3 text the perplexity ratio was 1.050 with them at 8 bits,
1.026 without (at 8 bits every other MatMul: q/k/v 0.015 of the 0.050, the down projections
0.023); prefill 1.18x against 1.27x in one interleaved run.

Written by hand: no library converts MatMulNBits blocks to another kernel's layout.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from passes.quantize.activation_floor import constant_scalars, floor_of

CODE_MAX = 63  # 7-bit codes: no 16-bit saturation in AVX2's u8 × s8 pair sums


def dense_weight(node: Any, inits: dict[str, Any]) -> Any:
    """The K × N float weight a MatMulNBits node computes with (codes − zero point) × scale."""
    import numpy as np
    from onnx import numpy_helper

    attrs = {a.name: a.i for a in node.attribute}
    k, n, bits, bs = attrs["K"], attrs["N"], attrs.get("bits", 4), attrs["block_size"]
    blocks = -(-k // bs)
    raw = numpy_helper.to_array(inits[node.input[1]]).reshape(n, blocks, -1)
    codes = np.stack([raw & 15, raw >> 4], -1).reshape(n, blocks, bs) if bits == 4 else raw.reshape(n, blocks, bs)
    scale = numpy_helper.to_array(inits[node.input[2]]).astype(np.float64).reshape(n, blocks)
    zp = _zero_points(node, inits, n, blocks, bits)
    w = (codes.astype(np.float64) - zp[..., None]) * scale[..., None]
    return w.reshape(n, blocks * bs)[:, :k].T


def _zero_points(node: Any, inits: dict[str, Any], n: int, blocks: int, bits: int) -> Any:
    import numpy as np
    from onnx import numpy_helper

    name = node.input[3] if len(node.input) > 3 else ""
    if not name:
        return np.full((n, blocks), 2 ** (bits - 1), np.float64)
    zp = numpy_helper.to_array(inits[name])
    if zp.dtype != np.uint8:  # float zero points, one per block
        return zp.astype(np.float64).reshape(n, blocks)
    if bits == 8:
        return zp.astype(np.float64).reshape(n, blocks)
    packed = zp.reshape(n, -1)
    return np.stack([packed & 15, packed >> 4], -1).reshape(n, -1)[:, :blocks].astype(np.float64)


def _folded_input(node: Any, producers: dict[str, Any], k_aug: int, bs: int) -> tuple[str, int] | None:
    """(x, K) when the node reads Concat(x, x·E, x·E/16) (or Concat(x, x·[E | E/16]) where x's rank
    was unknown), the folded correction of passes/quantize/int4.py (`_fold`: K_aug = K + 2·K/bs),
    else None."""
    concat = producers.get(node.input[0])
    if concat is None or concat.op_type != "Concat" or len(concat.input) not in (2, 3) or not concat.output[0].endswith("_xaug"):
        return None
    k, rest = divmod(k_aug * bs, bs + 2)
    return (concat.input[0], k) if rest == 0 and k % bs == 0 else None


def head_input(node: Any, nodes: list[Any]) -> str:
    """The tensor a MatMulNBits node multiplies, before a folded correction widened it."""
    attrs = {a.name: a.i for a in node.attribute}
    folded = _folded_input(node, {o: n for n in nodes for o in n.output}, attrs["K"], attrs["block_size"])
    return folded[0] if folded is not None else node.input[0]


def _unfold(w: Any, k: int, bs: int) -> Any:
    """The K × N weight x itself meets: rows k… hold the correction against block sums and block
    sums / 16, and each block sum is that block's rows of x added up."""
    import numpy as np

    blocks = k // bs
    corr = w[k:k + blocks] + w[k + blocks:k + 2 * blocks] / 16
    return w[:k] + np.repeat(corr, bs, axis=0)


TINY = 1e-12  # the smallest row scale: an all-zero row (padding) divides by this, not by 0


class _RowScales:
    """x / max|x| per row (token) and that max, computed once per input: the kernel then quantizes
    every token at its own scale (a 1-per-call scale let one large token flatten the rest). The
    division is a multiply by the row's reciprocal (a [rows, 1] tensor), and where the graph proves
    x ≥ −b (activation_floor) the max is max(max x, b), without a pass for |x|."""

    def __init__(self, opset: int, floor_of: Callable[[str], float | None] = lambda x: None) -> None:
        self.opset, self.floor_of, self.done, self.added = opset, floor_of, {}, []

    def of(self, x: str, out: list[Any]) -> tuple[str, str]:
        import numpy as np
        from onnx import helper, numpy_helper

        if x in self.done:
            return self.done[x]
        base = f"{x}_rows"
        floor = self.floor_of(x)
        magnitude = x if floor is not None else f"{base}_abs"
        reduce = (helper.make_node("ReduceMax", [magnitude, "prompt_rows_axis"], [f"{base}_max"], keepdims=1,
                                   name=f"{base}_max")
                  if self.opset >= 18 else
                  helper.make_node("ReduceMax", [magnitude], [f"{base}_max"], axes=[-1], keepdims=1,
                                   name=f"{base}_max"))
        if self.opset >= 18 and not any(t.name == "prompt_rows_axis" for t in self.added):
            self.added.append(numpy_helper.from_array(np.array([-1], np.int64), "prompt_rows_axis"))
        least = "prompt_rows_tiny"
        if floor is not None and floor > TINY:
            least = f"prompt_rows_floor_{x}"
            self.added.append(numpy_helper.from_array(np.array(floor, np.float32), least))
        elif not any(t.name == least for t in self.added):
            self.added.append(numpy_helper.from_array(np.array(TINY, np.float32), least))
        if floor is None:
            out.append(helper.make_node("Abs", [x], [f"{base}_abs"], name=f"{base}_abs"))
        out += [reduce,
                helper.make_node("Max", [f"{base}_max", least], [f"{base}_scale"], name=f"{base}_scale"),
                helper.make_node("Reciprocal", [f"{base}_scale"], [f"{base}_inverse"], name=f"{base}_inverse"),
                helper.make_node("Mul", [x, f"{base}_inverse"], [f"{base}_unit"], name=f"{base}_unit")]
        self.done[x] = (f"{base}_unit", f"{base}_scale")
        return self.done[x]


def _codes(w: Any, code_max: int, per_channel: bool) -> tuple[Any, Any]:
    """Symmetric codes within ±`code_max`, one scale per output column (or one for all, repeated)."""
    import numpy as np

    scale = np.abs(w).max(axis=0) / code_max if per_channel else np.full(w.shape[1], np.abs(w).max() / code_max)
    scale = np.where(scale > 0, scale, 1.0)
    return np.clip(np.rint(w / scale), -code_max, code_max).astype(np.int8), scale.astype(np.float32)


def _operands(node: Any, inits: dict[str, Any], producers: dict[str, Any]) -> tuple[str, Any, str] | None:
    """(x, the K × N float weight x meets, bias or "") of a MatMulNBits (without g_idx) or of a
    MatMul by a 2-D float initializer; None for anything else."""
    from onnx import numpy_helper

    if node.op_type == "MatMul":
        w = inits.get(node.input[1])
        if w is None or len(w.dims) != 2 or w.data_type != 1:
            return None
        return node.input[0], numpy_helper.to_array(w), ""
    if node.op_type != "MatMulNBits" or (len(node.input) > 4 and node.input[4]):
        return None
    attrs = {a.name: a.i for a in node.attribute}
    folded = _folded_input(node, producers, attrs["K"], attrs["block_size"])
    w = dense_weight(node, inits)
    x, w = (folded[0], _unfold(w, folded[1], attrs["block_size"])) if folded is not None else (node.input[0], w)
    return x, w, node.input[5] if len(node.input) > 5 and node.input[5] else ""


ACTIVATIONS = {"Gelu", "FastGelu", "BiasGelu", "QuickGelu", "Relu", "LeakyRelu", "Silu", "Sigmoid", "Tanh", "Erf",
               "Softplus", "Mish", "HardSigmoid", "HardSwish"}


def mlp_inner(x: str, producers: dict[str, Any], constants: set[str]) -> bool:
    """Whether `x` is an MLP's inner activation: an activation's output, or an elementwise product
    of two computed tensors (SwiGLU's silu(gate) · up, a spelled-out GELU) — not a norm's x · γ."""
    node = producers.get(x)
    if node is None:
        return False
    if node.op_type in ACTIVATIONS:
        return True
    return node.op_type == "Mul" and len(node.input) == 2 and not any(i in constants for i in node.input)


def int8_nodes(graph: Any, skip: set[str], opset: int = 17, *, code_max: int = CODE_MAX, per_channel: bool = True,
               ops: tuple[str, ...] = ("MatMulNBits",), tag: str = "prompt",
               keep_mlp_inner: bool = False) -> tuple[list[Any], list[Any]]:
    """`graph`'s node list with every node of `ops` (MatMulNBits; MatMul by a float initializer)
    not named in `skip` replaced by a DynamicQuantizeMatMul on symmetric per-column codes of its
    weights (±`code_max`), its input scaled per row around it (module doc); plus the new
    initializers, named after the node and `tag`. `keep_mlp_inner`: a node whose input is an MLP's
    inner activation (`mlp_inner`) stays as it is. Nodes only the replaced ones read (the folded
    correction's block sums) remain: `live_nodes` drops them."""
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    constants = set(inits) | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    scalar = constant_scalars(graph)
    nodes, added = [], []
    rows = _RowScales(opset, lambda x: floor_of(x, producers, scalar))
    for node in graph.node:
        found = _operands(node, inits, producers) if node.op_type in ops and node.name not in skip else None
        if found is not None and keep_mlp_inner and mlp_inner(found[0], producers, constants):
            found = None
        if found is None:
            nodes.append(node)
            continue
        x, w, bias = found
        codes, scale = _codes(w, code_max, per_channel)
        base, out = node.name or node.output[0], node.output[0]
        added += [numpy_helper.from_array(codes, f"{base}_{tag}_q8"), numpy_helper.from_array(scale, f"{base}_{tag}_s8")]
        unit, row_scale = rows.of(x, nodes)
        nodes += [helper.make_node("DynamicQuantizeMatMul", [unit, f"{base}_{tag}_q8", f"{base}_{tag}_s8"],
                                   [f"{out}_unit"], name=f"{base}_{tag}_int8", domain="com.microsoft"),
                  helper.make_node("Mul", [f"{out}_unit", row_scale], [f"{out}_nobias" if bias else out],
                                   name=f"{base}_{tag}_rows")]
        if bias:
            nodes.append(helper.make_node("Add", [f"{out}_nobias", bias], [out], name=f"{base}_{tag}_bias"))
    return nodes, added + rows.added


def rewrite_matmuls(model: Any, skip: set[str], *, code_max: int, per_channel: bool, tag: str) -> None:
    """`model` in place: every MatMul by a float initializer not named in `skip` as a per-token
    DynamicQuantizeMatMul (`int8_nodes`); the float weights nothing reads any more dropped."""
    from onnx import helper

    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    weights = {n.input[1] for n in graph.node if n.op_type == "MatMul" and len(n.input) == 2}
    nodes, added = int8_nodes(graph, skip, opset, code_max=code_max, per_channel=per_channel, ops=("MatMul",),
                              tag=tag)
    graph.ClearField("node")
    graph.node.extend(nodes)
    graph.initializer.extend(added)
    drop_unread(model, weights)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))


def drop_unread(model: Any, names: set[str]) -> None:
    """Remove the initializers in `names` that no node of any (sub)graph and no graph output still
    reads, with their graph-input entries (old IR lists initializers as inputs): the float weights a
    rewrite replaced, while a weight an If branch or an output also reads stays."""
    from optimize.inspect_onnx import all_graphs

    graph = model.graph
    read = {i for g in all_graphs(graph) for n in g.node for i in n.input} | {o.name for o in graph.output}
    gone = names - read
    kept = [t for t in graph.initializer if t.name not in gone]
    graph.ClearField("initializer")
    graph.initializer.extend(kept)
    inputs = [i for i in graph.input if i.name not in gone]
    graph.ClearField("input")
    graph.input.extend(inputs)


def live_nodes(nodes: list[Any], outputs: list[str]) -> list[Any]:
    """`nodes` (in order) that some output depends on."""
    needed, keep = set(outputs), []
    for node in reversed(nodes):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    return keep[::-1]
