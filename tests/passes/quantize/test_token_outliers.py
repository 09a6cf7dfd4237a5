"""passes/quantize/token_outliers.py: `per_token: auto` scales per token only the MatMuls whose
input, on the user's data, has tokens far larger than the median token."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from helpers import make_ctx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from optimize.handle import TensorSpec  # noqa: E402
from passes.quantize import ort as ort_calls  # noqa: E402
from passes.quantize.config import QuantizeConfig  # noqa: E402
from passes.quantize.token_outliers import _ratio  # noqa: E402

D, H, T = 32, 96, 16
INPUTS = [TensorSpec("x", ("batch", T, D))]


def two_mlps(path: Path) -> Path:
    """Two FFNs on the same tokens: `down_raw` reads Relu(x · W), whose outlier tokens stay outliers;
    `down_normed` reads Relu of each token divided by its own max |x| first, so no token stands out."""
    rng = np.random.default_rng(0)
    w = lambda name, k, n: numpy_helper.from_array((rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32), name)  # noqa: E731
    nodes = [helper.make_node("MatMul", ["x", "w_up_raw"], ["h_raw"], name="up_raw"),
             helper.make_node("Relu", ["h_raw"], ["a_raw"], name="act_raw"),
             helper.make_node("MatMul", ["a_raw", "w_down_raw"], ["y_raw"], name="down_raw"),
             helper.make_node("Abs", ["x"], ["ax"]), helper.make_node("ReduceMax", ["ax"], ["mx"], axes=[-1], keepdims=1),
             helper.make_node("Div", ["x", "mx"], ["xn"]),
             helper.make_node("MatMul", ["xn", "w_up_normed"], ["h_normed"], name="up_normed"),
             helper.make_node("Relu", ["h_normed"], ["a_normed"], name="act_normed"),
             helper.make_node("MatMul", ["a_normed", "w_down_normed"], ["y_normed"], name="down_normed"),
             helper.make_node("Add", ["y_raw", "y_normed"], ["y"])]
    inits = [w("w_up_raw", D, H), w("w_down_raw", H, D), w("w_up_normed", D, H), w("w_down_normed", H, D)]
    graph = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", T, D])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", T, D])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def data_yaml(folder: Path) -> str:
    """32 sequences; the first token of each 40x larger than the rest (an attention sink)."""
    folder.mkdir(parents=True, exist_ok=True)
    x = np.random.default_rng(1).standard_normal((32, T, D)).astype(np.float32)
    x[:, 0] *= 40.0
    np.savez(folder / "cal.npz", x=x)
    return f"schema_version: 1\nmeasure: {{batch: 8}}\ndata:\n  calibration: {{source: '{folder / 'cal.npz'}'}}\npasses: []\n"


def quantize(tmp_path: Path, cfg: QuantizeConfig, config_text: str | None) -> tuple[dict, list[str], Path]:
    src = two_mlps(tmp_path / "m.onnx")
    out = tmp_path / "q.onnx"
    metrics: dict = {}
    notes: list[str] = []
    ctx = make_ctx(tmp_path / "work", config_text, inputs=INPUTS) if config_text else None
    ort_calls.quantize_file(cfg, src, out, ctx, False, metrics, notes)
    return metrics, notes, out


def per_token_nodes(path: Path) -> int:
    return sum(n.op_type == "DynamicQuantizeMatMul" and n.name.endswith("_tok_int8") for n in onnx.load(str(path)).graph.node)


def test_only_the_matmul_whose_tokens_stand_out_is_scaled_per_token(tmp_path):
    cfg = QuantizeConfig(mode="dynamic", per_token="auto", reduce_range=False)
    metrics, notes, out = quantize(tmp_path, cfg, data_yaml(tmp_path / "data"))
    ratios = metrics["per_token_ratios"]
    assert ratios["down_raw"] > 10 > 4 > ratios["down_normed"], ratios
    assert metrics["per_token_matmuls"] == 1 and per_token_nodes(out) == 1
    assert any(n.startswith("per_token auto: 1 of 2") and "data.calibration" in n for n in notes), notes


def test_a_higher_ratio_bar_scales_none_and_says_so(tmp_path):
    cfg = QuantizeConfig(mode="dynamic", per_token="auto", per_token_ratio=1000.0, reduce_range=False)
    metrics, notes, out = quantize(tmp_path, cfg, data_yaml(tmp_path / "data"))
    assert per_token_nodes(out) == 0 and metrics["per_token_matmuls"] == 0
    assert any("0 of 2" in n and "all scaled per call" in n for n in notes)


def test_without_user_data_every_matmul_after_an_activation_is_scaled(tmp_path):
    cfg = QuantizeConfig(mode="dynamic", per_token="auto", reduce_range=False)
    metrics, notes, out = quantize(tmp_path, cfg, None)
    assert metrics["per_token_matmuls"] == 2 and "per_token_ratios" not in metrics
    assert any("no data" in n for n in notes)


def test_the_ratio_leaves_padding_out():
    x = np.ones((2, 4, 3), np.float32)
    x[0, 0] = 8.0  # a real outlier token
    x[1, 3] = 100.0  # a padding row: not a token the kernel's scale should answer for
    mask = np.array([[1, 1, 1, 1], [1, 1, 1, 0]])
    assert _ratio(x, mask) == pytest.approx(8.0)
    assert _ratio(x, None) == pytest.approx(100.0)
    assert _ratio(np.zeros((2, 3), np.float32), None) is None
