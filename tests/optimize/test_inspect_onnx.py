"""optimize.inspect_onnx: weights of weighted ops wherever they live (initializers, subgraphs,
Constant nodes), their bits (int8 behind DequantizeLinear / MatMulInteger, fp16), and op counts
with subgraphs included. Each count is checked against one made independently here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from tiny_models import HIDDEN, IN_FEATURES, OUT_FEATURES

from optimize.inspect_onnx import iter_weight_uses, op_counts, weight_stats

MLP_WEIGHTS = IN_FEATURES * HIDDEN + HIDDEN * OUT_FEATURES  # 192


def _independent_mlp_count(path: Path) -> tuple[int, int]:
    """Total and non-zero elements of initializers with ndim >= 2 (the MLP's weight matrices)."""
    arrays = [numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer]
    mats = [a for a in arrays if a.ndim >= 2]
    return sum(a.size for a in mats), sum(int(np.count_nonzero(a)) for a in mats)


def test_plain_mlp_weights_match_an_independent_count(mlp_onnx: Path, mlp) -> None:
    stats = weight_stats(mlp_onnx)
    total, nonzero = _independent_mlp_count(mlp_onnx)
    assert total == MLP_WEIGHTS
    assert stats.total == total
    assert stats.nonzero == nonzero
    assert stats.bit_sum == 32 * total
    assert stats.by_dtype() == {"float": total}
    assert sorted(t.count for t in stats.tensors) == [HIDDEN * OUT_FEATURES, IN_FEATURES * HIDDEN]
    assert {t.op_type for t in stats.tensors} == {"Gemm"}
    # the torch module's weight count agrees too
    assert stats.total == sum(p.numel() for p in mlp.parameters() if p.ndim >= 2)


def test_zeros_are_counted(tmp_path: Path, mlp_onnx: Path) -> None:
    model = onnx.load(str(mlp_onnx))
    first = next(t for t in model.graph.initializer if len(t.dims) == 2)
    arr = numpy_helper.to_array(first).copy()
    arr.flat[:37] = 0.0
    first.CopyFrom(numpy_helper.from_array(arr, first.name))
    onnx.save_model(model, str(tmp_path / "z.onnx"))
    stats = weight_stats(tmp_path / "z.onnx")
    total, nonzero = _independent_mlp_count(tmp_path / "z.onnx")
    assert stats.total == MLP_WEIGHTS
    assert stats.nonzero == nonzero
    assert stats.total - stats.nonzero >= 37


def test_weights_in_if_subgraphs_and_constant_nodes(subgraph_model) -> None:
    stats = weight_stats(subgraph_model.path)
    by_name = {t.name: t for t in stats.tensors}
    assert set(by_name) == {"W0", "Wc", "We", "Wm"}  # the bias B0 is not a weight
    expected = subgraph_model.weight_arrays
    assert stats.total == sum(a.size for a in expected) == 16 + 12 + 12 + 6
    assert stats.nonzero == sum(int(np.count_nonzero(a)) for a in expected) == 46 - 5
    assert by_name["W0"].op_type == "Gemm"
    assert by_name["Wc"].op_type == "MatMul" and by_name["Wc"].count == 12 and by_name["Wc"].nonzero == 11
    assert by_name["We"].count == 12
    assert by_name["Wm"].count == 6
    assert all(t.bits == 32 for t in stats.tensors)


def test_weight_uses_point_at_the_stored_tensor(subgraph_model) -> None:
    model = onnx.load(str(subgraph_model.path))
    uses = {u.name: u for u in iter_weight_uses(model)}
    assert uses["Wc"].constant_node is not None and uses["Wc"].constant_node.op_type == "Constant"
    assert uses["Wc"].graph.name == "then_branch"
    assert uses["We"].constant_node is None and uses["We"].graph.name == "else_branch"
    assert uses["Wm"].graph.name == "if_const"
    assert uses["W0"].input_index == 1
    assert np.array_equal(numpy_helper.to_array(uses["Wc"].tensor), subgraph_model.then_weight)


def test_op_counts_include_subgraphs(subgraph_model) -> None:
    # main: Gemm, If, Constant, MatMul; then: Constant, MatMul; else: MatMul
    assert op_counts(subgraph_model.path) == {"Constant": 2, "Gemm": 1, "If": 1, "MatMul": 3}


def test_op_counts_of_the_mlp(mlp_onnx: Path) -> None:
    model = onnx.load(str(mlp_onnx))
    assert op_counts(model) == dict(sorted({"Gemm": 2, "Relu": 1}.items()))
    assert op_counts(mlp_onnx) == op_counts(model)


def test_op_counts_name_non_default_domains(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Gelu", ["X"], ["Y"], domain="com.microsoft"), helper.make_node("Relu", ["Y"], ["Z"])],
        "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("Z", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    assert op_counts(model) == {"Relu": 1, "com.microsoft.Gelu": 1}


def test_dynamic_int8_matmulinteger_weights_count_8_bits(tmp_path: Path, mlp_onnx: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = tmp_path / "q.onnx"
    quantize_dynamic(str(mlp_onnx), str(out), weight_type=QuantType.QInt8)
    ops = op_counts(out)
    assert ops.get("MatMulInteger") == 2
    assert "Gemm" not in ops
    stats = weight_stats(out)
    assert {t.op_type for t in stats.tensors} == {"MatMulInteger"}
    assert stats.total == MLP_WEIGHTS
    assert all(t.bits == 8 and t.dtype == "int8" for t in stats.tensors)
    assert stats.bit_sum == 8 * MLP_WEIGHTS
    assert stats.bit_sum / (32 * stats.total) == 0.25  # quantization_ratio for int8
    # independent: the int8 initializers of rank 2
    int8 = [numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer
            if t.data_type == TensorProto.INT8 and len(t.dims) == 2]
    assert sum(a.size for a in int8) == stats.total
    assert sum(int(np.count_nonzero(a)) for a in int8) == stats.nonzero


def test_static_qdq_weights_behind_dequantizelinear_count_8_bits(tmp_path: Path, mlp_onnx: Path) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(0)
            self._it = iter([{"x": rng.standard_normal((4, IN_FEATURES)).astype(np.float32)} for _ in range(4)])

        def get_next(self):
            return next(self._it, None)

    out = tmp_path / "qdq.onnx"
    quantize_static(str(mlp_onnx), str(out), Reader(), quant_format=QuantFormat.QDQ,
                    weight_type=QuantType.QInt8, per_channel=True)
    assert op_counts(out).get("DequantizeLinear", 0) >= 2
    stats = weight_stats(out)
    assert stats.total == MLP_WEIGHTS
    assert {t.op_type for t in stats.tensors} == {"Gemm"}
    assert all(t.bits == 8 for t in stats.tensors), [(t.name, t.bits) for t in stats.tensors]
    assert stats.by_dtype() == {"int8": MLP_WEIGHTS}
    uses = list(iter_weight_uses(onnx.load(str(out))))
    assert all([v.op_type for v in u.via] == ["DequantizeLinear"] for u in uses)


def _matmul_model(weight: np.ndarray, x_type: int, via: str | None = None) -> onnx.ModelProto:
    nodes = []
    w_name = "W"
    if via == "Cast":
        nodes.append(helper.make_node("Cast", ["W"], ["W_cast"], to=TensorProto.FLOAT))
        w_name = "W_cast"
    nodes.append(helper.make_node("MatMul", ["X", w_name], ["Y"]))
    graph = helper.make_graph(
        nodes,
        "mm",
        [helper.make_tensor_value_info("X", x_type, ["N", weight.shape[0]])],
        [helper.make_tensor_value_info("Y", x_type, ["N", weight.shape[1]])],
        initializer=[numpy_helper.from_array(weight, "W")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_fp16_weights_count_16_bits() -> None:
    w = np.random.default_rng(0).standard_normal((6, 5)).astype(np.float16)
    stats = weight_stats(_matmul_model(w, TensorProto.FLOAT16))
    assert stats.total == 30
    assert stats.bit_sum == 16 * 30
    assert stats.by_dtype() == {"float16": 30}


def test_fp16_weight_through_cast_counts_16_bits() -> None:
    w = np.random.default_rng(0).standard_normal((6, 5)).astype(np.float16)
    stats = weight_stats(_matmul_model(w, TensorProto.FLOAT, via="Cast"))
    assert [(t.name, t.bits, t.count) for t in stats.tensors] == [("W", 16, 30)]


def test_shared_weight_is_counted_once() -> None:
    w = np.ones((4, 4), np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["H"]), helper.make_node("MatMul", ["H", "W"], ["Y"])],
        "shared",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 4])],
        initializer=[numpy_helper.from_array(w, "W")],
    )
    stats = weight_stats(helper.make_model(graph))
    assert stats.total == 16


def test_model_without_weighted_ops_has_no_weights() -> None:
    graph = helper.make_graph(
        [helper.make_node("Add", ["X", "B"], ["Y"])],
        "add",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 2])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, 2])],
        initializer=[numpy_helper.from_array(np.ones((2, 2), np.float32), "B")],
    )
    stats = weight_stats(helper.make_model(graph))
    assert stats.total == 0 and stats.tensors == []


@pytest.mark.parametrize("ndim", [1, 2])
def test_gather_counts_only_embedding_tables(ndim: int) -> None:
    table = np.arange(20, dtype=np.float32).reshape((20,) if ndim == 1 else (5, 4))
    graph = helper.make_graph(
        [helper.make_node("Gather", ["T", "I"], ["Y"])],
        "gather",
        [helper.make_tensor_value_info("I", TensorProto.INT64, [3])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(table, "T")],
    )
    stats = weight_stats(helper.make_model(graph))
    assert stats.total == (0 if ndim == 1 else 20)


def test_same_name_in_sibling_subgraphs_counts_both() -> None:
    def branch(out: str, value: float) -> onnx.GraphProto:
        return helper.make_graph(
            [helper.make_node("MatMul", ["X", "W"], [out])],
            f"{out}_branch",
            [],
            [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", 3])],
            initializer=[numpy_helper.from_array(np.full((4, 3), value, np.float32), "W")],
        )

    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["Y"], then_branch=branch("a", 1.0), else_branch=branch("b", 0.0))],
        "siblings",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    stats = weight_stats(model)
    assert stats.total == 24
    assert stats.nonzero == 12  # the then-branch W is all ones, the else-branch W all zeros
