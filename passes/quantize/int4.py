"""Weight-only int4 for decoder LLMs (ONNX Runtime's `MatMulNBits`), with a policy for the output
projection (`lm_head`) and the token embedding, and int8 dynamic as the other choice.

- The body's MatMul weights become 4-bit blocks (`block_size` along K, symmetric or with zero
  points, `accuracy_level` 4 = int8 activations in the kernel, the fast path on CPU).
- `head`: the MatMul that produces `logits` kept `float`, or as 8-bit or 4-bit blocks. Public
  reports tie an int4 `lm_head` to repetition (onnxruntime PR 24384), hence a separate choice.
- `embedding`: the token-embedding `Gather` kept `float`, or as `GatherBlockQuantized` 4/8-bit.
  A tied embedding is exported as two initializers (the Gather's table and the head's transposed
  copy), so each follows its own policy.

- `algorithm` (see `Algorithm`): how the 4-bit codes are chosen. Float zero points (hqq, minmax)
  are stored in the fast integer form plus an exact correction (`split_float_zero_points`).

The codes come from ONNX Runtime's own quantizers (`MatMulNBitsQuantizer`, its HQQ node quantizer,
`quantize_dynamic`); this module picks the nodes for each policy and rewrites float zero points.
Measured on SmolLM2-135M in docs/llm.md.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any, Literal

Policy = Literal["float", "int8", "int4"]
# rtn: round to nearest, integer zero points (ORT's default quantizer); hqq: half-quadratic optimized
# scales and float zero points; minmax: each block's own min..max in 15 steps with a float zero point
# (ORT's HQQ code without its optimization) — GGUF Q4_1's grid, kept exactly where a block uses its
# lowest and highest level (in SmolLM2's Q4_1 file a 32-block holds a median 11–13 of its 16 levels)
Algorithm = Literal["rtn", "hqq", "minmax"]
SIZE_LIMIT = 1_900_000_000  # protobuf's 2 GB cap, with room: save with external data past it
PASS_THROUGH = {"Reshape", "Add", "Cast", "Identity", "Transpose", "Squeeze", "Unsqueeze"}


def _producers(graph: Any) -> dict[str, Any]:
    return {out: node for node in graph.node for out in node.output}


def head_node(model: Any, output: str = "logits") -> str | None:
    """The name of the MatMul/Gemm that computes `output` (through reshapes, a bias Add, casts)."""
    producers = _producers(model.graph)
    node = producers.get(output)
    while node is not None and node.op_type in PASS_THROUGH:
        node = producers.get(node.input[0])
    if node is not None and node.op_type in ("MatMul", "Gemm"):
        return node.name
    return None


def embedding_nodes(model: Any) -> list[str]:
    """Gathers that read token ids from a 2-D weight table: the token embedding(s)."""
    inits = {t.name: t for t in model.graph.initializer}
    return [n.name for n in model.graph.node
            if n.op_type == "Gather" and n.input[0] in inits and len(inits[n.input[0]].dims) == 2]


def _nbits(model: Any, bits: int, block_size: int, symmetric: bool, accuracy_level: int | None,
           include: list[str], op_type: str, algorithm: Algorithm = "rtn") -> Any:
    """One MatMulNBitsQuantizer run over the `include` nodes of `op_type` (MatMul or Gather).
    The quantizer's `nodes_to_include` adds to its op types rather than narrowing them, so the
    other nodes of that type are passed as `nodes_to_exclude`."""
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        HQQWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    keep = set(include)
    exclude = [n.name for n in model.graph.node if n.op_type == op_type and n.name not in keep]
    float_zero = algorithm in ("hqq", "minmax")
    algo = HQQWeightOnlyQuantConfig(block_size=block_size, bits=bits, op_types_to_quantize=(op_type,)) \
        if float_zero else None
    quant = MatMulNBitsQuantizer(model, bits=bits, block_size=block_size, is_symmetric=symmetric,
                                 accuracy_level=accuracy_level, nodes_to_exclude=exclude,
                                 op_types_to_quantize=(op_type,),
                                 quant_axes=(("MatMul", 0), ("Gather", 1)), algo_config=algo)
    if algorithm == "minmax":
        quant.node_quantizer = _minmax_quantizer(algo)
    with _quiet():
        quant.process()
    out = quant.model.model
    if float_zero:
        import onnx

        mine = {n.name for n in out.graph.node
                if n.op_type == "MatMulNBits" and n.name.replace(f"_Q{bits}", "") in keep}
        for node in out.graph.node:
            if accuracy_level and node.name in mine and not any(a.name == "accuracy_level" for a in node.attribute):
                # the HQQ node builder leaves the attribute out
                node.attribute.append(onnx.helper.make_attribute("accuracy_level", accuracy_level))
        split_float_zero_points(out, mine)
        used = _used(out)
        kept = [t for t in out.graph.initializer if t.name in used]  # the float zero points are gone
        out.graph.ClearField("initializer")
        out.graph.initializer.extend(kept)
    return out


def _used(model: Any) -> set[str]:
    return {i for n in model.graph.node for i in n.input}


def split_float_zero_points(model: Any, names: set[str]) -> int:
    """Rewrite each named MatMulNBits with float zero points (the slow path in ONNX Runtime 1.32's
    CPU kernel: SmolLM2 decode 0.5 s/token against 0.03 with integer zero points) into the fast
    integer form plus an exact correction. With zf = zi + f (zi the nearest code in 0..15):
    x·W = MatMulNBits(x; q, s, zi) + (x·E)·C, where E (K × blocks) sums x over each block and
    C[b, n] = s[n, b]·(zi − zf)[n, b]. Two small MatMuls (blocks = K / block_size). Returns how
    many nodes were rewritten; a node whose K is not a multiple of its block size is left alone."""
    import numpy as np
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    nodes, added, count = [], [], 0
    block_sums: dict[tuple[str, str], str] = {}
    for node in graph.node:
        attrs = {a.name: a.i for a in node.attribute}
        zp = inits.get(node.input[3]) if node.op_type == "MatMulNBits" and len(node.input) > 3 else None
        k, n, bs = attrs.get("K", 0), attrs.get("N", 0), attrs.get("block_size", 0)
        if node.name not in names or zp is None or zp.data_type not in (1, 10) or attrs.get("bits") != 4 or k % bs:
            nodes.append(node)
            continue
        blocks = k // bs
        zf = numpy_helper.to_array(zp).astype(np.float64).reshape(n, blocks)
        scale = numpy_helper.to_array(inits[node.input[2]]).astype(np.float64).reshape(n, blocks)
        zi = np.clip(np.rint(zf), 0, 15).astype(np.uint8)
        padded = np.zeros((n, blocks + blocks % 2), np.uint8)
        padded[:, :blocks] = zi
        packed = padded[:, 0::2] | (padded[:, 1::2] << 4)  # two 4-bit codes per byte, low nibble first
        base = node.name or node.output[0]
        added.append(numpy_helper.from_array(packed, f"{base}_zp_int"))
        corr = (scale * (zi - zf)).T.astype(np.float32)  # blocks × N
        added.append(numpy_helper.from_array(corr, f"{base}_zp_corr"))
        sums = f"block_sums_{k}_{bs}"
        if sums not in inits and not any(t.name == sums for t in added):
            added.append(numpy_helper.from_array(np.kron(np.eye(blocks, dtype=np.float32), np.ones((bs, 1), np.float32)), sums))
        out = node.output[0]
        node.input[3] = f"{base}_zp_int"
        node.output[0] = f"{out}_int"
        nodes.append(node)
        bsum = block_sums.get((node.input[0], sums))
        if bsum is None:  # q/k/v (and gate/up) read one input: its block sums are computed once
            bsum = block_sums[(node.input[0], sums)] = f"{out}_bsum"
            nodes.append(helper.make_node("MatMul", [node.input[0], sums], [bsum], name=f"{base}_bsum"))
        nodes += [helper.make_node("MatMul", [bsum, f"{base}_zp_corr"], [f"{out}_corr"], name=f"{base}_corr"),
                  helper.make_node("Add", [f"{out}_int", f"{out}_corr"], [out], name=f"{base}_add")]
        count += 1
    graph.ClearField("node")
    graph.node.extend(nodes)
    graph.initializer.extend(added)
    return count


def _minmax_quantizer(config: Any) -> Any:
    """ORT's HQQ node quantizer with its optimization off and the zero point left unrounded."""
    from onnxruntime.quantization.matmul_nbits_quantizer import HQQWeightOnlyQuantizer

    class MinMaxQuantizer(HQQWeightOnlyQuantizer):
        def quantize_internal(self, tensor: Any, bits: int = 4, channel_wise: bool = True, group_size: int = 64,
                              optimize: bool = True, round_zero: bool = True, axis: int = 1) -> Any:
            return super().quantize_internal(tensor, bits=bits, channel_wise=channel_wise, group_size=group_size,
                                             optimize=False, round_zero=False, axis=axis)

    return MinMaxQuantizer(config)


@contextmanager
def _quiet() -> Iterator[None]:
    """The quantizers print, and log each skipped node at INFO (their own logger and the root)."""
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.ERROR)
    root = logging.getLogger()
    old = root.level
    root.setLevel(max(old, logging.WARNING))
    try:
        with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
            yield
    finally:
        root.setLevel(old)


def quantize_int4(src: Path, dst: Path, *, block_size: int = 32, symmetric: bool = True,
                  accuracy_level: int | None = 4, head: Policy = "int8", embedding: Policy = "float",
                  algorithm: Algorithm = "rtn", head_accuracy_level: int | None = 4) -> dict[str, Any]:
    """`src` → `dst` with 4-bit body MatMuls and the head/embedding policies (see module doc).
    `head_accuracy_level` apart from the body's: an 8-bit head without level 4 ran SmolLM2's decode
    at 0.18x of FP32 (docs/llm.md). Returns facts for the report: the nodes in each group and the settings."""
    import onnx

    model = onnx.load(str(src))
    head_name = head_node(model)
    embeds = embedding_nodes(model)
    weights = {t.name for t in model.graph.initializer}
    body = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name != head_name and n.input[1] in weights]
    model = _nbits(model, 4, block_size, symmetric, accuracy_level, body, "MatMul", algorithm)
    if head_name and head != "float":
        head_algo = algorithm if head == "int4" else "rtn"  # ORT's HQQ is 4-bit
        model = _nbits(model, 4 if head == "int4" else 8, block_size, symmetric, head_accuracy_level, [head_name],
                       "MatMul", head_algo)
    if embeds and embedding != "float":
        model = _nbits(model, 4 if embedding == "int4" else 8, block_size, symmetric, None, embeds, "Gather")
    save(model, dst)
    return {"format": "int4", "algorithm": algorithm, "block_size": block_size,
            "symmetric": symmetric if algorithm == "rtn" else False, "accuracy_level": accuracy_level,
            "head_accuracy_level": head_accuracy_level if head_name and head != "float" else None,
            "head": head if head_name else None, "head_node": head_name, "embedding": embedding if embeds else None,
            "int4_matmuls": len(body)}


def quantize_int8_dynamic(src: Path, dst: Path, *, head: Policy = "int8", per_channel: bool = True,
                          reduce_range: bool | None = None) -> dict[str, Any]:
    """`src` → `dst` with ONNX Runtime's dynamic int8 MatMuls (the head int8 or kept float).
    `reduce_range` None: 7-bit weights on a CPU without int8 dot-product instructions, where ONNX
    Runtime's u8s8 kernels saturate 16-bit sums (SmolLM2 with 8-bit weights on AVX2: token
    agreement 0.0, perplexity ×60,000)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from optimize.hardware import has_int8_dot_product

    if reduce_range is None:
        reduce_range = not has_int8_dot_product()

    dst.parent.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(src), load_external_data=False)
    head_name = head_node(model)
    exclude = [head_name] if head_name and head == "float" else []
    with _quiet():
        quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul"], per_channel=per_channel,
                         reduce_range=reduce_range, weight_type=QuantType.QInt8, nodes_to_exclude=exclude or None,
                         use_external_data_format=src.stat().st_size > SIZE_LIMIT)
    return {"format": "int8_dynamic", "per_channel": per_channel, "reduce_range": reduce_range,
            "head": "float" if exclude else "int8",
            "head_node": head_name}


def save(model: Any, dst: Path) -> None:
    """Save beside its serving files, with external data when the model is past protobuf's cap."""
    import onnx

    dst.parent.mkdir(parents=True, exist_ok=True)
    large = model.ByteSize() > SIZE_LIMIT
    onnx.save_model(model, str(dst), save_as_external_data=large, all_tensors_to_one_file=True,
                    location=dst.name + ".data" if large else None)
