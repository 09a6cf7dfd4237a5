"""passes/quantize/smooth.py and smooth_search.py: `smooth_alpha` divides each MatMul input's channels
by SmoothQuant's scales and multiplies the weights' rows back: the float model computes the same, its
dynamic int8 form is closer to float where one channel runs far above the rest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from helpers import make_ctx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from optimize.config import load_config_text  # noqa: E402
from optimize.context import PlanContext  # noqa: E402
from optimize.errors import ConfigError  # noqa: E402
from optimize.handle import TensorSpec  # noqa: E402
from passes.quantize import QuantizeConfig, QuantizePass  # noqa: E402
from passes.quantize import ort as ort_calls  # noqa: E402
from passes.quantize.smooth import smooth_file  # noqa: E402
from passes.quantize.smooth_search import best_alpha, fake_input, int8_error, scales  # noqa: E402

D, H, T = 32, 96, 12
INPUTS = [TensorSpec("x", ("batch", T, D))]
OUTLIER = 5  # the channel LayerNorm's gain makes 30x the others, as in a transformer's LayerNorm outputs


def _w(rng: np.random.Generator, name: str, k: int, n: int) -> onnx.TensorProto:
    return numpy_helper.from_array((rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32), name)


def _save(nodes: list, inits: list, path: Path, domains: tuple[str, ...] = ()) -> Path:
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", T, D])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", T, D])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]
                              + [helper.make_opsetid(d, 1) for d in domains])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def ffn(path: Path, pre_ln: bool = False) -> Path:
    """LayerNorm (one channel's gain 30x) → FFN (MatMul, Relu, MatMul) → residual add: of the norm's
    output (post-LN, as BERT: the norm's output feeds a MatMul and the add), or of the norm's input
    (`pre_ln`: the norm's output feeds only the MatMul). The Relu's output feeds only a MatMul."""
    rng = np.random.default_rng(9 if pre_ln else 0)
    gamma = np.ones(D, np.float32)
    gamma[OUTLIER] = 30.0
    beta = (rng.standard_normal(D) * 0.1).astype(np.float32) if pre_ln else np.zeros(D, np.float32)
    nodes = [helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["n"], axis=-1, name="norm"),
             helper.make_node("MatMul", ["n", "w_up"], ["h"], name="up"),
             helper.make_node("Relu", ["h"], ["a"], name="act"),
             helper.make_node("MatMul", ["a", "w_down"], ["d"], name="down"),
             helper.make_node("Add", ["d", "x" if pre_ln else "n"], ["y"], name="residual")]
    inits = [numpy_helper.from_array(gamma, "gamma"), numpy_helper.from_array(beta, "beta"),
             _w(rng, "w_up", D, H), _w(rng, "w_down", H, D)]
    return _save(nodes, inits, path)


def ln_mlp(path: Path) -> Path:
    return ffn(path)


def attention_block(path: Path) -> Path:
    """ONNX Runtime's fused Attention (packed QKV weight) on an input with an outlier channel, then
    the output projection: the projection's input can be divided inside the value weights."""
    rng = np.random.default_rng(2)
    nodes = [helper.make_node("Attention", ["x", "w_qkv", "b_qkv"], ["ctx"], domain="com.microsoft", num_heads=4,
                              name="attn"),
             helper.make_node("MatMul", ["ctx", "w_out"], ["y"], name="out")]
    bias = numpy_helper.from_array((rng.standard_normal(3 * D) * 0.1).astype(np.float32), "b_qkv")
    return _save(nodes, [_w(rng, "w_qkv", D, 3 * D), bias, _w(rng, "w_out", D, D)], path, ("com.microsoft",))


def samples(seed: int, n: int = 32) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, T, D)).astype(np.float32)
    x[..., OUTLIER] *= 30.0  # the attention model's input carries the outlier itself
    return x


def run(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def smoothed(src: Path, alpha: float | str) -> tuple[Path, dict]:
    dst = src.with_name(src.stem + ".smoothed.onnx")
    done = smooth_file(src, dst, alpha, {"x": samples(1)}, 8, code_max=127, op_types=None, include=None, exclude=[])
    return dst, done


@pytest.mark.parametrize("alpha", [0.5, 0.9, "auto"])
def test_the_float_model_computes_the_same(tmp_path, alpha):
    src = ln_mlp(tmp_path / "m.onnx")
    dst, done = smoothed(src, alpha)
    assert done["nodes"] == 2 and done["inputs"] == 2 and done["of_inputs"] == 2, done
    x = samples(3)
    np.testing.assert_allclose(run(dst, x), run(src, x), rtol=1e-4, atol=1e-4)
    ops = [n.op_type for n in onnx.load(str(dst)).graph.node]
    assert ops.count("Mul") == 2  # one per input; the residual add still reads the norm's own output
    residual = next(n for n in onnx.load(str(dst)).graph.node if n.name == "residual")
    assert list(residual.input) == ["d", "n"]


def test_a_fused_attention_takes_its_output_projection_s_division_in_its_value_weights(tmp_path):
    src = attention_block(tmp_path / "a.onnx")
    dst, done = smoothed(src, 0.8)
    assert done["nodes"] == 2, done
    model = onnx.load(str(dst))
    assert [n.op_type for n in model.graph.node].count("Mul") == 1  # before the attention only
    assert {t.name for t in model.graph.initializer} >= {"x_smooth_inv"} and "w_qkv" not in {
        t.name for t in model.graph.initializer}  # replaced, not left beside the smoothed copy
    x = samples(4)
    np.testing.assert_allclose(run(dst, x), run(src, x), rtol=1e-4, atol=1e-4)


def _quantize(tmp_path: Path, cfg: QuantizeConfig, config_text: str | None) -> tuple[dict, list[str], Path]:
    src = ln_mlp(tmp_path / "m.onnx")
    out = tmp_path / f"q-{cfg.smooth_alpha}.onnx"
    metrics: dict = {}
    notes: list[str] = []
    ctx = make_ctx(tmp_path / "work", config_text, inputs=INPUTS) if config_text else None
    ort_calls.quantize_file(cfg, src, out, ctx, False, metrics, notes)
    return metrics, notes, out


def data_yaml(folder: Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "cal.npz", x=np.random.default_rng(5).standard_normal((32, T, D)).astype(np.float32))
    return f"schema_version: 1\nmeasure: {{batch: 8}}\ndata:\n  calibration: {{source: '{folder / 'cal.npz'}'}}\npasses: []\n"


def test_int8_of_the_smoothed_model_is_closer_to_float(tmp_path):
    text = data_yaml(tmp_path / "data")
    src = ln_mlp(tmp_path / "ref.onnx")
    x = np.random.default_rng(6).standard_normal((16, T, D)).astype(np.float32)
    ref = run(src, x)
    err = {}
    for alpha in (None, "auto"):
        metrics, notes, out = _quantize(tmp_path, QuantizeConfig(mode="dynamic", reduce_range=False, smooth_alpha=alpha),
                                        text)
        err[alpha] = float(np.square(run(out, x) - ref).mean() / np.square(ref).mean())
    assert err["auto"] < 0.5 * err[None], err
    assert metrics["smooth"]["source"] == "data.calibration" and metrics["smooth"]["inputs"] >= 1
    assert any(n.startswith("smooth_alpha auto:") and "32 samples of data.calibration" in n for n in notes), notes
    assert not list(tmp_path.glob("*.smooth.onnx"))  # the scratch file is removed


def test_without_data_nothing_is_smoothed_and_the_note_says_so(tmp_path):
    metrics, notes, _ = _quantize(tmp_path, QuantizeConfig(mode="dynamic", reduce_range=False, smooth_alpha=0.8), None)
    assert "smooth" not in metrics and any("smooth_alpha: no data" in n for n in notes)


def test_the_plan_refuses_smoothing_without_data():
    cfg = load_config_text("schema_version: 1\npasses: []\n")
    plan = PlanContext(config=cfg, input_form="onnx", has_input_spec=True, index=0, form_at_pass="onnx")
    with pytest.raises(ConfigError, match="smooth_alpha measures") as err:
        QuantizePass(QuantizeConfig(mode="dynamic", smooth_alpha="auto")).check(plan)
    assert err.value.key.endswith("quantize.smooth_alpha")


@pytest.mark.parametrize("fields, message", [
    ({"mode": "static", "smooth_alpha": 0.5}, "needs mode: dynamic"),
    ({"mode": "dynamic", "smooth_alpha": 1.5}, "in \\(0, 1\\]"),
    ({"mode": "dynamic", "smooth_alpha": 0.0}, "in \\(0, 1\\]"),
])
def test_config_rejects_smoothing_it_cannot_do(fields, message):
    with pytest.raises(ValueError, match=message):
        QuantizeConfig(**fields)


def test_scales_follow_the_formula_and_floor_small_channels_at_the_median():
    act = np.array([8.0, 1.0, 2.0, 0.0])
    w = np.array([0.5, 0.5, 2.0, 1.0])
    s = scales(act, w, 0.5)
    # channel 1 saw less than the median (2.0 of the live 8, 1, 2): raised to it before the formula
    np.testing.assert_allclose(s, [np.sqrt(8 / 0.5), np.sqrt(2 / 0.5), np.sqrt(2 / 2.0), 1.0])


def test_the_simulated_int8_keeps_zero_and_an_outlier_channel_is_worth_smoothing():
    x = np.array([[0.0, 1.0, -3.0]], np.float32)
    assert fake_input(x)[0, 0] == 0.0
    rng = np.random.default_rng(7)
    rows = [rng.standard_normal((64, D)).astype(np.float32) for _ in range(4)]
    w = (rng.standard_normal((D, H)) / np.sqrt(D)).astype(np.float32)
    flat_max = np.max([np.abs(r).max(axis=0) for r in rows], axis=0)
    assert best_alpha(rows, w, flat_max, 127)[0] is None  # no channel stands out: no Mul to pay for
    for r in rows:
        r[:, OUTLIER] *= 40.0
    out_max = np.max([np.abs(r).max(axis=0) for r in rows], axis=0)
    alpha, plain, best = best_alpha(rows, w, out_max, 127)
    assert alpha is not None and best < 0.5 * plain
    assert int8_error(rows, w, None, 127) == pytest.approx(plain)


def test_auto_s_choice_depends_on_the_batch_so_the_cache_key_holds_it():
    cfg = load_config_text("schema_version: 1\nmeasure: {batch: 4}\npasses: []\n")
    assert QuantizePass(QuantizeConfig(mode="dynamic", smooth_alpha="auto")).cache_inputs(cfg) == {"measure.batch": 4}
    assert QuantizePass(QuantizeConfig(mode="dynamic", smooth_alpha=0.8)).cache_inputs(cfg) == {}


def test_per_token_scales_still_find_the_ffn_output_projection_after_smoothing(tmp_path):
    cfg = QuantizeConfig(mode="dynamic", reduce_range=False, smooth_alpha=0.8, per_token="mlp")
    metrics, _, out = _quantize(tmp_path, cfg, data_yaml(tmp_path / "data"))
    assert metrics["per_token_matmuls"] == 1 and metrics["smooth"]["nodes"] == 2
    x = np.random.default_rng(8).standard_normal((4, T, D)).astype(np.float32)
    ref = run(ln_mlp(tmp_path / "ref.onnx"), x)
    assert float(np.square(run(out, x) - ref).mean() / np.square(ref).mean()) < 1e-3


def pre_ln(path: Path) -> Path:
    return ffn(path, pre_ln=True)


def test_a_pre_ln_norm_takes_the_division_in_its_scale_and_bias(tmp_path):
    src = pre_ln(tmp_path / "p.onnx")
    dst, done = smoothed(src, 0.8)
    model = onnx.load(str(dst))
    norm = next(n for n in model.graph.node if n.name == "norm")
    assert done["nodes"] == 2 and [n.op_type for n in model.graph.node].count("Mul") == 1  # the Relu's only
    assert norm.input[1] != "gamma" and norm.input[2] != "beta"
    x = samples(10)
    np.testing.assert_allclose(run(dst, x), run(src, x), rtol=1e-4, atol=1e-4)


def test_norms_scope_leaves_the_activation_s_input_alone(tmp_path):
    src = pre_ln(tmp_path / "p.onnx")
    dst = tmp_path / "n.onnx"
    done = smooth_file(src, dst, 0.8, {"x": samples(1)}, 8, code_max=127, op_types=None, include=None, exclude=[],
                       inputs="norms")
    assert done["inputs"] == 1 and done["of_inputs"] == 1 and done["nodes"] == 1
    assert "Mul" not in [n.op_type for n in onnx.load(str(dst)).graph.node]  # free: nothing added to run


def test_a_decoder_llm_refuses_smoothing_rather_than_ignoring_it():
    from passes.quantize import llm

    with pytest.raises(ConfigError, match="smooth_alpha does not apply") as err:
        llm.check(QuantizeConfig(mode="dynamic", smooth_alpha="auto"), llm.TASK, "passes[0].quantize")
    assert err.value.key == "passes[0].quantize.smooth_alpha"


def test_rows_are_those_one_call_sees_padding_of_shorter_rows_included():
    from passes.quantize.activation_probe import batch_rows

    x = np.arange(2 * 4 * 3, dtype=np.float32).reshape(2, 4, 3)
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 0]])  # the longest row has 3 tokens
    rows = batch_rows(x, mask)
    assert rows.shape == (6, 3)  # both sequences' first 3 positions: the cut column 3 is gone
    np.testing.assert_array_equal(rows[2], x[0, 2])  # the first sequence's padding, inside the call
    assert batch_rows(x[:, :3], mask).shape == (6, 3)  # a graph that cut the padding itself


def test_an_excluded_node_keeps_its_input_and_a_retry_reuses_the_measurement(tmp_path, monkeypatch):
    import passes.quantize.smooth as smooth

    calls = []
    real = smooth.collect
    monkeypatch.setattr(smooth, "collect", lambda *a, **k: calls.append(1) or real(*a, **k))
    src = ffn(tmp_path / "m.onnx")
    feeds = {"x": samples(1)}
    first = smooth_file(src, tmp_path / "a.onnx", 0.8, feeds, 8, code_max=127, op_types=None, include=None, exclude=[])
    retry = smooth_file(src, tmp_path / "b.onnx", 0.8, feeds, 8, code_max=127, op_types=None, include=None,
                        exclude=["up"])  # as the accuracy fallback asks, keeping a layer in float
    assert first["nodes"] == 2 and retry["nodes"] == 1 and len(calls) == 1
    up = next(n for n in onnx.load(str(tmp_path / "b.onnx")).graph.node if n.name == "up")
    assert list(up.input) == ["n", "w_up"]
    x = samples(11)
    np.testing.assert_allclose(run(tmp_path / "b.onnx", x), run(src, x), rtol=1e-4, atol=1e-4)
