""""Why is it (not) faster?" — what ONNX Runtime really runs, and the likely cause of a slowdown.

For the input and the output model this records:

- the file's graph: op counts, and every compute node (MatMul, Gemm, Conv, attention, their
  fused and quantized forms) classified as an `integer`, `int_weight_only`, `fp16`, `bf16`,
  `sparse` or `float` kernel, with the weight elements each kind consumes;
- the graph ONNX Runtime actually executes after its own optimization (saved through
  `SessionOptions.optimized_model_filepath` with the measurement's settings), classified the same
  way, plus the Quantize/Dequantize work it could not fuse: `qdq_pairs_unfused` (a
  DequantizeLinear fed by a QuantizeLinear) and `dequantized_weights_to_float` (a stored integer
  weight dequantized at run time into a float kernel);
- a short profile from ONNX Runtime's own profiler (`SessionOptions.enable_profiling`): kernel
  time per run by kernel kind and the most expensive ops.

When the output is slower than the input, `likely_causes` names what the evidence supports: no
int8 dot-product instructions (VNNI/AMX), a QOperator model with per-channel weights, unfused Q/DQ
pairs, tiny layers whose Quantize/Dequantize time dominates, fp16 on a CPU (casts back to float),
unstructured zeros on a dense runtime.

Hand-written because no library classifies kernels by numeric kind; the graph optimization,
serialization and profiling are ONNX Runtime's own. Heavy imports stay inside functions.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger("optimize")

# Ops that compute in integer arithmetic (activations and weights quantized).
INTEGER_OPS = {
    "MatMulInteger", "ConvInteger", "QLinearConv", "QLinearMatMul", "QGemm", "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat", "QAttention", "DynamicQuantizeLSTM", "QOrderedMatMul", "QOrderedAttention",
    "QEmbedLayerNormalization", "NhwcQLinearConv",
}
# Weights stored in few bits, compute after dequantizing them (or in int8 with accuracy_level 4).
WEIGHT_ONLY_OPS = {"MatMulNBits", "MatMulBnb4", "GatherBlockQuantized", "MatMulFpQ4"}
SPARSE_OPS = {"SparseToDenseMatMul", "SparseAttention"}
FLOAT_COMPUTE_OPS = {
    "MatMul", "Gemm", "Conv", "ConvTranspose", "FusedMatMul", "FusedGemm", "FusedConv", "NhwcFusedConv",
    "Attention", "MultiHeadAttention", "GroupQueryAttention", "LSTM", "GRU", "RNN", "Einsum",
    "FusedMatMulActivation", "TransposeMatMul",
}
COMPUTE_OPS = INTEGER_OPS | WEIGHT_ONLY_OPS | SPARSE_OPS | FLOAT_COMPUTE_OPS
_WEIGHT_PATH = {"DequantizeLinear", "QuantizeLinear", "Cast", "Transpose", "Reshape"}
QUANT_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}
QOPERATOR_OPS = {"QLinearConv", "QLinearMatMul", "QGemm"}
# weight-scale input index of QOperator ops (a scale with more than one element = per channel)
QOPERATOR_WEIGHT_SCALE = {"QLinearConv": 4, "QLinearMatMul": 4, "QGemm": 4}
# Mean weight elements per compute kernel below which a layer counts as tiny (a 256×256 matmul).
TINY_LAYER_WEIGHTS = 65536
KINDS = ("integer", "int_weight_only", "fp16", "bf16", "sparse", "float")
# Non-compute buckets in the profile.
OVERHEAD_KINDS = ("quantize_dequantize", "cast", "other")

F_INT_WEIGHT_SHARE = "weight elements consumed by integer kernels / weight elements consumed by all compute kernels"
F_INT_OP_SHARE = "integer compute nodes / compute nodes"


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GraphFacts(_M):
    graph: str = Field(description="`file` (the ONNX file as written) or `onnxruntime` (the graph ONNX Runtime runs).")
    path: str | None = Field(None, description="Where the graph was read from (the optimized graph lives in the work dir).")
    nodes: int = Field(description="Nodes, subgraphs included.")
    ops: dict[str, int] = Field(default_factory=dict, description="Op counts by type (`domain.Op` outside the default domain).")
    kernels: dict[str, int] = Field(default_factory=dict, description="Compute nodes by kind: integer, int_weight_only, fp16, bf16, sparse, float.")
    kernels_by_op: dict[str, dict[str, int]] = Field(default_factory=dict, description="Compute nodes by op type, then kind.")
    weights_by_kind: dict[str, int] = Field(default_factory=dict, description="Stored weight elements consumed by compute nodes of each kind.")
    integer_weight_share: float | None = Field(None, description=F_INT_WEIGHT_SHARE + " (int_weight_only counts as integer).")
    integer_op_share: float | None = Field(None, description=F_INT_OP_SHARE + " (int_weight_only counts as integer).")
    qdq_pairs_unfused: int = Field(0, description="DequantizeLinear nodes fed directly by a QuantizeLinear node.")
    dequantized_weights_to_float: int = Field(0, description="Stored integer weights dequantized at run time into a float compute node.")
    qoperator_per_channel: int = Field(0, description="QLinearConv / QLinearMatMul / QGemm nodes with per-channel weight scales.")
    casts: int = Field(0, description="Cast nodes.")


class OpTime(_M):
    op: str
    kind: str
    ms: float = Field(description="Kernel milliseconds per run, summed over the nodes of this op and kind.")
    share: float = Field(description="ms / total kernel ms.")
    nodes: int


class RuntimeProfile(_M):
    runs: int = Field(description="Profiled runs (after one warm-up run), separate from the latency measurement.")
    threads: int
    batch: int
    total_kernel_ms: float = Field(description="Σ kernel time per run (ONNX Runtime profiler; excludes session overhead).")
    ms_by_kind: dict[str, float] = Field(default_factory=dict, description="Kernel ms per run by kind (compute kinds and quantize_dequantize, cast, other).")
    share_by_kind: dict[str, float] = Field(default_factory=dict, description="ms_by_kind / total_kernel_ms.")
    top_ops: list[OpTime] = Field(default_factory=list, description="The most expensive op types.")


class ModelDiagnostics(_M):
    file: GraphFacts | None = None
    runtime: GraphFacts | None = Field(None, description="ONNX Runtime's optimized graph (what actually runs).")
    profile: RuntimeProfile | None = None
    reason: str | None = Field(None, description="Why a part is null.")


class Diagnostics(_M):
    input: ModelDiagnostics
    output: ModelDiagnostics
    int8_dot_product: bool | None = Field(None, description="The CPU has VNNI / AMX / Arm dot-product instructions.")
    runtime_settings: dict[str, Any] = Field(default_factory=dict, description="Provider, threads, graph optimization level used.")
    likely_causes: list[str] = Field(default_factory=list, description="When the output is slower: the causes the evidence supports.")


# ---------------------------------------------------------------- graph facts


def _dtype_name(elem_type: int) -> str:
    from onnx import TensorProto

    try:
        return TensorProto.DataType.Name(elem_type).lower()
    except ValueError:
        return "unknown"


def _numel(dims: Any) -> int:
    n = 1
    for d in dims:
        n *= int(d)
    return n


def graph_facts(path: str | Path, graph: str = "file") -> GraphFacts:
    """Classify every node of the ONNX file at `path` (external data is not read)."""
    import onnx

    from optimize.inspect_onnx import all_graphs

    model = onnx.load(str(path), load_external_data=False)
    try:  # value types make fp16 / bf16 kernels visible; the graph itself is enough without them
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:
        inferred = model
    graphs = list(all_graphs(inferred.graph))
    index = _GraphIndex.of(graphs)
    counts = _NodeCounts()
    for n in (n for g in graphs for n in g.node):
        counts.add(n, index)
    return counts.facts(graph, str(path))


@dataclass
class _GraphIndex:
    """Value types, stored tensors (initializers and Constant values) and producers, by value name."""

    types: dict[str, str] = field(default_factory=dict)
    inits: dict[str, Any] = field(default_factory=dict)
    producers: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, graphs: list[Any]) -> _GraphIndex:
        ix = cls()
        for g in graphs:
            for vi in list(g.input) + list(g.output) + list(g.value_info):
                if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
                    ix.types[vi.name] = _dtype_name(vi.type.tensor_type.elem_type)
            for init in g.initializer:
                ix.types[init.name] = _dtype_name(init.data_type)
                ix.inits[init.name] = init
            for n in g.node:
                for o in n.output:
                    ix.producers[o] = n
                if n.op_type == "Constant":
                    for a in n.attribute:
                        if a.name == "value" and a.t is not None:
                            ix.types[n.output[0]] = _dtype_name(a.t.data_type)
                            ix.inits[n.output[0]] = a.t
        return ix

    def stored(self, name: str, depth: int = 0) -> tuple[Any, bool] | None:
        """The stored tensor behind an input, through up to three DequantizeLinear / QuantizeLinear
        (a fake-quant Q→DQ on a float weight) / Cast / Transpose / Reshape nodes; the flag says
        whether a DequantizeLinear was on the way."""
        if name in self.inits:
            return self.inits[name], False
        p = self.producers.get(name)
        if p is None or depth >= 3 or not p.input or p.op_type not in _WEIGHT_PATH:
            return None
        found = self.stored(p.input[0], depth + 1)
        return None if found is None else (found[0], found[1] or p.op_type == "DequantizeLinear")


@dataclass
class _NodeCounts:
    """Running counts over the nodes of a model's graphs (graph_facts)."""

    ops: Counter[str] = field(default_factory=Counter)
    kernels: Counter[str] = field(default_factory=Counter)
    by_op: dict[str, Counter[str]] = field(default_factory=dict)
    weights: Counter[str] = field(default_factory=Counter)
    pairs: int = 0
    deq_float: int = 0
    per_channel: int = 0
    casts: int = 0
    nodes: int = 0

    def add(self, n: Any, ix: _GraphIndex) -> None:
        self.nodes += 1
        key = n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
        self.ops[key] += 1
        if n.op_type == "Cast":
            self.casts += 1
        if n.op_type == "DequantizeLinear" and n.input:
            p = ix.producers.get(n.input[0])
            if p is not None and p.op_type == "QuantizeLinear":
                self.pairs += 1
        if n.op_type not in COMPUTE_OPS:
            return
        kind = _kind(n, ix.types)
        self.kernels[kind] += 1
        self.by_op.setdefault(n.op_type, Counter())[kind] += 1
        if n.op_type in QOPERATOR_WEIGHT_SCALE:
            idx = QOPERATOR_WEIGHT_SCALE[n.op_type]
            if idx < len(n.input) and n.input[idx] in ix.inits and _numel(ix.inits[n.input[idx]].dims) > 1:
                self.per_channel += 1
        for name in n.input:
            s = ix.stored(name) if name else None
            if s is None:
                continue
            tensor, dequantized = s
            if len(tensor.dims) < 2:  # biases, scales, zero points, shapes
                continue
            k_attr = {a.name: a.i for a in n.attribute if a.name in ("K", "N")}
            packed = n.op_type in WEIGHT_ONLY_OPS and k_attr.get("K") and k_attr.get("N")
            self.weights[kind] += k_attr["K"] * k_attr["N"] if packed else _numel(tensor.dims)
            if dequantized and kind in ("float", "fp16", "bf16"):
                self.deq_float += 1

    def facts(self, graph: str, path: str) -> GraphFacts:
        weights, kernels = self.weights, self.kernels
        total_w = sum(weights.values())
        int_w = weights["integer"] + weights["int_weight_only"]
        total_k = sum(kernels.values())
        int_k = kernels["integer"] + kernels["int_weight_only"]
        return GraphFacts(
            graph=graph, path=path, nodes=self.nodes, ops=dict(sorted(self.ops.items())),
            kernels={k: kernels[k] for k in KINDS if kernels[k]},
            kernels_by_op={op: dict(c) for op, c in sorted(self.by_op.items())},
            weights_by_kind={k: weights[k] for k in KINDS if weights[k]},
            integer_weight_share=int_w / total_w if total_w else None,
            integer_op_share=int_k / total_k if total_k else None,
            qdq_pairs_unfused=self.pairs, dequantized_weights_to_float=self.deq_float,
            qoperator_per_channel=self.per_channel, casts=self.casts,
        )


def _kind(node: Any, types: dict[str, str]) -> str:
    if node.op_type in INTEGER_OPS:
        return "integer"
    if node.op_type in WEIGHT_ONLY_OPS:
        return "int_weight_only"
    if node.op_type in SPARSE_OPS:
        return "sparse"
    dtypes = {types.get(i) for i in node.input[:2] if i} | {types.get(o) for o in node.output[:1] if o}
    if "float16" in dtypes:
        return "fp16"
    if "bfloat16" in dtypes:
        return "bf16"
    return "float"


# ---------------------------------------------------------------- what ONNX Runtime runs


def _session_options(threads: int) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    return so


def runtime_graph(path: str | Path, out: Path, threads: int, device: str = "cpu") -> Path:
    """Save the graph ONNX Runtime runs after its own optimization (default level, ORT_ENABLE_ALL)
    to `out`; initializers go to `out.name + '.data'` so models over 2 GB work."""
    import onnxruntime as ort

    out.parent.mkdir(parents=True, exist_ok=True)
    so = _session_options(threads)
    so.optimized_model_filepath = str(out)
    so.add_session_config_entry("session.optimized_model_external_initializers_file_name", out.name + ".data")
    so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    ort.InferenceSession(str(path), so, providers=providers)
    return out


def profile(path: str | Path, inputs: dict[str, Any], work: Path, threads: int, graph: GraphFacts | None,
            device: str = "cpu", budget_s: float = 1.0, max_runs: int = 20) -> RuntimeProfile:
    """Kernel time per run by kind, from ONNX Runtime's profiler (a separate session, after the
    latency measurement, so profiling overhead never enters a reported latency)."""
    import onnxruntime as ort

    from optimize.runtime import feeds_for

    work.mkdir(parents=True, exist_ok=True)
    so = _session_options(threads)
    so.enable_profiling = True
    so.profile_file_prefix = str(work / "profile")
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    sess = ort.InferenceSession(str(path), so, providers=providers)
    feeds = feeds_for(sess, inputs)
    t0 = time.perf_counter()
    sess.run(None, feeds)  # warm-up (its events are dropped below)
    first = time.perf_counter() - t0
    runs = max(3, min(max_runs, int(budget_s / max(first, 1e-4))))
    for _ in range(runs):
        sess.run(None, feeds)
    events = json.loads(Path(sess.end_profiling()).read_text())
    kinds = _node_kinds(graph)
    per_node: dict[str, list[float]] = {}
    node_op: dict[str, str] = {}
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        name = e["name"][: -len("_kernel_time")]
        per_node.setdefault(name, []).append(float(e.get("dur", 0)) / 1000.0)
        node_op[name] = str(e.get("args", {}).get("op_name", "?"))
    ms_by_kind: Counter[str] = Counter()
    op_ms: Counter[tuple[str, str]] = Counter()
    op_nodes: Counter[tuple[str, str]] = Counter()
    for name, durs in per_node.items():
        timed = durs[-runs:] if len(durs) > runs else durs  # drop the warm-up run's event
        ms = sum(timed) / runs
        op = node_op[name]
        kind = kinds.get(name) or _overhead_kind(op)
        ms_by_kind[kind] += ms
        op_ms[(op, kind)] += ms
        op_nodes[(op, kind)] += 1
    total = sum(ms_by_kind.values())
    top = sorted(op_ms.items(), key=lambda kv: -kv[1])[:8]
    batch = int(len(next(iter(inputs.values())))) if inputs else 0
    return RuntimeProfile(
        runs=runs, threads=threads, batch=batch, total_kernel_ms=total,
        ms_by_kind={k: v for k, v in sorted(ms_by_kind.items(), key=lambda kv: -kv[1])},
        share_by_kind={k: (v / total if total else 0.0) for k, v in sorted(ms_by_kind.items(), key=lambda kv: -kv[1])},
        top_ops=[OpTime(op=op, kind=kind, ms=ms, share=ms / total if total else 0.0, nodes=op_nodes[(op, kind)])
                 for (op, kind), ms in top],
    )


def _node_kinds(graph: GraphFacts | None) -> dict[str, str]:
    """Node name → kernel kind for the compute nodes of the optimized graph on disk."""
    if graph is None or not graph.path:
        return {}
    import onnx

    from optimize.inspect_onnx import all_graphs

    model = onnx.load(graph.path, load_external_data=False)
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:
        pass
    types: dict[str, str] = {}
    for g in all_graphs(model.graph):
        for vi in list(g.input) + list(g.output) + list(g.value_info):
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
                types[vi.name] = _dtype_name(vi.type.tensor_type.elem_type)
        for init in g.initializer:
            types[init.name] = _dtype_name(init.data_type)
    out: dict[str, str] = {}
    for g in all_graphs(model.graph):
        for n in g.node:
            if n.op_type in COMPUTE_OPS and n.name:
                out[n.name] = _kind(n, types)
    return out


def _overhead_kind(op: str) -> str:
    if op in QUANT_OPS:
        return "quantize_dequantize"
    if op == "Cast":
        return "cast"
    if op in INTEGER_OPS:
        return "integer"
    if op in WEIGHT_ONLY_OPS:
        return "int_weight_only"
    if op in FLOAT_COMPUTE_OPS:
        return "float"
    return "other"


def model_diagnostics(path: str | Path, label: str, work: Path, inputs: dict[str, Any] | None, threads: int,
                      device: str = "cpu") -> ModelDiagnostics:
    """File facts, ONNX Runtime's optimized graph and a short profile; a part that fails is null with
    the reason (diagnostics never fail a run)."""
    d = ModelDiagnostics()
    reasons: list[str] = []
    try:
        d.file = graph_facts(path, "file")
    except Exception as exc:
        reasons.append(f"file graph not read: {_first_line(exc)}")
    try:
        d.runtime = graph_facts(runtime_graph(path, work / f"{label}.ort-optimized.onnx", threads, device), "onnxruntime")
    except Exception as exc:
        reasons.append(f"ONNX Runtime's optimized graph not saved: {_first_line(exc)}")
    if inputs:
        try:
            d.profile = profile(path, inputs, work / f"{label}-profile", threads, d.runtime, device)
        except Exception as exc:
            reasons.append(f"not profiled: {_first_line(exc)}")
    else:
        reasons.append("not profiled: no inputs")
    d.reason = "; ".join(reasons) or None
    return d


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:200] if text else ''}"


# ---------------------------------------------------------------- causes


def likely_causes(diag: Diagnostics, *, speedup: float | None, sparsity: float | None = None,
                  params_removed: float | None = None, input_sparsity: float | None = None) -> list[str]:
    """When the output is slower than the input (speedup < 1), the causes the evidence supports.
    `sparsity` is the output's share of zero weights, given when a pass pruned (int8 rounding also makes
    zeros, which integer kernels do not care about), `input_sparsity` the input's: only zeros the
    pipeline added are blamed (a mel filterbank or a windowed STFT ships with a quarter zero)."""
    if speedup is None or speedup >= 1.0:
        return []
    out_f, out_rt, prof = diag.output.file, diag.output.runtime, diag.output.profile
    in_rt = diag.input.runtime
    causes: list[str] = []
    int_kernels = (out_rt or out_f).kernels.get("integer", 0) if (out_rt or out_f) else 0
    if int_kernels and diag.int8_dot_product is False:
        causes.append(
            "no int8 dot-product instructions on this CPU (no VNNI/AMX): int8 matmul compute gains at most ~1.33x "
            "over FP32 here, so Quantize/Dequantize overhead can outweigh it"
        )
    if out_f is not None and out_f.qoperator_per_channel:
        causes.append(
            f"QOperator format with per-channel weights ({out_f.qoperator_per_channel} QLinearConv/QLinearMatMul/QGemm "
            "nodes): ONNX Runtime's CPU kernels for that layout are slow; quantize in the QDQ format "
            "(quantize.format: qdq) or dynamically"
        )
    if out_rt is not None and (out_rt.qdq_pairs_unfused or out_rt.dequantized_weights_to_float):
        causes.append(
            f"ONNX Runtime did not fuse the Q/DQ nodes into integer kernels: {out_rt.qdq_pairs_unfused} "
            f"Quantize→Dequantize pairs and {out_rt.dequantized_weights_to_float} weights dequantized into float "
            "kernels remain in its optimized graph (a torch fake-quant export does this); materialize the model "
            "with ONNX Runtime's quantizer"
        )
    slow_int = _slower_integer_kernels(diag)
    g = out_rt or out_f
    if g is not None and prof is not None and prof.total_kernel_ms > 0:
        qshare = prof.share_by_kind.get("quantize_dequantize", 0.0)
        n_compute = sum(g.kernels.values()) or 1
        per_layer_us = 1000.0 * sum(prof.ms_by_kind.get(k, 0.0) for k in KINDS) / n_compute
        per_layer_w = sum(g.weights_by_kind.values()) / n_compute
        quantized = bool(int_kernels or (out_f and out_f.ops.get("QuantizeLinear")))
        # small layers are the cause only where the quantizing shows in the time (or kernels are µs-short)
        # (not when the integer kernels alone outlast the float ones: then they are the cost, named below)
        small = per_layer_w < TINY_LAYER_WEIGHTS and qshare >= 0.05 and not slow_int
        if qshare >= 0.2 or (quantized and (per_layer_us < 20.0 or small)):
            causes.append(
                f"tiny layers: {n_compute} compute kernels average {per_layer_w:,.0f} weight elements and "
                f"{per_layer_us:.1f} µs each, so the fixed cost of quantizing activations is not paid back "
                f"(Quantize/Dequantize nodes take {qshare:.0%} of the kernel time)"
            )
    fp16_file = (out_f.kernels.get("fp16", 0) + out_f.kernels.get("bf16", 0)) if out_f else 0
    if fp16_file and out_rt is not None and (out_rt.kernels.get("float", 0) or out_rt.casts):
        causes.append(
            f"fp16/bf16 on this runtime: {out_rt.kernels.get('float', 0)} compute kernels run in float32 and "
            f"{out_rt.casts} Cast nodes convert back and forth in ONNX Runtime's optimized graph (no fast "
            "half-precision CPU kernels)"
        )
    if slow_int:
        causes.append(slow_int)
    added = sparsity - (input_sparsity or 0.0) if sparsity is not None else None
    if added is not None and added > 0.05 and (params_removed is None or params_removed < 0.01):
        had = f" ({input_sparsity:.0%} in the input)" if input_sparsity else ""
        causes.append(
            f"unstructured sparsity on a dense runtime: {sparsity:.0%} of the weights are zero{had} but no tensor "
            "shrank; ONNX Runtime's CPU kernels multiply the zeros too (structured pruning removes work)"
        )
    if not causes and out_rt is not None and in_rt is not None and out_rt.nodes > in_rt.nodes:
        causes.append(
            f"the optimized output graph runs more nodes than the input's ({in_rt.nodes} → {out_rt.nodes})"
        )
    if not causes:
        causes.append("no known cause identified; compare diagnostics.input and diagnostics.output (kernels, profile)")
    return causes


def _slower_integer_kernels(diag: Diagnostics) -> str | None:
    """The output's integer kernels, profiled, taking longer (by 1.2x or more) than the float kernel
    time they replaced (the input's float compute minus the output's), with the ops named."""
    in_p, out_p = diag.input.profile, diag.output.profile
    if in_p is None or out_p is None:
        return None
    int_ms = out_p.ms_by_kind.get("integer", 0.0)
    replaced = in_p.ms_by_kind.get("float", 0.0) - out_p.ms_by_kind.get("float", 0.0)
    if int_ms <= 0 or replaced <= 0 or int_ms < 1.2 * replaced:
        return None
    ops = [o for o in out_p.top_ops if o.kind == "integer"]
    listed = ", ".join(f"{o.nodes} {o.op} {o.ms:.2f} ms" for o in ops)
    advice = (
        "; ConvInteger (dynamic int8 convolution) has no fast CPU kernel in ONNX Runtime: quantize convolutions "
        "statically (quantize.mode: static, the QDQ format) or keep them float (quantize.format: auto chooses)"
        if any(o.op == "ConvInteger" for o in ops) else ""
    )
    return (
        f"int8 kernels slower than the float ones they replaced: {int_ms:.2f} ms per run ({listed}) against "
        f"{replaced:.2f} ms of float compute in the input{advice}"
    )


def diagnose(input_path: str | Path, output_path: str | Path, work: Path, inputs: dict[str, Any] | None,
             threads: int, device: str = "cpu", *, speedup: float | None = None, sparsity: float | None = None,
             params_removed: float | None = None, input_sparsity: float | None = None) -> Diagnostics:
    from optimize.hardware import has_int8_dot_product

    work.mkdir(parents=True, exist_ok=True)
    diag = Diagnostics(
        input=model_diagnostics(input_path, "input", work, inputs, threads, device),
        output=model_diagnostics(output_path, "output", work, inputs, threads, device),
        int8_dot_product=has_int8_dot_product(),
        runtime_settings={"provider": "CUDAExecutionProvider" if device == "cuda" else "CPUExecutionProvider",
                          "threads": threads, "graph_optimization_level": "ORT_ENABLE_ALL (default)",
                          "allow_spinning": 0},
    )
    diag.likely_causes = likely_causes(diag, speedup=speedup, sparsity=sparsity, params_removed=params_removed,
                                       input_sparsity=input_sparsity)
    return diag


def summary_findings(diag: Diagnostics) -> list[str]:
    """One-line findings worth reading even when the output is not slower."""
    out: list[str] = []
    f, rt = diag.output.file, diag.output.runtime
    if f is not None and rt is not None:
        quantized_file = bool(f.kernels.get("integer") or f.kernels.get("int_weight_only")) or \
            f.ops.get("DequantizeLinear", 0) > 0
        if quantized_file and not (rt.kernels.get("integer") or rt.kernels.get("int_weight_only")):
            out.append("the output holds quantized tensors but ONNX Runtime runs no integer kernels for it "
                       "(see diagnostics.output.runtime)")
        if rt.qdq_pairs_unfused or rt.dequantized_weights_to_float:
            out.append(f"{rt.qdq_pairs_unfused} Quantize→Dequantize pairs and {rt.dequantized_weights_to_float} "
                       "dequantized weights stay unfused in ONNX Runtime's optimized graph")
    return out


__all__ = ["Diagnostics", "ModelDiagnostics", "GraphFacts", "OpTime", "RuntimeProfile", "diagnose", "graph_facts",
           "likely_causes", "runtime_graph", "profile", "summary_findings"]

