"""passes/quantize/token_scales.py: dynamic int8 with per-token input scales on an MLP's output
projection (or every MatMul), the rest left to ONNX Runtime's quantize_dynamic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from passes.quantize import ort as ort_calls  # noqa: E402
from passes.quantize.config import QuantizeConfig  # noqa: E402
from passes.quantize.token_scales import chosen_matmuls  # noqa: E402

D, H = 32, 96


def mlp_model(path: Path, seed: int = 0) -> Path:
    """x · γ → MatMul up → Relu → MatMul down: an FFN whose hidden activations are non-negative."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.uniform(0.5, 1.5, D).astype(np.float32), "gamma"),
             numpy_helper.from_array((rng.standard_normal((D, H)) / np.sqrt(D)).astype(np.float32), "w_up"),
             numpy_helper.from_array((rng.standard_normal((H, D)) / np.sqrt(H)).astype(np.float32), "w_down")]
    nodes = [helper.make_node("Mul", ["x", "gamma"], ["xn"], name="norm"),
             helper.make_node("MatMul", ["xn", "w_up"], ["h"], name="up"),
             helper.make_node("Relu", ["h"], ["a"], name="act"),
             helper.make_node("MatMul", ["a", "w_down"], ["y"], name="down")]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "t", D])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "t", D])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def tokens(seed: int = 1) -> np.ndarray:
    """8 sequences of 16 tokens; one token per sequence 40x larger (the outliers per-call scales flatten)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((8, 16, D)).astype(np.float32)
    x[:, 0] *= 40.0
    return x


def run(path: Path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_mlp_scope_chooses_the_matmul_after_the_activation_only(tmp_path):
    graph = onnx.load(str(mlp_model(tmp_path / "m.onnx"))).graph
    assert chosen_matmuls(graph, "mlp", None, []) == {"down"}
    assert chosen_matmuls(graph, "all", None, []) == {"up", "down"}
    assert chosen_matmuls(graph, "all", None, ["down"]) == {"up"}
    assert chosen_matmuls(graph, "all", ["up"], []) == {"up"}


@pytest.mark.parametrize("scope", ["mlp", "all"])
def test_per_token_scales_keep_small_tokens_that_one_scale_per_call_flattens(tmp_path, scope):
    src = mlp_model(tmp_path / "m.onnx")
    x = tokens()
    ref = run(src, x)[:, 1:]  # the ordinary tokens beside each sequence's outlier
    errors = {}
    # mlp: `up` kept float in both builds, so they differ only in how `down` scales its input
    keep = ["up"] if scope == "mlp" else []
    for name in ("none", scope):
        cfg = QuantizeConfig(mode="dynamic", per_token=name, reduce_range=False, exclude_nodes=keep)
        out = tmp_path / f"{name}.onnx"
        metrics: dict = {}
        ort_calls.quantize_file(cfg, src, out, None, False, metrics, [])
        errors[name] = float(np.abs(run(out, x)[:, 1:] - ref).mean() / np.abs(ref).mean())
        ops = [n.op_type for n in onnx.load(str(out)).graph.node]
        assert ops.count("MatMul") == len(keep)  # every other weight quantized, by one route or the other
        if name != "none":
            assert metrics["per_token_matmuls"] == (1 if scope == "mlp" else 2)
            assert ops.count("DynamicQuantizeMatMul") >= metrics["per_token_matmuls"]
        assert not list(tmp_path.glob("*.per-token.onnx*"))  # the scratch file is gone
    assert errors[scope] < 0.5 * errors["none"], errors


def test_per_token_needs_dynamic_8_bit_int8():
    with pytest.raises(ValueError, match="per_token"):
        QuantizeConfig(mode="static", per_token="mlp")
    with pytest.raises(ValueError, match="per_token"):
        QuantizeConfig(mode="dynamic", per_token="all", weight_type="uint8")


def test_no_mlp_found_is_said(tmp_path):
    src = mlp_model(tmp_path / "m.onnx")
    model = onnx.load(str(src))
    for n in model.graph.node:  # the activation gone: nothing reads an MLP's inner activation
        if n.op_type == "Relu":
            n.op_type = "Identity"
    onnx.save(model, str(src))
    notes: list[str] = []
    metrics: dict = {}
    ort_calls.quantize_file(QuantizeConfig(mode="dynamic", per_token="mlp", reduce_range=False), src,
                            tmp_path / "q.onnx", None, False, metrics, notes)
    assert metrics["per_token_matmuls"] == 0 and any("per_token mlp" in n for n in notes)


def _graph(nodes, inits):
    return helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["t", D])],
                             [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["t", D])], inits)


def test_a_spelled_out_gelu_counts_and_a_norm_does_not():
    rng = np.random.default_rng(2)
    w = lambda name, k, n: numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), name)  # noqa: E731
    c = lambda name, v: numpy_helper.from_array(np.array(v, np.float32), name)  # noqa: E731
    # torch's erf GELU as exported: (h · (erf(h / √2) + 1)) · 0.5
    gelu = [helper.make_node("MatMul", ["x", "w_up"], ["h"], name="up"),
            helper.make_node("Div", ["h", "sqrt2"], ["hs"], name="div"), helper.make_node("Erf", ["hs"], ["e"], name="erf"),
            helper.make_node("Add", ["e", "one"], ["e1"], name="add"), helper.make_node("Mul", ["h", "e1"], ["a"], name="mul"),
            helper.make_node("Mul", ["a", "half"], ["g"], name="half_mul"),
            helper.make_node("MatMul", ["g", "w_down"], ["y"], name="down")]
    inits = [w("w_up", D, H), w("w_down", H, D), c("sqrt2", 1.4142135), c("one", 1.0), c("half", 0.5)]
    assert chosen_matmuls(_graph(gelu, inits), "mlp", None, []) == {"down"}
    # RMSNorm: (x · 1/√(mean(x²) + ε)) · γ, then a projection: no activation behind it
    rms = [helper.make_node("Mul", ["x", "x"], ["sq"], name="sq"),
           helper.make_node("ReduceMean", ["sq"], ["ms"], name="mean", axes=[-1], keepdims=1),
           helper.make_node("Add", ["ms", "eps"], ["mse"], name="eps_add"), helper.make_node("Sqrt", ["mse"], ["rt"], name="sqrt"),
           helper.make_node("Reciprocal", ["rt"], ["inv"], name="inv"), helper.make_node("Mul", ["x", "inv"], ["xn"], name="norm"),
           helper.make_node("Mul", ["xn", "gamma"], ["xg"], name="gamma_mul"),
           helper.make_node("MatMul", ["xg", "w_q"], ["y"], name="q")]
    inits = [w("w_q", D, D), c("eps", 1e-6), numpy_helper.from_array(np.ones(D, np.float32), "gamma")]
    assert chosen_matmuls(_graph(rms, inits), "mlp", None, []) == set()


def test_7_bit_weights_on_the_runtime_grid_and_weights_still_read_are_kept(tmp_path):
    src = mlp_model(tmp_path / "m.onnx")
    model = onnx.load(str(src))
    model.graph.output.append(helper.make_tensor_value_info("w_down", TensorProto.FLOAT, [H, D]))  # read elsewhere
    onnx.save(model, str(src))
    out = tmp_path / "q.onnx"
    ort_calls.quantize_file(QuantizeConfig(mode="dynamic", per_token="mlp", reduce_range=True, exclude_nodes=["up"]),
                            src, out, None, False, {}, [])
    q = onnx.load(str(out))
    inits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    codes = next(v for k, v in inits.items() if k.endswith("_tok_q8"))
    assert codes.dtype == np.int8 and np.abs(codes).max() == 64  # ±64: ONNX Runtime's 7-bit grid
    assert "w_down" in inits and "w_up" in inits  # a graph output still reads it; `up` stays float
    x = tokens()
    y, w = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert np.array_equal(w, numpy_helper.to_array(model.graph.initializer[2]))
    ref = run(src, x)  # the first output, y
    assert np.abs(y - ref).mean() < 0.1 * np.abs(ref).mean()
