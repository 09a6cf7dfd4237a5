"""Tiny ONNX models for the probe tests (inputs, shapes, parity by output type), built in code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = [helper.make_opsetid("", 17)]


def _save(graph: onnx.GraphProto, path: Path, metadata: dict[str, str] | None = None) -> Path:
    model = helper.make_model(graph, opset_imports=OPSET)
    model.ir_version = 8
    for k, v in (metadata or {}).items():
        model.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def scalar_input_model(path: Path) -> Path:
    """y[N, 4] = x[N, 4] · W + float(sr): a batched input beside a 0-d int64 sample-rate input."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32), "W")
    nodes = [
        helper.make_node("Cast", ["sr"], ["srf"], to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["x", "W"], ["h"]),
        helper.make_node("Add", ["h", "srf"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "scalar",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], initializer=[w],
    )
    return _save(graph, path)


def symbolic_hw_model(path: Path, metadata: dict[str, str] | None = None, name: str = "x") -> Path:
    """Conv 3→4 (3×3, pad 1) on x[batch, 3, H, W]: H and W symbolic, as exported detectors have."""
    w = numpy_helper.from_array(np.random.default_rng(1).standard_normal((4, 3, 3, 3)).astype(np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("Conv", [name, "W"], ["y"], pads=[1, 1, 1, 1])], "hw",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 3, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, "H", "W"])], initializer=[w],
    )
    return _save(graph, path, metadata)


def token_model(path: Path, vocab: int = 50) -> Path:
    """Embedding lookup of int64 input_ids[batch, seq], mean over the sequence → [batch, 8]."""
    e = numpy_helper.from_array(np.random.default_rng(2).standard_normal((vocab, 8)).astype(np.float32), "E")
    nodes = [
        helper.make_node("Gather", ["E", "input_ids"], ["h"]),
        helper.make_node("ReduceMean", ["h"], ["y"], axes=[1], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "tokens", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])], initializer=[e],
    )
    return _save(graph, path)


def argmax_model(path: Path) -> Path:
    """Class indices only: ArgMax(x[N, 16] · W) → int64[N]."""
    w = numpy_helper.from_array(np.random.default_rng(3).standard_normal((16, 5)).astype(np.float32), "W")
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["logits"]),
        helper.make_node("ArgMax", ["logits"], ["cls"], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "argmax", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("cls", TensorProto.INT64, ["N"])], initializer=[w],
    )
    return _save(graph, path)


def constant_output_model(path: Path) -> Path:
    """y = x · 0 + c: the same output for every input (the 1×1-image detector's failure mode)."""
    z = numpy_helper.from_array(np.zeros((8, 4), np.float32), "Z")
    c = numpy_helper.from_array(np.linspace(1, 2, 4, dtype=np.float32), "C")
    nodes = [helper.make_node("MatMul", ["x", "Z"], ["h"]), helper.make_node("Add", ["h", "C"], ["y"])]
    graph = helper.make_graph(
        nodes, "const", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], initializer=[z, c],
    )
    return _save(graph, path)


def odd_input_model(path: Path, kind: str) -> Path:
    """Models the tool cannot feed: 'none' (no inputs), 'string', 'zero' (a zero-size dim)."""
    if kind == "none":
        c = numpy_helper.from_array(np.ones((2,), np.float32), "C")
        graph = helper.make_graph([helper.make_node("Identity", ["C"], ["y"])], "none", [],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], initializer=[c])
        return _save(graph, path)
    if kind == "string":
        graph = helper.make_graph([helper.make_node("Identity", ["s"], ["y"])], "str",
                                  [helper.make_tensor_value_info("s", TensorProto.STRING, ["N"])],
                                  [helper.make_tensor_value_info("y", TensorProto.STRING, ["N"])])
        return _save(graph, path)
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "zero",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 0])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 0])])
    return _save(graph, path)
