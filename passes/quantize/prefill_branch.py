"""A prompt path apart from the decode path in an int4 decoder: one `If` on the sequence length.

Why: ONNX Runtime's `MatMulNBits` at accuracy_level 4 (int8 activations) is the fast kernel for
one-token decode steps, but on a 128-token prompt on a CPU without int8 dot-product instructions
it ran slower than FP32's SGEMM (SmolLM2-135M on an AVX2 AMD EPYC: prefill 0.77x of FP32), while
accuracy_level 1 (float activations: the runtime dequantizes weight blocks into SGEMM) ran near
FP32's speed and 1.8x slower per decode step. One kernel setting cannot serve both, so the graph
holds its node list twice: `If(input_ids has more than one position)` → the prompt path (4-bit
kernels at `accuracy_level` 1, and a head tied to a float embedding table computed against that
table), else → the decode path as quantized. Both branches read the same initializers: no weight
is stored twice (the runtime prepacks each kernel's weights for its own compute type) — unless
`prefill: int8_weights` asks for the body (less the MLPs' inner projections) a second time as 8-bit
codes (passes/quantize/prompt_int8.py: faster prompts for ~1.5x the body's 4-bit bytes).

Before wrapping, ONNX Runtime's basic, provider-independent optimizations fold the constant shape
arithmetic: inside an `If` branch the runtime left it unfolded (SmolLM2: 3,859 nodes per decode
step instead of 3,384, and the decode path ~15% slower). Written by hand because no library
rewrites a graph into length-dependent branches; docs/llm.md has the measurements.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

PROMPT_LEVEL = 1  # MatMulNBits accuracy_level of the prompt path: float activations
SIZE_LIMIT = 1_900_000_000  # as int4.SIZE_LIMIT (int4 imports this module: no import back)


PASS_THROUGH = {"Reshape", "Add", "Cast", "Identity", "Transpose", "Squeeze", "Unsqueeze"}


def head_node(model: Any, output: str = "logits") -> str | None:
    """The name of the MatMul/Gemm (or, once quantized, MatMulNBits) that computes `output`
    (through reshapes, a bias Add, casts)."""
    producers = {out: node for node in model.graph.node for out in node.output}
    node = producers.get(output)
    while node is not None and node.op_type in PASS_THROUGH:
        node = producers.get(node.input[0])
    if node is not None and node.op_type in ("MatMul", "Gemm", "MatMulNBits"):
        return node.name
    return None


def tied_embedding(model: Any, head_name: str | None) -> str | None:
    """The token-embedding table (V × K) whose transpose equals the float head's weight (K × V),
    i.e. a tied `lm_head` exported as two initializers; or the head's weight itself when the
    embedding reads it through a Transpose (ONNX Runtime GenAI's model builder: one K × V
    initializer; after ONNX Runtime's constant folding the Gather reads it as a V × K table,
    `gather_table`). None when the head is not tied."""
    import numpy as np
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    head = next((n for n in model.graph.node if n.name == head_name), None)
    weight = inits.get(head.input[1]) if head is not None and head.op_type == "MatMul" else None
    if weight is None or len(weight.dims) != 2:
        return None
    transposed = {n.output[0] for n in model.graph.node if n.op_type == "Transpose" and n.input[0] == weight.name
                  and [list(a.ints) for a in n.attribute if a.name == "perm"] in ([], [[1, 0]])}
    if any(n.op_type == "Gather" and n.input[0] in transposed for n in model.graph.node):
        return weight.name
    for node in model.graph.node:
        table = inits.get(node.input[0]) if node.op_type == "Gather" else None
        if table is not None and list(table.dims) == list(weight.dims)[::-1] and table.data_type == weight.data_type:
            if np.array_equal(numpy_helper.to_array(table), numpy_helper.to_array(weight).T):
                return table.name
    return None


def gather_table(model: Any) -> str | None:
    """The 2-D initializer the token embedding (a Gather on `input_ids`) reads, if any."""
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] == "input_ids":
            table = inits.get(node.input[0])
            return table.name if table is not None and len(table.dims) == 2 else None
    return None


def fold_constants(src: Path, dst: Path) -> None:
    """ONNX Runtime's basic optimizations (constant folding, redundant nodes), saved to `dst`."""
    from passes.graph_rewrites import save_basic_graph

    save_basic_graph(src, dst, external_above=SIZE_LIMIT)


def _branch(graph: Any, prefix: str, level: int | None, head_output: str, head_table: str | None,
            source: list[Any] | None = None) -> Any:
    """The graph's nodes (or `source`) as an If branch: every value renamed under `prefix` (a
    branch may not shadow an outer name), MatMulNBits body nodes at `level` (None: as they are),
    and the node computing `head_output` replaced by a MatMul against `head_table` transposed when
    given."""
    from onnx import helper

    from passes.quantize.prompt_int8 import head_input

    source = list(graph.node) if source is None else source
    rename = {out: prefix + out for node in source for out in node.output if out}
    nodes = []
    for node in source:
        new = copy.deepcopy(node)
        new.name = prefix + (node.name or node.output[0])
        new.input[:] = [rename.get(x, x) for x in node.input]
        new.output[:] = [rename.get(x, x) for x in node.output]
        is_head = head_output in node.output and node.op_type == "MatMulNBits"
        if is_head and head_table is not None:
            x = head_input(node, source)  # a folded head reads x + block sums: the float head reads x
            new = helper.make_node("FusedMatMul", [rename.get(x, x), head_table], [new.output[0]], domain="com.microsoft",
                                   name=prefix + "head_float_tied", transB=_vocab_first(graph, head_table, node))
        elif node.op_type == "MatMulNBits" and level is not None:
            for attr in new.attribute:
                if attr.name == "accuracy_level":
                    attr.i = level
            if not any(a.name == "accuracy_level" for a in new.attribute):
                new.attribute.append(helper.make_attribute("accuracy_level", level))
        nodes.append(new)
    outputs = [helper.make_tensor_value_info(prefix + o.name, o.type.tensor_type.elem_type, None) for o in graph.output]
    return helper.make_graph(nodes, prefix.strip("/") + "_path", [], outputs)


def _vocab_first(graph: Any, table: str, head: Any) -> int:
    """1 when `table` is V × K (an embedding table: the head multiplies by its transpose), 0 when it
    is the head's own K × V weight."""
    dims = next(list(t.dims) for t in graph.initializer if t.name == table)
    vocab = next((a.i for a in head.attribute if a.name == "N"), None)
    return int(dims[0] == vocab)


def _prompt_source(model: Any, body: str, head_output: str, opset: int) -> tuple[list[Any] | None, int]:
    """The prompt path's node list before renaming (None: the graph's own) and the bytes of
    weights it adds: `body` int8_weights swaps the body's 4-bit kernels for 8-bit ones
    (passes/quantize/prompt_int8.py), their initializers added to the outer graph."""
    from passes.quantize.prompt_int8 import int8_nodes, live_nodes

    if body != "int8_weights":
        return None, 0
    graph = model.graph
    head = {head_node(model, head_output)}  # through a Cast / bias Add too
    nodes, added = int8_nodes(graph, {h for h in head if h}, opset, keep_mlp_inner=True)
    graph.initializer.extend(added)
    return live_nodes(nodes, [o.name for o in graph.output]), sum(len(t.raw_data) for t in added)


def wrap(model: Any, head_table: str | None = None, head_output: str = "logits",
         body: str = "float_activations") -> dict[str, Any]:
    """Rewrite `model` in place into If(sequence > 1) → prompt path, else decode path (module doc);
    `body`: float_activations (the 4-bit kernels at accuracy_level 1) or int8_weights. Returns
    facts for the report."""
    from onnx import TensorProto, helper

    graph = model.graph
    kernels = sum(n.op_type == "MatMulNBits" for n in graph.node)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    source, added_bytes = _prompt_source(model, body, head_output, opset)
    prompt = _branch(graph, "prompt/", PROMPT_LEVEL, head_output, head_table, source)
    decode = _branch(graph, "decode/", None, head_output, None)
    outputs = [o.name for o in graph.output]
    head = [
        helper.make_node("Shape", ["input_ids"], ["path/length"], start=1, end=2, name="path/length"),
        helper.make_node("Constant", [], ["path/one"], name="path/one",
                         value=helper.make_tensor("one", TensorProto.INT64, [1], [1])),
        helper.make_node("Greater", ["path/length", "path/one"], ["path/many"], name="path/many"),
        helper.make_node("Squeeze", ["path/many"], ["path/is_prompt"], name="path/is_prompt"),
        helper.make_node("If", ["path/is_prompt"], outputs, name="prompt_or_decode", then_branch=prompt,
                         else_branch=decode),
    ]
    graph.ClearField("node")
    graph.node.extend(head)
    graph.ClearField("value_info")
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    facts = {"prompt_body": body, "prompt_head": "float (tied embedding)" if head_table else "as quantized",
             "kernels_per_path": kernels, "prompt_nodes": len(prompt.node),
             "decode_nodes": len(decode.node)}
    if body == "int8_weights":
        facts.update(prompt_int8_kernels=sum(n.op_type == "DynamicQuantizeMatMul" for n in prompt.node),
                     prompt_weight_bytes=added_bytes)
    else:
        facts["prompt_accuracy_level"] = PROMPT_LEVEL
    return facts


def add_prompt_path(src: Path, dst: Path, head_table: str | None, save: Any,
                    body: str = "float_activations") -> dict[str, Any]:
    """`src` (a quantized decoder) → `dst` with the prompt path (`wrap`), its constants folded by
    ONNX Runtime first; `save(model, path)` writes it; the temporary file beside `dst` is removed.
    A `head_table` the folding renamed or dropped is not used (the prompt head stays as quantized)."""
    import onnx

    folded = dst.with_name(dst.stem + ".folded.tmp.onnx")
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        fold_constants(src, folded)
        out = onnx.load(str(folded))
        if head_table is not None and not any(t.name == head_table for t in out.graph.initializer):
            head_table = gather_table(out)  # folded: the builder's Transpose became a V × K initializer
        facts = wrap(out, head_table, body=body)
        save(out, dst)
    finally:
        for p in (folded, folded.with_name(folded.name + ".data")):
            p.unlink(missing_ok=True)
    return facts

