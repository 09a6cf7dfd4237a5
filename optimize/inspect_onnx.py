"""Facts read from an ONNX file: op counts (subgraphs included), weight tensors and their bits.

"Weights" are the parameters of weighted ops (Conv, ConvTranspose, Gemm, MatMul, Gather used as an
embedding, and their quantized forms) wherever they live: initializers, Constant nodes, and the
bodies of If/Loop/Scan subgraphs. A weight reached through DequantizeLinear / Cast / Transpose /
Reshape is counted at its stored source with the source's bits, so an int8 QDQ weight counts as 8
bits and a float16 one as 16.

Logical bits: a tensor may hold fewer distinct values than its type allows (binary/ternary weights
are stored as int8 codes {-1, 0, 1}, the smallest integer type ONNX Runtime's kernels execute). The
pass that writes such a file records the logical bits per stored initializer in the model's
metadata (`metadata_props` entry `optimize.logical_bits`, JSON {initializer name: bits}).
`weight_stats` reads it and accepts a claim only for an integer tensor of the main graph whose
distinct values fit in that many bits (≤ 2**bits), so a stale or wrong entry is ignored and
the stored bits count.

No library gives this count (onnx and onnxruntime count nodes, not weights by consumer op), so it is
written here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# op type -> indices of inputs that are weights
WEIGHT_INPUTS: dict[str, tuple[int, ...]] = {
    "Conv": (1,),
    "ConvTranspose": (1,),
    "Gemm": (0, 1),
    "MatMul": (0, 1),
    "Gather": (0,),
    "ConvInteger": (1,),
    "MatMulInteger": (0, 1),
    "QLinearConv": (3,),
    "QLinearMatMul": (0, 3),
    "MatMulNBits": (1,),
    "DynamicQuantizeMatMul": (1,),
    "QGemm": (3,),
    "Attention": (1,),
    "LSTM": (1, 2),
    "GRU": (1, 2),
    "RNN": (1, 2),
}
# ops a weight may pass through between its stored form and the weighted op
PASS_THROUGH = {"DequantizeLinear", "Cast", "Transpose", "Reshape", "Identity", "Unsqueeze", "Squeeze", "Flatten"}

LOGICAL_BITS_KEY = "optimize.logical_bits"

BITS = {
    "FLOAT": 32, "FLOAT16": 16, "BFLOAT16": 16, "DOUBLE": 64, "INT8": 8, "UINT8": 8, "INT4": 4, "UINT4": 4,
    "INT16": 16, "UINT16": 16, "INT32": 32, "INT64": 64, "FLOAT8E4M3FN": 8, "FLOAT8E5M2": 8, "BOOL": 8,
}


@dataclass
class WeightTensor:
    name: str
    op_type: str  # the weighted op that consumes it
    count: int
    nonzero: int
    bits: int  # stored bits per element (what the tensor's type takes)
    dtype: str
    logical_bits: int | None = None  # fewer bits the values need, when the file records it (see above)

    @property
    def effective_bits(self) -> int:
        return self.logical_bits if self.logical_bits is not None else self.bits


@dataclass
class WeightStats:
    tensors: list[WeightTensor] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(t.count for t in self.tensors)

    @property
    def nonzero(self) -> int:
        return sum(t.nonzero for t in self.tensors)

    @property
    def bit_sum(self) -> int:
        """Σ stored bits × count."""
        return sum(t.count * t.bits for t in self.tensors)

    @property
    def has_logical(self) -> bool:
        return any(t.logical_bits is not None for t in self.tensors)

    @property
    def logical_bit_sum(self) -> int:
        """Σ logical bits × count (stored bits where no logical bits are recorded)."""
        return sum(t.count * t.effective_bits for t in self.tensors)

    def counts_by_bits(self, logical: bool = False) -> dict[str, int]:
        """{bits: weight count}, by stored or logical bits."""
        c: Counter[str] = Counter()
        for t in self.tensors:
            c[str(t.effective_bits if logical else t.bits)] += t.count
        return dict(sorted(c.items(), key=lambda kv: int(kv[0])))

    def by_dtype(self) -> dict[str, int]:
        c: Counter[str] = Counter()
        for t in self.tensors:
            c[t.dtype] += t.count
        return dict(c)


def all_graphs(graph: Any) -> Iterator[Any]:
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.g and attr.g.ByteSize():
                yield from all_graphs(attr.g)
            for g in attr.graphs:
                yield from all_graphs(g)


def op_counts(path_or_model: Any) -> dict[str, int]:
    model = _as_model(path_or_model, load_data=False)
    c: Counter[str] = Counter()
    for g in all_graphs(model.graph):
        for n in g.node:
            key = n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
            c[key] += 1
    return dict(sorted(c.items()))


def _as_model(path_or_model: Any, load_data: bool = True) -> Any:
    import onnx

    if isinstance(path_or_model, (str, Path)):
        return onnx.load(str(path_or_model), load_external_data=load_data)
    return path_or_model


@dataclass
class WeightUse:
    """One use of a stored weight by a weighted op. `tensor` is the stored TensorProto itself (an
    initializer, or a Constant node's `value`), so a caller may rewrite it in place."""

    name: str  # the stored tensor's name (initializer name or Constant output)
    tensor: Any  # onnx.TensorProto
    graph: Any  # the GraphProto holding the initializer or Constant node
    constant_node: Any  # the Constant NodeProto, or None for an initializer
    node: Any  # the weighted node that consumes it
    input_index: int  # which input of `node`
    via: list[Any] = field(default_factory=list)  # pass-through nodes, weighted-op side first
    # Unique per stored tensor: the name, or NAME#2, NAME#3 for distinct tensors that reuse a name
    # in other subgraphs (legal: each subgraph is its own scope).
    key: str = ""


def iter_weight_uses(model: Any) -> Iterator[WeightUse]:
    """Every (stored weight, weighted op) pair over all graphs, in node order. A tensor used by
    several weighted ops is yielded once per use; 1-D Gather tables (index lookups) are skipped.

    Names resolve as ONNX scopes them: a subgraph sees its own initializers, Constant outputs and
    node outputs first, then its enclosing graphs', so sibling subgraphs may reuse a name."""
    keys: dict[int, str] = {}  # id(TensorProto) -> key
    taken: dict[str, int] = {}

    def key_of(name: str, tensor: Any) -> str:
        if id(tensor) not in keys:
            taken[name] = taken.get(name, 0) + 1
            keys[id(tensor)] = name if taken[name] == 1 else f"{name}#{taken[name]}"
        return keys[id(tensor)]

    Scope = tuple[dict[str, tuple[Any, Any, Any]], dict[str, Any]]

    def walk(graph: Any, outer: list[Scope]) -> Iterator[WeightUse]:
        constants: dict[str, tuple[Any, Any, Any]] = {}  # name -> (TensorProto, graph, Constant node)
        producers: dict[str, Any] = {}
        for init in graph.initializer:
            constants[init.name] = (init, graph, None)
        for n in graph.node:
            for o in n.output:
                producers[o] = n
            if n.op_type == "Constant":
                for attr in n.attribute:
                    if attr.name == "value" and attr.t is not None:
                        constants[n.output[0]] = (attr.t, graph, n)
        chain = [(constants, producers), *outer]

        def source(name: str, via: list[Any], depth: int = 0) -> tuple[str, Any] | None:
            for consts, prods in chain:  # innermost scope first
                if name in consts:
                    return name, consts[name]
                if name in prods:
                    node = prods[name]
                    if depth > 8 or node.op_type not in PASS_THROUGH or not node.input:
                        return None
                    via.append(node)
                    return source(node.input[0], via, depth + 1)
            return None

        for n in graph.node:
            for i in WEIGHT_INPUTS.get(n.op_type, ()):
                if i >= len(n.input) or not n.input[i]:
                    continue
                via: list[Any] = []
                found = source(n.input[i], via)
                if found is None:
                    continue
                src, (tensor, holder, const_node) = found
                if n.op_type == "Gather" and len(tensor.dims) < 2:
                    continue  # a gathered index table, not an embedding
                yield WeightUse(src, tensor, holder, const_node, n, i, via, key_of(src, tensor))
            for attr in n.attribute:
                if attr.g and attr.g.ByteSize():
                    yield from walk(attr.g, chain)
                for g in attr.graphs:
                    yield from walk(g, chain)

    yield from walk(model.graph, [])


def weight_stats(path_or_model: Any) -> WeightStats:
    """Count weights (and their non-zeros and bits) of weighted ops over all graphs."""
    from onnx import TensorProto, numpy_helper

    from optimize.onnx_io import count_nonzero

    # From a path, external data is not loaded: an external tensor is counted in chunks straight
    # from its file (or read alone), so a model over 2 GB is never held whole in memory.
    base_dir = Path(path_or_model).parent if isinstance(path_or_model, (str, Path)) else None
    model = _as_model(path_or_model, load_data=base_dir is None)
    claims = logical_bits_claims(model)
    stats = WeightStats()
    seen: set[str] = set()
    for use in iter_weight_uses(model):
        if use.key in seen:
            continue
        seen.add(use.key)
        n, src, tensor = use.node, use.key, use.tensor
        dtype = TensorProto.DataType.Name(tensor.data_type)
        bits = BITS.get(dtype, 32)
        streamed = count_nonzero(tensor, base_dir) if n.op_type != "MatMulNBits" and src not in claims else None
        if streamed is not None:
            count = int(np.prod(tensor.dims, dtype=np.int64))
            stats.tensors.append(WeightTensor(src, n.op_type, count, streamed, bits, dtype.lower(), None))
            continue
        arr = numpy_helper.to_array(tensor, str(base_dir) if base_dir is not None else "")
        count = int(arr.size)
        if n.op_type == "MatMulNBits":
            bits = next((a.i for a in n.attribute if a.name == "bits"), 4)
            k = next((a.i for a in n.attribute if a.name == "K"), 0)
            nn = next((a.i for a in n.attribute if a.name == "N"), 0)
            count = int(k * nn) or count * 8 // bits
            nonzero = count  # packed: zeros are not directly countable
        else:
            nonzero = int(np.count_nonzero(arr))
        logical = None
        claim = claims.get(src)
        if (
            claim is not None and use.graph is model.graph and n.op_type != "MatMulNBits" and claim < bits
            and np.issubdtype(arr.dtype, np.integer) and len(np.unique(arr)) <= 2**claim
        ):
            logical = claim
        stats.tensors.append(WeightTensor(src, n.op_type, count, nonzero, bits, dtype.lower(), logical))
    return stats


def logical_bits_claims(path_or_model: Any) -> dict[str, int]:
    """The file's recorded logical bits {initializer name: bits} (unchecked; {} when none or unreadable)."""
    import json

    model = _as_model(path_or_model, load_data=False)
    for prop in model.metadata_props:
        if prop.key == LOGICAL_BITS_KEY:
            try:
                raw = json.loads(prop.value)
            except ValueError:
                return {}
            if not isinstance(raw, dict):
                return {}
            return {str(k): int(v) for k, v in raw.items() if isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 32}
    return {}


def logical_weight_bits(path_or_model: Any) -> int | None:
    """Σ logical bits × count of the weights when the file records logical bits that hold, else None
    (cheap when it records none: the metadata is read without the weights)."""
    if not logical_bits_claims(path_or_model):
        return None
    stats = weight_stats(path_or_model)
    return stats.logical_bit_sum if stats.has_logical else None
