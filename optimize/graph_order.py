"""Topological node order that counts what subgraphs read from the outer scope.

ONNX Runtime's quantizers re-sort a graph by the nodes' explicit inputs only, so an `If` whose
branch reads a value produced later in the outer graph can land before that producer (silero-vad's
fp16 export after dynamic quantization: the ONNX checker then refuses the model, while ONNX Runtime,
which counts implicit inputs, loads it). onnx offers no sort; onnx-ir's sort does not reach into
the model protos this tool edits in place, hence this small one (Kahn's algorithm, stable).
"""

from __future__ import annotations

import heapq
from typing import Any


def _subgraphs(node: Any) -> list[Any]:
    from onnx import AttributeProto

    out = []
    for attr in node.attribute:
        if attr.type == AttributeProto.GRAPH:
            out.append(attr.g)
        elif attr.type == AttributeProto.GRAPHS:
            out.extend(attr.graphs)
    return out


def outer_reads(graph: Any) -> set[str]:
    """Names a (sub)graph reads that it does not define itself (its implicit inputs)."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    defined |= {o for n in graph.node for o in n.output}
    reads = set()
    for node in graph.node:
        reads.update(i for i in node.input if i)
        for sub in _subgraphs(node):
            reads |= outer_reads(sub)
    reads.update(o.name for o in graph.output)
    return reads - defined


def sort_graph(graph: Any) -> bool:
    """Order `graph`'s nodes (and, recursively, its subgraphs') so every node follows the producers
    of what it and its subgraphs read; the order is kept where it already holds. Returns whether
    any graph changed; a cycle leaves the graph as it was."""
    changed = any([sort_graph(sub) for node in graph.node for sub in _subgraphs(node)])
    nodes = list(graph.node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    needs = []
    for i, node in enumerate(nodes):
        reads = {x for x in node.input if x}
        for sub in _subgraphs(node):
            reads |= outer_reads(sub)
        needs.append({producer[x] for x in reads if x in producer and producer[x] != i})
    users: list[list[int]] = [[] for _ in nodes]
    for i, deps in enumerate(needs):
        for d in deps:
            users[d].append(i)
    left = [len(d) for d in needs]
    ready = [i for i, n in enumerate(left) if n == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users[i]:
            left[u] -= 1
            if left[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(nodes) or order == list(range(len(nodes))):
        return changed
    graph.ClearField("node")
    graph.node.extend(nodes[i] for i in order)
    return True
