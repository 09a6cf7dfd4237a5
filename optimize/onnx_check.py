"""The ONNX checker, for graphs that use ONNX Runtime's own ops in the ONNX domain.

ONNX Runtime registers a few operators under the default (ai.onnx) domain that ONNX itself does
not define — `SimplifiedLayerNormalization`, which ONNX Runtime GenAI's model builder writes into
every decoder it makes, is one. The checker rejects such a node ("No Op registered for
SimplifiedLayerNormalization"), so a model ONNX Runtime runs would be refused as invalid.
`check_onnx` checks those graphs in full all the same: it re-checks a copy of the graph (weights
left in their files, never loaded) whose ONNX-Runtime-only nodes sit in a domain of their own,
which the checker leaves to the runtime, as it does `com.microsoft` ops. A model with an op that
neither ONNX nor ONNX Runtime knows is still refused.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

RUNTIME_DOMAIN = "ai.onnxruntime.onnx_domain"  # a name of our own: the checker has no schemas for it


@functools.cache
def runtime_only_ops() -> frozenset[str]:
    """Ops ONNX Runtime registers in the ONNX domain that ONNX does not define."""
    import onnx

    try:
        from onnxruntime.capi import _pybind_state
    except ImportError:
        return frozenset()
    ours = {s.name for s in _pybind_state.get_all_operator_schema() if s.domain in ("", "ai.onnx")}
    theirs = {s.name for s in onnx.defs.get_all_schemas_with_history() if s.domain in ("", "ai.onnx")}
    return frozenset(ours - theirs)


def check_onnx(path: str | Path, full_check: bool = False) -> None:
    """onnx.checker.check_model on the file at `path`; raises what the checker raises."""
    import onnx

    path = Path(path)
    try:
        onnx.checker.check_model(str(path), full_check=full_check)
        return
    except onnx.checker.ValidationError as exc:
        if "No Op registered for" not in str(exc) or not runtime_only_ops():
            raise
        first = exc
    model = onnx.load(str(path), load_external_data=False)
    if not _move_runtime_ops(model.graph):
        raise first
    model.opset_import.append(onnx.helper.make_opsetid(RUNTIME_DOMAIN, 1))
    if not _has_external_data(model):  # checked in memory: nothing written beside the model
        onnx.checker.check_model(model, full_check=full_check)
        return
    # external data resolves relative to the model's folder: a hidden copy of the graph (no weights)
    # beside it, removed at once (a read-only folder then refuses the check with the OSError)
    copy = path.with_name(f".{path.name}.{os.getpid()}.check.onnx")
    try:
        onnx.save(model, str(copy))
        onnx.checker.check_model(str(copy), full_check=full_check)
    finally:
        copy.unlink(missing_ok=True)


def _has_external_data(model: object) -> bool:
    import onnx

    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)  # type: ignore[attr-defined]


def _move_runtime_ops(graph: object) -> int:
    """Put the graph's ONNX-Runtime-only nodes (subgraphs included) in RUNTIME_DOMAIN; how many."""
    import onnx

    moved = 0
    for node in graph.node:  # type: ignore[attr-defined]
        if node.domain in ("", "ai.onnx") and node.op_type in runtime_only_ops():
            node.domain = RUNTIME_DOMAIN
            moved += 1
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                moved += _move_runtime_ops(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                moved += sum(_move_runtime_ops(g) for g in attr.graphs)
    return moved
