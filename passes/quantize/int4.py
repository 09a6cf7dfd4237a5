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
  are rewritten for the fast kernel (`split_float_zero_points`, `correction`: exact or folded).
- Sibling projections (q/k/v, gate/up) are merged into one MatMul first (`fuse_sibling_matmuls`).

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

from passes.quantize.prefill_branch import head_node

Policy = Literal["float", "int8", "int4"]
# rtn: round to nearest, integer zero points (ORT's default quantizer); hqq: half-quadratic optimized
# scales and float zero points; minmax: each block's own min..max in 15 steps with a float zero point
# (ORT's HQQ code without its optimization) — GGUF Q4_1's grid, kept exactly where a block uses its
# lowest and highest level (in SmolLM2's Q4_1 file a 32-block holds a median 11–13 of its 16 levels)
Algorithm = Literal["rtn", "hqq", "minmax"]
# how a float zero point is applied (split_float_zero_points): exact (integer zero point + MatMul +
# Add), or folded into a symmetric 4-bit kernel as extra K rows (fewer nodes, no zero-point input)
Correction = Literal["exact", "folded"]
SIZE_LIMIT = 1_900_000_000  # protobuf's 2 GB cap, with room: save with external data past it
def embedding_nodes(model: Any) -> list[str]:
    """Gathers that read token ids from a 2-D weight table: the token embedding(s)."""
    inits = {t.name: t for t in model.graph.initializer}
    return [n.name for n in model.graph.node
            if n.op_type == "Gather" and n.input[0] in inits and len(inits[n.input[0]].dims) == 2]


def _nbits(model: Any, bits: int, block_size: int, symmetric: bool, accuracy_level: int | None,
           include: list[str], op_type: str, algorithm: Algorithm = "rtn", correction: Correction = "exact",
           ranks: dict[str, int] | None = None) -> Any:
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
    with quiet_quantizer():
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
        split_float_zero_points(out, mine, correction, ranks)
        used = _used(out)
        kept = [t for t in out.graph.initializer if t.name in used]  # the float zero points are gone
        out.graph.ClearField("initializer")
        out.graph.initializer.extend(kept)
    return out


def fuse_sibling_matmuls(model: Any, skip: set[str] = frozenset()) -> int:
    """Merge the MatMuls that read one input with constant 2-D weights of one K (q/k/v; gate/up)
    into one MatMul on the weights concatenated along N, then a Split back into the old outputs.
    Block-wise 4-bit codes are per output column, so the codes do not change; at batch-1 decode
    each node costs ONNX Runtime a fixed few µs, and a layer goes from 7 to 4 weight MatMuls
    (docs/llm.md). Nodes named in `skip` (the head) stay. Returns how many MatMuls were merged."""
    import numpy as np
    from onnx import helper, numpy_helper

    graph = model.graph
    if next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0) < 13:
        return 0  # Split takes its sizes as an input from opset 13
    inits = {t.name: t for t in graph.initializer}
    groups: dict[tuple[str, int, int], list[Any]] = {}
    for node in graph.node:
        w = inits.get(node.input[1]) if node.op_type == "MatMul" else None
        if w is not None and len(w.dims) == 2 and node.name not in skip:
            groups.setdefault((node.input[0], w.dims[0], w.data_type), []).append(node)
    groups = {key: nodes for key, nodes in groups.items() if len(nodes) > 1}
    first = {id(nodes[0]): nodes for nodes in groups.values()}
    merged = {id(n) for nodes in groups.values() for n in nodes}
    out_nodes, added, gone = [], [], set()
    for node in graph.node:
        if id(node) not in merged:
            out_nodes.append(node)
        elif id(node) in first:
            nodes = first[id(node)]
            weights = [numpy_helper.to_array(inits[n.input[1]]) for n in nodes]
            gone.update(n.input[1] for n in nodes)
            base = f"{node.name or node.output[0]}_fused"
            added += [numpy_helper.from_array(np.concatenate(weights, axis=1), f"{base}_w"),
                      numpy_helper.from_array(np.array([w.shape[1] for w in weights], np.int64), f"{base}_split")]
            out_nodes += [helper.make_node("MatMul", [node.input[0], f"{base}_w"], [f"{base}_out"], name=base),
                          helper.make_node("Split", [f"{base}_out", f"{base}_split"], [n.output[0] for n in nodes],
                                           name=f"{base}_split", axis=-1)]
    still = {i for n in out_nodes for i in n.input}
    kept = [t for t in graph.initializer if t.name not in gone or t.name in still]
    graph.ClearField("node")
    graph.node.extend(out_nodes)
    graph.ClearField("initializer")
    graph.initializer.extend(kept + added)
    return len(merged)


def input_ranks(model: Any, nodes: list[str]) -> dict[str, int]:
    """The rank of each named node's first input, from ONNX shape inference, then ONNX Runtime's
    symbolic shape inference for what that left unknown (it knows ONNX Runtime's own ops, e.g. the
    GenAI builder's GroupQueryAttention); a rank still unknown (either failed, e.g. past protobuf's
    2 GB) makes its block sums take the slower MatMul form."""
    import onnx

    wanted = {n.input[0] for n in model.graph.node if n.name in set(nodes)}
    ranks: dict[str, int] = {}
    for infer in (onnx.shape_inference.infer_shapes, _ort_symbolic_shapes):
        try:
            graph = infer(model).graph
        except Exception:  # noqa: BLE001 - an optimization only: any failure means "rank unknown"
            continue
        ranks.update({v.name: len(v.type.tensor_type.shape.dim) for v in list(graph.value_info) + list(graph.input)
                      if v.name in wanted and v.type.tensor_type.HasField("shape")})
        if wanted <= set(ranks):
            break
    return ranks


def _ort_symbolic_shapes(model: Any) -> Any:
    """ONNX Runtime's symbolic shape inference, run in a temporary folder: when it cannot finish it
    saves the model there (`sym_shape_infer_temp.onnx` and a `<uuid>.data` of its weights) before
    raising. Not tried past protobuf's 2 GB (it copies the model). No rank is guessed."""
    import contextlib
    import tempfile

    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    if model.ByteSize() > SIZE_LIMIT:
        raise ValueError("model past 2 GB")
    with tempfile.TemporaryDirectory(prefix="optimize-shapes-") as scratch, contextlib.chdir(scratch), quiet_quantizer():
        return SymbolicShapeInference.infer_shapes(model, auto_merge=True, guess_output_rank=False)


def _used(model: Any) -> set[str]:
    return {i for n in model.graph.node for i in n.input}


def split_float_zero_points(model: Any, names: set[str], correction: Correction = "exact",
                            ranks: dict[str, int] | None = None) -> int:
    """Rewrite each named MatMulNBits with float zero points (the slow path in ONNX Runtime 1.32's
    CPU kernel: SmolLM2 decode 0.5 s/token against 0.03 with integer zero points) into the fast
    integer form plus a correction. With zf = zi + f (zi the nearest code in 0..15):
    x·W = MatMulNBits(x; q, s, zi) + (x·E)·C, where E (K × blocks) sums x over each block and
    C[b, n] = s[n, b]·(zi − zf)[n, b]. `correction` exact: a small MatMul and an Add per node
    (block sums shared); folded: the same identity with zi = 8, the symmetric kernel's implied
    zero point, and C as extra 4-bit rows of the node's own weight fed by the block sums
    concatenated to x (one kernel without a zero-point input, ~7% faster on SmolLM2's decode;
    C itself rounded, to ≈ max |C| / 224, see `_fold`). `ranks`: the rank of each node's
    input where known, for `_BlockSums`. Returns how many nodes were rewritten; a node whose K is
    not a multiple of its block size is left alone."""
    import numpy as np
    from onnx import numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    nodes, added, count = [], [], 0
    sums = _BlockSums(ranks or {}, added)
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
        if correction == "folded":
            nodes += _fold(node, (scale * (8 - zf)).T, inits, added, sums)
        else:
            nodes += _exact(node, zi, (scale * (zi - zf)).T.astype(np.float32), added, sums)
        count += 1
    graph.ClearField("node")
    graph.node.extend(nodes)
    graph.initializer.extend(added)
    return count


def _attr(node: Any, name: str) -> int:
    return next(a.i for a in node.attribute if a.name == name)


def _pack(codes: Any) -> Any:
    """4-bit codes (rows × cols) → bytes, two per byte along cols, low nibble first (an odd tail padded)."""
    import numpy as np

    padded = np.zeros((codes.shape[0], codes.shape[1] + codes.shape[1] % 2), np.uint8)
    padded[:, :codes.shape[1]] = codes
    return padded[:, 0::2] | (padded[:, 1::2] << 4)


class _BlockSums:
    """x·E, the sums of x over each block, once per input (q/k/v and gate/up read one): Reshape +
    ReduceSum where x's rank is known, else a MatMul by the dense K × blocks 0/1 matrix E (at
    K = 1536 per decode step 16.6 µs against 5.5, measured in docs/llm.md)."""

    def __init__(self, ranks: dict[str, int], added: list[Any]) -> None:
        self.ranks, self.added, self.names = ranks, added, {}  # names: (input, what) → tensor

    def _const(self, name: str, value: Any) -> str:
        from onnx import numpy_helper

        if not any(t.name == name for t in self.added):
            self.added.append(numpy_helper.from_array(value, name))
        return name

    def of(self, node: Any, k: int, bs: int, out: list[Any], sixteenth: bool = False) -> list[str]:
        """The names of the tensors holding the node's input's block sums (followed by the same / 16
        with `sixteenth`), adding the nodes to `out` the first time."""
        import numpy as np
        from onnx import helper

        x, rank, name = node.input[0], self.ranks.get(node.input[0], 0), f"{node.output[0]}_bsum{'16' * sixteenth}"
        if (x, k, bs, sixteenth) in self.names:
            return self.names[(x, k, bs, sixteenth)]
        if rank < 2:  # one MatMul by [E | E / 16]
            e = np.kron(np.eye(k // bs, dtype=np.float32), np.ones((bs, 1), np.float32))
            const = self._const(f"block_sums_{k}_{bs}{'_16' * sixteenth}", np.concatenate([e, e / 16], 1) if sixteenth else e)
            out.append(helper.make_node("MatMul", [x, const], [name], name=f"{node.name}_bsum"))
            self.names[(x, k, bs, sixteenth)] = [name]
            return [name]
        plain = name  # Reshape's 0 keeps the leading dims (batch, sequence)
        shape = self._const(f"block_sums_{k}_{bs}_r{rank}", np.array([0] * (rank - 1) + [k // bs, bs], np.int64))
        out += [helper.make_node("Reshape", [x, shape], [f"{name}_blocks"], name=f"{node.name}_bsum_reshape"),
                helper.make_node("ReduceSum", [f"{name}_blocks", self._const("block_sums_axis", np.array([-1], np.int64))],
                                 [plain], name=f"{node.name}_bsum", keepdims=0)]
        if sixteenth:
            out.append(helper.make_node("Mul", [plain, self._const("block_sums_sixteenth", np.array(1 / 16, np.float32))],
                                        [f"{plain}_16"], name=f"{node.name}_bsum16"))
        self.names[(x, k, bs, sixteenth)] = [plain, f"{plain}_16"] if sixteenth else [plain]
        return self.names[(x, k, bs, sixteenth)]


def _exact(node: Any, zi: Any, corr: Any, added: list[Any], sums: _BlockSums) -> list[Any]:
    """MatMulNBits(x; q, s, zi) + (x·E)·C: the node with integer zero points, then a MatMul and an Add."""
    from onnx import helper, numpy_helper

    base, out = node.name or node.output[0], node.output[0]
    added += [numpy_helper.from_array(_pack(zi), f"{base}_zp_int"), numpy_helper.from_array(corr, f"{base}_zp_corr")]
    node.input[3] = f"{base}_zp_int"
    node.output[0] = f"{out}_int"
    nodes = [node]
    bsum = sums.of(node, corr.shape[0] * _attr(node, "block_size"), _attr(node, "block_size"), nodes)[0]
    return nodes + [helper.make_node("MatMul", [bsum, f"{base}_zp_corr"], [f"{out}_corr"], name=f"{base}_corr"),
                    helper.make_node("Add", [f"{out}_int", f"{out}_corr"], [out], name=f"{base}_add")]


def _fold(node: Any, corr: Any, inits: dict[str, Any], added: list[Any], sums: _BlockSums) -> list[Any]:
    """MatMulNBits(Concat(x, x·E, x·E/16); [q; ch; cl], [s; sc]) with no zero-point input (the
    kernel's faster symmetric path, code 8 the zero): C = s·(8 − zf) (blocks × N) as a coarse row
    group ch and a residual group cl read against block sums / 16, one scale per column for both
    (max |C| / 7), so the remainder is held to ≈ max |C| / 224."""
    import numpy as np
    from onnx import helper, numpy_helper

    attrs = {a.name: a for a in node.attribute}
    k, n, bs = attrs["K"].i, attrs["N"].i, attrs["block_size"].i
    blocks = k // bs
    extra = -(-2 * blocks // bs)
    sc = np.abs(corr).max(axis=0) / 7  # N
    sc = np.where(sc > 0, sc, 1.0)
    hi = np.clip(np.rint(corr / sc), -8, 7)
    lo = np.clip(np.rint(16 * (corr - hi * sc) / sc), -8, 7)
    rows = np.zeros((extra * bs, n))
    rows[:2 * blocks] = np.concatenate([hi, lo])
    codes = (rows + 8).astype(np.uint8).reshape(extra, bs, n).transpose(2, 0, 1).reshape(n * extra, bs)
    q = numpy_helper.to_array(inits[node.input[1]]).reshape(n, blocks, bs // 2)
    s = numpy_helper.to_array(inits[node.input[2]])
    base = node.name or node.output[0]
    s_all = np.concatenate([s.reshape(n, blocks), np.repeat(sc[:, None], extra, axis=1).astype(s.dtype)], axis=1)
    added += [numpy_helper.from_array(np.concatenate([q, _pack(codes).reshape(n, extra, bs // 2)], axis=1), f"{base}_q_aug"),
              numpy_helper.from_array(s_all.reshape(-1) if s.ndim == 1 else s_all, f"{base}_s_aug")]
    nodes: list[Any] = []
    key = (node.input[0], "sym", k)
    if key not in sums.names:
        both = sums.of(node, k, bs, nodes, sixteenth=True)
        sums.names[key] = f"{node.output[0]}_xaug"
        nodes.append(helper.make_node("Concat", [node.input[0], *both], [sums.names[key]], name=f"{base}_xaug", axis=-1))
    node.input[0], node.input[1], node.input[2] = sums.names[key], f"{base}_q_aug", f"{base}_s_aug"
    del node.input[3:]
    attrs["K"].i = k + 2 * blocks
    return nodes + [node]


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
def quiet_quantizer() -> Iterator[None]:
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
                  algorithm: Algorithm = "rtn", head_accuracy_level: int | None = 4, correction: Correction = "folded",
                  fuse_projections: bool = True) -> dict[str, Any]:
    """`src` → `dst` with 4-bit body MatMuls and the head/embedding policies (see module doc).
    `head_accuracy_level` apart from the body's: an 8-bit head without level 4 ran SmolLM2's decode
    at 0.18x of FP32 (docs/llm.md). `fuse_projections`: merge q/k/v and gate/up first
    (`fuse_sibling_matmuls`, same codes, fewer nodes); `correction`: see `split_float_zero_points`
    (hqq / minmax only). Returns facts for the report: the nodes in each group and the settings."""
    import onnx

    from passes.quantize.prefill_branch import tied_embedding

    model = onnx.load(str(src))
    head_name = head_node(model)
    embeds = embedding_nodes(model)
    tied = tied_embedding(model, head_name) if embedding == "float" and head != "float" else None
    fused = fuse_sibling_matmuls(model, {head_name} if head_name else set()) if fuse_projections else 0
    weights = {t.name for t in model.graph.initializer}
    body = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name != head_name and n.input[1] in weights]
    ranks = input_ranks(model, body) if algorithm != "rtn" else {}
    model = _nbits(model, 4, block_size, symmetric, accuracy_level, body, "MatMul", algorithm, correction, ranks)
    if head_name and head != "float":
        head_algo = algorithm if head == "int4" else "rtn"  # ORT's HQQ is 4-bit
        model = _nbits(model, 4 if head == "int4" else 8, block_size, symmetric, head_accuracy_level, [head_name],
                       "MatMul", head_algo, correction)
    if embeds and embedding != "float":
        model = _nbits(model, 4 if embedding == "int4" else 8, block_size, symmetric, None, embeds, "Gather")
    save(model, dst)
    return {"format": "int4", "algorithm": algorithm, "block_size": block_size,
            "symmetric": symmetric if algorithm == "rtn" else False, "accuracy_level": accuracy_level,
            "head_accuracy_level": head_accuracy_level if head_name and head != "float" else None,
            "head": head if head_name else None, "head_node": head_name, "embedding": embedding if embeds else None,
            "int4_matmuls": len(body), "fused_projections": fused,
            "correction": correction if algorithm != "rtn" else None, "tied_embedding": tied}


def quantize_int8_dynamic(src: Path, dst: Path, *, head: Policy = "int8", per_channel: bool = True,
                          reduce_range: bool | None = None, per_token: bool = True) -> dict[str, Any]:
    """`src` → `dst` with dynamic int8 MatMuls (the head int8 or kept float). `reduce_range` None:
    7-bit weights on a CPU without int8 dot-product instructions, where ONNX Runtime's u8s8 kernels
    saturate 16-bit sums (SmolLM2 with 8-bit weights on AVX2: token agreement 0.0, perplexity
    ×60,000). `per_token`: each MatMul a DynamicQuantizeMatMul with its input scaled per token
    (passes/quantize/prompt_int8.py: a decoder's tokens differ in scale by 10x and more, and one
    activation scale per call cost SmolLM2 token agreement 0.80, perplexity ratio 1.72); False: ONNX
    Runtime's `quantize_dynamic` as it is."""
    import onnx

    from optimize.hardware import has_int8_dot_product

    if reduce_range is None:
        reduce_range = not has_int8_dot_product()
    dst.parent.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(src), load_external_data=False)
    head_name = head_node(model)
    exclude = [head_name] if head_name and head == "float" else []
    facts = {"format": "int8_dynamic", "per_channel": per_channel, "reduce_range": reduce_range,
             "head": "float" if exclude else "int8", "head_node": head_name, "per_token": per_token}
    if per_token:
        _int8_per_token(src, dst, set(exclude), 63 if reduce_range else 127, per_channel)
        return facts
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with quiet_quantizer():
        quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul"], per_channel=per_channel,
                         reduce_range=reduce_range, weight_type=QuantType.QInt8, nodes_to_exclude=exclude or None,
                         use_external_data_format=src.stat().st_size > SIZE_LIMIT)
    return facts


def _int8_per_token(src: Path, dst: Path, exclude: set[str], code_max: int, per_channel: bool) -> None:
    """Every MatMul by a float initializer (not in `exclude`) as DynamicQuantizeMatMul with per-token
    input scaling; the float weights nothing reads any more are dropped."""
    import onnx

    from passes.quantize.prompt_int8 import rewrite_matmuls

    model = onnx.load(str(src))
    rewrite_matmuls(model, exclude, code_max=code_max, per_channel=per_channel, tag="dyn")
    save(model, dst)


def save(model: Any, dst: Path) -> None:
    """Save beside its serving files, with external data when the model is past protobuf's cap."""
    import onnx

    dst.parent.mkdir(parents=True, exist_ok=True)
    large = model.ByteSize() > SIZE_LIMIT
    onnx.save_model(model, str(dst), save_as_external_data=large, all_tensors_to_one_file=True,
                    location=dst.name + ".data" if large else None)
