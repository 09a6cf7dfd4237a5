"""quantize pass: ONNX Runtime dynamic/static quantization, QAT set-up on ORT's exact grid, checks."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from helpers import cosine, make_ctx, onnx_handle, torch_handle
from onnx import numpy_helper
from tiny_models import export_module, mlp_of
from torch import nn
from torch.nn.utils import parametrize

from optimize.config import load_config_text
from optimize.context import PlanContext
from optimize.errors import ConfigError
from optimize.export import finalized_module
from optimize.handle import TensorSpec
from optimize.inspect_onnx import all_graphs, op_counts, weight_stats
from passes.quantize import QuantizeConfig, QuantizePass
from passes.quantize.grid import ort_fake_quantize


def run_onnx(path, feed):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, feed)[0]


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 12, 3, padding=1)
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        h = torch.relu(self.conv2(h))
        return self.fc(h.mean(dim=(2, 3)))


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    m = SmallCNN()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so folding matters
        m.bn1.running_mean.uniform_(-0.5, 0.5)
        m.bn1.running_var.uniform_(0.5, 2.0)
        m.bn1.weight.uniform_(0.5, 1.5)
        m.bn1.bias.uniform_(-0.2, 0.2)
    return m.eval()


class TokenModel(nn.Module):
    """int64 token ids + mask → pooled embedding → Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 12)
        self.fc = nn.Linear(12, 7)

    def forward(self, ids, mask):
        h = self.emb(ids) * mask.unsqueeze(-1).float()
        return self.fc(h).sum(1) / mask.float().sum(1, keepdim=True).clamp(min=1)


TOKEN_INPUTS = [
    TensorSpec("ids", ("batch", "seq"), "int64", low=0, high=50, example_size=5),  # seq: never invented
    TensorSpec("mask", ("batch", "seq"), "int64", low=0, high=2, example_size=5),
]
TOKEN_AXES = {"ids": {0: "batch", 1: "seq"}, "mask": {0: "batch", 1: "seq"}}


def dequantized_weights(path) -> list[np.ndarray]:
    """Every integer weight of the file, dequantized (QDQ DequantizeLinear, or `_quantized` tensors)."""
    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for g in all_graphs(model.graph) for i in g.initializer}
    out = []
    for g in all_graphs(model.graph):
        for n in g.node:
            if n.op_type != "DequantizeLinear" or n.input[0] not in inits:
                continue
            x = inits[n.input[0]].astype(np.float64)
            s = inits[n.input[1]].astype(np.float64)
            zp = inits[n.input[2]].astype(np.float64) if len(n.input) > 2 and n.input[2] else np.zeros_like(s)
            if s.size > 1:
                axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
                shape = [1] * x.ndim
                shape[axis] = -1
                s, zp = s.reshape(shape), zp.reshape(shape)
            out.append((x - zp) * s)
    for name, x in inits.items():
        if name.endswith("_quantized") and x.dtype in (np.int8, np.uint8):
            base = name[: -len("_quantized")]
            s = inits[base + "_scale"].astype(np.float64)
            zp = inits[base + "_zero_point"].astype(np.float64)
            if s.size > 1:
                (axis,) = [i for i, d in enumerate(x.shape) if d == s.size]  # tests avoid square weights
                shape = [1] * x.ndim
                shape[axis] = -1
                s, zp = s.reshape(shape), zp.reshape(shape)
            out.append((x.astype(np.float64) - zp) * s)
    return out


# ---------------------------------------------------------------------------- ONNX: dynamic


def test_dynamic_mlp_int8_weights_and_parity(cfg, tmp_path):
    inputs = [TensorSpec("x", ("batch", 16))]
    path = export_module(mlp_of(16, 32, 24, 4), tmp_path / "mlp.onnx", (torch.randn(2, 16),))
    ctx = make_ctx(tmp_path / "work", cfg, inputs=inputs)
    res = QuantizePass(QuantizeConfig(mode="dynamic")).run(onnx_handle(path, inputs), ctx)

    out = res.model.onnx_path
    assert out == ctx.step_dir("quantize") / "model.onnx" and out.exists()
    stats = weight_stats(out)
    assert len(stats.tensors) == 3 and all(t.bits == 8 for t in stats.tensors)
    assert {t.dtype for t in stats.tensors} == {"int8"}
    assert res.metrics["mode"] == "dynamic" and res.metrics["weights_quantized"] == 3
    assert res.metrics["integer_ops"]["MatMulInteger"] == 3
    assert res.metrics["integer_ops"]["DynamicQuantizeLinear"] >= 1
    assert res.metrics["quantized_weight_fraction"] == 1.0

    x = np.random.default_rng(1).standard_normal((64, 16)).astype(np.float32)
    assert cosine(run_onnx(path, {"x": x}), run_onnx(out, {"x": x})) > 0.99


def test_dynamic_uint8_weights_per_tensor(cfg, tmp_path):
    inputs = [TensorSpec("x", ("batch", 16))]
    path = export_module(mlp_of(16, 32, 24, 4), tmp_path / "mlp.onnx", (torch.randn(2, 16),))
    res = QuantizePass(QuantizeConfig(mode="dynamic", weight_type="uint8", per_channel=False)).run(
        onnx_handle(path, inputs), make_ctx(tmp_path / "work", cfg, inputs=inputs)
    )
    assert {t.dtype for t in weight_stats(res.model.onnx_path).tensors} == {"uint8"}


def test_dynamic_if_subgraph_is_quantized_and_runs(cfg, tmp_path, subgraph_model):
    inputs = [TensorSpec("X", ("N", 4)), TensorSpec("cond", (), "bool")]
    res = QuantizePass(QuantizeConfig(mode="dynamic")).run(
        onnx_handle(subgraph_model.path, inputs), make_ctx(tmp_path / "work", cfg, inputs=inputs)
    )
    model = onnx.load(str(res.model.onnx_path))
    sub_ops = [n.op_type for g in list(all_graphs(model.graph))[1:] for n in g.node]
    assert "MatMulInteger" in sub_ops  # the If branches were quantized, not just the main graph

    x = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    for cond in (True, False):
        feed = {"X": x, "cond": np.array(cond)}
        ref, got = run_onnx(subgraph_model.path, feed), run_onnx(res.model.onnx_path, feed)
        assert np.isfinite(got).all() and cosine(ref, got) > 0.98


def test_dynamic_multi_input_int64_model(cfg, tmp_path):
    torch.manual_seed(0)
    model = TokenModel().eval()
    ids, mask = torch.randint(0, 50, (2, 5)), torch.ones(2, 5, dtype=torch.int64)
    path = export_module(model, tmp_path / "tok.onnx", (ids, mask), ["ids", "mask"], TOKEN_AXES)
    res = QuantizePass(QuantizeConfig(mode="dynamic")).run(
        onnx_handle(path, TOKEN_INPUTS), make_ctx(tmp_path / "work", cfg, inputs=TOKEN_INPUTS)
    )
    stats = weight_stats(res.model.onnx_path)
    assert {t.op_type for t in stats.tensors} == {"Gather", "MatMulInteger"}
    assert all(t.bits == 8 for t in stats.tensors)

    rng = np.random.default_rng(0)
    feed = {"ids": rng.integers(0, 50, (4, 9)).astype(np.int64), "mask": rng.integers(0, 2, (4, 9)).astype(np.int64)}
    assert cosine(run_onnx(path, feed), run_onnx(res.model.onnx_path, feed)) > 0.99


# ---------------------------------------------------------------------------- ONNX: static


def test_static_qdq_cnn_calibrated_on_random_inputs(cfg, tmp_path):
    inputs = [TensorSpec("x", ("batch", 3, 8, 8))]
    path = export_module(small_cnn(), tmp_path / "cnn.onnx", (torch.randn(2, 3, 8, 8),))
    ctx = make_ctx(tmp_path / "work", cfg, inputs=inputs)
    res = QuantizePass(QuantizeConfig(mode="static", calibration_samples=40)).run(onnx_handle(path, inputs), ctx)

    counts = op_counts(res.model.onnx_path)
    assert counts.get("QuantizeLinear", 0) > 0 and counts.get("DequantizeLinear", 0) > 0
    stats = weight_stats(res.model.onnx_path)
    assert stats.tensors and all(t.dtype == "int8" and t.bits == 8 for t in stats.tensors)
    m = res.metrics
    assert (m["mode"], m["format"], m["calibration"]) == ("static", "qdq", "minmax")
    assert m["calibration_samples"] == 40 and m["calibration_batches"] == 3  # fed 16 + 16 + 8
    assert m["calibration_source"] == "random inputs from the input spec"
    assert any("random inputs" in n for n in res.notes)

    x = np.random.default_rng(3).uniform(-1, 1, (4, 3, 8, 8)).astype(np.float32)
    got = run_onnx(res.model.onnx_path, {"x": x})
    assert got.shape == (4, 5) and np.isfinite(got).all()
    assert cosine(run_onnx(path, {"x": x}), got) > 0.98


def test_static_qoperator_gives_qlinearconv(cfg, tmp_path):
    inputs = [TensorSpec("x", ("batch", 3, 8, 8))]
    path = export_module(small_cnn(), tmp_path / "cnn.onnx", (torch.randn(2, 3, 8, 8),))
    res = QuantizePass(QuantizeConfig(mode="static", format="qoperator", calibration_samples=8)).run(
        onnx_handle(path, inputs), make_ctx(tmp_path / "work", cfg, inputs=inputs)
    )
    assert res.metrics["integer_ops"].get("QLinearConv") == 2
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 8, 8)).astype(np.float32)
    assert np.isfinite(run_onnx(res.model.onnx_path, {"x": x})).all()


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_static_histogram_calibration_runs_in_chunks(cfg, tmp_path, method):
    inputs = [TensorSpec("x", ("batch", 3, 8, 8))]
    path = export_module(small_cnn(), tmp_path / "cnn.onnx", (torch.randn(2, 3, 8, 8),))
    res = QuantizePass(QuantizeConfig(mode="static", calibration=method, calibration_samples=32)).run(
        onnx_handle(path, inputs), make_ctx(tmp_path / "work", cfg, inputs=inputs)
    )
    assert res.metrics["calibration"] == method and res.metrics["calibration_batches"] == 2
    assert res.metrics["integer_ops"].get("QuantizeLinear", 0) > 0


def test_static_multi_input_calibration_feeds_every_input(cfg, tmp_path):
    torch.manual_seed(0)
    ids, mask = torch.randint(0, 50, (2, 5)), torch.ones(2, 5, dtype=torch.int64)
    path = export_module(TokenModel().eval(), tmp_path / "tok.onnx", (ids, mask), ["ids", "mask"], TOKEN_AXES)
    res = QuantizePass(QuantizeConfig(mode="static", calibration_samples=20)).run(
        onnx_handle(path, TOKEN_INPUTS), make_ctx(tmp_path / "work", cfg, inputs=TOKEN_INPUTS)
    )
    assert res.metrics["calibration_samples"] == 20
    feed = {"ids": np.array([[1, 2, 3]], np.int64), "mask": np.array([[1, 1, 0]], np.int64)}
    assert np.isfinite(run_onnx(res.model.onnx_path, feed)).all()


def test_static_fixed_batch_model_is_fed_its_batch(cfg, tmp_path):
    inputs = [TensorSpec("x", (1, 16), batch_fixed=True)]
    model = mlp_of(16, 32, 24, 4)
    with torch.no_grad():
        torch.onnx.export(model, (torch.randn(1, 16),), str(tmp_path / "fixed.onnx"), dynamo=False,
                          input_names=["x"], output_names=["y"], opset_version=17)
    ctx = make_ctx(tmp_path / "work", cfg, inputs=inputs)
    from optimize.data import Dataset

    ctx._data["calibration"] = Dataset({"x": np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32)},
                                       None, "test data")
    res = QuantizePass(QuantizeConfig(mode="static")).run(onnx_handle(tmp_path / "fixed.onnx", inputs), ctx)
    assert res.metrics["calibration_batches"] == 5 and res.metrics["calibration_samples"] == 5


class RecordingProgress:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def start(self, key, description, total):
        self.calls.append(("start", key))

    def advance(self, key, steps=1, info=None):
        self.calls.append(("advance", key))

    def finish(self, key, info=None):
        self.calls.append(("finish", key))


def test_preprocess_runs_without_symbolic_shape_inference_when_only_that_fails(cfg, tmp_path, monkeypatch):
    # PP-OCRv6 det: "Incomplete symbolic shape inference"; the runtime's optimizations still fold its bias Adds
    import onnxruntime.quantization.shape_inference as shape_inference

    real = shape_inference.quant_pre_process
    seen = []

    def picky(*args, **kwargs):
        seen.append(kwargs.get("skip_symbolic_shape", False))
        if not kwargs.get("skip_symbolic_shape"):
            raise RuntimeError("Incomplete symbolic shape inference")
        return real(*args, **kwargs)

    monkeypatch.setattr(shape_inference, "quant_pre_process", picky)
    inputs = [TensorSpec("x", ("batch", 16))]
    path = export_module(mlp_of(16, 32, 24, 4), tmp_path / "mlp.onnx", (torch.randn(2, 16),))
    res = QuantizePass(QuantizeConfig(mode="static", calibration_samples=16)).run(
        onnx_handle(path, inputs), make_ctx(tmp_path / "work", cfg, inputs=inputs))
    assert seen == [False, True]
    assert res.metrics["preprocessed"] is True
    assert any("symbolic shape inference failed (Incomplete" in n and "optimizations" in n for n in res.notes)


def test_calibration_reports_progress_and_survives_preprocess_failure(cfg, tmp_path, monkeypatch):
    import onnxruntime.quantization.shape_inference as shape_inference

    def broken(*args, **kwargs):
        raise RuntimeError("symbolic shape inference exploded")

    monkeypatch.setattr(shape_inference, "quant_pre_process", broken)
    inputs = [TensorSpec("x", ("batch", 16))]
    path = export_module(mlp_of(16, 32, 24, 4), tmp_path / "mlp.onnx", (torch.randn(2, 16),))
    ctx = make_ctx(tmp_path / "work", cfg, inputs=inputs)
    ctx.progress = RecordingProgress()
    res = QuantizePass(QuantizeConfig(mode="static", calibration_samples=48)).run(onnx_handle(path, inputs), ctx)

    assert res.metrics["preprocessed"] is False
    assert any("quant_pre_process" in n and "exploded" in n for n in res.notes)
    assert res.metrics["weights_quantized"] == 3
    calls = [c for c in ctx.progress.calls if c[1] == "quantize.calibrate"]
    assert calls[0] == ("start", "quantize.calibrate") and calls[-1] == ("finish", "quantize.calibrate")
    assert calls.count(("advance", "quantize.calibrate")) == 3
    assert ("start", "quantize.prepare") in ctx.progress.calls  # a start line before the quantizer's work


def test_nothing_made_integer_hands_back_the_input_unchanged(cfg, tmp_path):
    inputs = [TensorSpec("x", ("batch", 16))]
    path = export_module(mlp_of(16, 32, 24, 4), tmp_path / "mlp.onnx", (torch.randn(2, 16),))
    before = path.read_bytes()
    res = QuantizePass(QuantizeConfig(mode="dynamic", op_types=["Conv"])).run(
        onnx_handle(path, inputs), make_ctx(tmp_path / "work", cfg, inputs=inputs)
    )
    assert res.metrics["integer_ops"] == {} and res.metrics["weights_quantized"] == 0
    assert any("made no op integer" in n and "handed back unchanged" in n for n in res.notes)
    assert res.model.onnx_path == path and path.read_bytes() == before  # the input itself, not a float copy


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_an_already_quantized_input_is_handed_back_and_named(cfg, tmp_path, mode):
    from onnxruntime.quantization import quantize_dynamic

    inputs = [TensorSpec("x", ("batch", 16))]
    path = export_module(mlp_of(16, 32, 24, 4), tmp_path / "mlp.onnx", (torch.randn(2, 16),))
    quantized = tmp_path / "mlp.int8.onnx"
    quantize_dynamic(str(path), str(quantized))
    before = quantized.read_bytes()
    res = QuantizePass(QuantizeConfig(mode=mode, random_calibration=True)).run(
        onnx_handle(quantized, inputs), make_ctx(tmp_path / "work", cfg, inputs=inputs)
    )  # static QDQ over ONNX Runtime's own dynamic output raised a KeyError on a scale name (ddddocr)
    assert res.model.onnx_path == quantized and quantized.read_bytes() == before
    note = next(n for n in res.notes if "handed back unchanged" in n)
    assert "already quantized" in note and "MatMulInteger 3" in note
    assert res.metrics["integer_ops"]  # the report still counts what the file holds


def test_static_on_an_already_quantized_input_needs_no_calibration_data(cfg, tmp_path):
    """It is handed back unchanged, so asking for calibration data (exit 2) only blocked the run."""
    from onnxruntime.quantization import quantize_dynamic

    from passes.graph import GraphConfig, GraphPass

    inputs = [TensorSpec("x", ("batch", 16))]
    path = export_module(mlp_of(16, 32, 24, 4), tmp_path / "mlp.onnx", (torch.randn(2, 16),))
    quantized = tmp_path / "mlp.int8.onnx"
    quantize_dynamic(str(path), str(quantized))

    def plan_on(p, earlier=()):
        return PlanContext(config=cfg, input_form="onnx", has_input_spec=True, index=len(earlier),
                           form_at_pass="onnx", model=onnx_handle(p, inputs), earlier=list(earlier))

    step = QuantizePass(QuantizeConfig(mode="static"))
    step.check(plan_on(quantized))  # no ConfigError
    step.check(plan_on(quantized, earlier=[GraphPass(GraphConfig())]))  # configs/cpu-int8.yaml's order
    with pytest.raises(ConfigError, match="representative calibration data"):
        step.check(plan_on(path))  # a float input still needs it
    with pytest.raises(ConfigError, match="representative calibration data"):
        step.check(plan_on(quantized, earlier=[object()]))  # after another kind of step: not known


def test_the_quantizers_numpy_warnings_stay_off_the_terminal(cfg, tmp_path, monkeypatch):
    """numpy's overflow warnings in ONNX Runtime's scale arithmetic printed a bare source line
    (`zero_point = numpy.array(...)`) on the user's terminal; the tool's own warnings still show."""
    import warnings

    from passes.quantize import ort as ort_calls

    real = ort_calls.quantize_file

    def noisy(*args, **kwargs):
        warnings.warn_explicit("invalid value encountered in cast", RuntimeWarning, "quant_utils.py", 305,
                               module="onnxruntime.quantization.quant_utils")
        return real(*args, **kwargs)

    monkeypatch.setattr(ort_calls, "quantize_file", noisy)
    inputs = [TensorSpec("x", ("batch", 16))]
    path = export_module(mlp_of(16, 32, 24, 4), tmp_path / "mlp.onnx", (torch.randn(2, 16),))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        res = QuantizePass(QuantizeConfig(mode="dynamic")).run(onnx_handle(path, inputs),
                                                               make_ctx(tmp_path / "work", cfg, inputs=inputs))
        warnings.warn_explicit("ours", RuntimeWarning, "x.py", 1, module="optimize.x")
    assert res.metrics["integer_ops"]
    assert [str(w.message) for w in seen if w.category is RuntimeWarning] == ["ours"]


def test_exclude_nodes_keeps_them_float(cfg, tmp_path):
    inputs = [TensorSpec("x", ("batch", 16))]
    path = export_module(mlp_of(16, 32, 24, 4), tmp_path / "mlp.onnx", (torch.randn(2, 16),))
    first = onnx.load(str(path)).graph.node[0].name
    res = QuantizePass(QuantizeConfig(mode="dynamic", exclude_nodes=[first])).run(
        onnx_handle(path, inputs), make_ctx(tmp_path / "work", cfg, inputs=inputs)
    )
    assert res.metrics["weights_quantized"] == 2 and res.metrics["weight_tensors"] == 3


# ---------------------------------------------------------------------------- planning


class _Trainer:
    trains = True


class _Plain:
    trains = False


def test_form_for_and_defers():
    p = QuantizePass(QuantizeConfig())
    assert p.form_for("torch", [_Plain(), _Trainer()]) == "torch"
    assert p.form_for("torch", [_Plain()]) == "onnx"
    assert p.form_for("torch", []) == "onnx"
    assert p.form_for("onnx", [_Trainer()]) == "onnx"
    assert p.defers("torch") and not p.defers("onnx")


def plan(cfg, has_input_spec):
    return PlanContext(config=cfg, input_form="onnx", has_input_spec=has_input_spec, index=0, form_at_pass="onnx")


def test_check_static_needs_data_or_spec(cfg):
    with pytest.raises(ConfigError) as err:
        QuantizePass(QuantizeConfig(mode="static")).check(plan(cfg, has_input_spec=False))
    assert err.value.key == "passes[0].quantize.mode" and "calibration" in err.value.message
    with pytest.raises(ConfigError, match="representative calibration data.*random_calibration: true"):
        QuantizePass(QuantizeConfig(mode="static")).check(plan(cfg, has_input_spec=True))
    QuantizePass(QuantizeConfig(mode="static", random_calibration=True)).check(plan(cfg, has_input_spec=True))
    QuantizePass(QuantizeConfig(mode="dynamic")).check(plan(cfg, has_input_spec=False))


def test_check_static_with_train_data_passes():
    cfg = load_config_text(
        "schema_version: 1\ndata:\n  train:\n    source: builtin:digits\npasses: []\n"
    )
    QuantizePass(QuantizeConfig(mode="static")).check(plan(cfg, has_input_spec=False))


def test_check_rejects_int8_activations_with_uint8_weights(cfg):
    with pytest.raises(ConfigError):
        QuantizePass(QuantizeConfig(activation_type="int8", weight_type="uint8")).check(plan(cfg, True))


# ---------------------------------------------------------------------------- QAT (torch form)


def ort_scale(w: torch.Tensor) -> torch.Tensor:
    """ONNX Runtime's symmetric int8 per-channel scale: max|w| * 2 / 254 in float64, stored float32."""
    absmax = w.detach().float().reshape(w.shape[0], -1).abs().amax(dim=1)
    return (absmax.double() * 2 / 254).float()


def test_qat_weights_on_int8_grid_grads_flow_hooks_removed(cfg, tmp_path):
    inputs = [TensorSpec("x", ("batch", 3, 8, 8))]
    model = small_cnn()
    # reduce_range off: the exact int8 grid is the point (auto would pick 7 bits on a CPU without VNNI)
    res = QuantizePass(QuantizeConfig(mode="static", reduce_range=False)).run(
        torch_handle(model, inputs), make_ctx(tmp_path / "work", cfg, inputs=inputs)
    )
    qat = res.model.module
    assert res.model.form == "torch" and qat is not model
    assert res.model.pending == [("quantize", res.model.pending[0][1])]
    m = res.metrics
    assert m["qat"] and m["layers_wrapped"] == 3 and m["activation_observers"] == 3 and m["batchnorm_folded"] == 1
    assert isinstance(qat.bn1, nn.Identity) and isinstance(model.bn1, nn.BatchNorm2d)  # input untouched

    # folding keeps the function (eval mode), up to the simulated quantization
    x = torch.randn(16, 3, 8, 8)
    qat.train()
    qat(x)  # observers see a batch
    qat.eval()
    assert torch.nn.functional.cosine_similarity(qat(x).flatten(), model(x).flatten(), dim=0) > 0.98

    # gradients reach the stored original weights through the straight-through estimator
    qat.train()
    qat(x).pow(2).mean().backward()
    for layer in (qat.conv1, qat.conv2, qat.fc):
        grad = layer.parametrizations.weight.original.grad
        assert grad is not None and grad.abs().sum() > 0

    fin = finalized_module(qat)
    for layer in (fin.conv1, fin.conv2, fin.fc):
        assert not parametrize.is_parametrized(layer)
        assert not layer._forward_pre_hooks  # training-only observers removed
        w = layer.weight.detach()
        ratio = w.double() / ort_scale(w).double().reshape((-1,) + (1,) * (w.dim() - 1))
        assert (ratio - ratio.round()).abs().max() < 1e-5
        assert ratio.abs().max() <= 127 + 1e-5


class Mask(nn.Module):
    """A pruning mask as a parametrization (what the prune pass registers)."""

    def __init__(self, mask):
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, w):
        return w * self.mask


def test_qat_stacks_on_pruning_mask(cfg, tmp_path):
    model = mlp_of(16, 32, 24, 4)
    mask = (torch.rand_like(model[0].weight) > 0.5).float()
    parametrize.register_parametrization(model[0], "weight", Mask(mask))
    inputs = [TensorSpec("x", ("batch", 16))]
    res = QuantizePass(QuantizeConfig(mode="dynamic")).run(torch_handle(model, inputs), make_ctx(tmp_path / "work", cfg, inputs=inputs))
    layer = res.model.module[0]
    assert [type(p).__name__ for p in layer.parametrizations.weight] == ["Mask", "WeightFakeQuant"]
    w = finalized_module(res.model.module)[0].weight
    assert torch.all(w[mask == 0] == 0)


def test_qat_folds_batchnorm_under_a_pruning_mask(cfg, tmp_path):
    class Untraceable(nn.Module):  # data-dependent control flow: torch.fx cannot trace it
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())

        def forward(self, x):
            if x.sum() > 1e9:
                x = x * 0
            return self.body(x).mean(dim=(2, 3))

    torch.manual_seed(0)
    model = Untraceable()
    with torch.no_grad():
        model.body[1].running_mean.uniform_(-0.5, 0.5)
        model.body[1].running_var.uniform_(0.5, 2.0)
    mask = torch.ones_like(model.body[0].weight)
    mask[:3] = 0  # three pruned output channels
    parametrize.register_parametrization(model.body[0], "weight", Mask(mask))
    model.eval()
    inputs = [TensorSpec("x", ("batch", 3, 6, 6))]
    res = QuantizePass(QuantizeConfig(mode="dynamic")).run(torch_handle(model, inputs), make_ctx(tmp_path / "work", cfg, inputs=inputs))
    assert res.metrics["batchnorm_folded"] == 1 and isinstance(res.model.module.body[1], nn.Identity)
    x = torch.randn(32, 3, 6, 6)
    fin = finalized_module(res.model.module)
    assert torch.all(fin.body[0].weight[:3] == 0)
    assert torch.nn.functional.cosine_similarity(fin(x).flatten(), model(x).flatten(), dim=0) > 0.99


def test_qat_module_deep_copies(cfg, tmp_path):
    import copy

    inputs = [TensorSpec("x", ("batch", 16))]
    res = QuantizePass(QuantizeConfig()).run(torch_handle(mlp_of(16, 32, 24, 4), inputs), make_ctx(tmp_path / "work", cfg, inputs=inputs))
    qat = res.model.module.train()
    qat(torch.randn(8, 16))  # observers hold state
    again = copy.deepcopy(qat)
    x = torch.randn(3, 16)
    assert torch.equal(again.eval()(x), qat.eval()(x))


def test_activation_observer_updates_only_in_training(cfg, tmp_path):
    inputs = [TensorSpec("x", ("batch", 16))]
    res = QuantizePass(QuantizeConfig(mode="static")).run(torch_handle(mlp_of(16, 32, 24, 4), inputs), make_ctx(tmp_path / "work", cfg, inputs=inputs))
    qat = res.model.module
    (hook,) = qat[0]._forward_pre_hooks.values()
    assert hook.training_only and hook.min_val is None
    qat.train()
    qat(torch.full((4, 16), 2.0))
    assert float(hook.max_val) == 2.0
    qat.eval()
    qat(torch.full((4, 16), 10.0))
    assert float(hook.max_val) == 2.0  # frozen in eval mode
    # the first layer sees at most 256 distinct input levels
    seen = {}

    def grab(module, args, output):
        seen["x"] = args[0]

    qat[0].register_forward_hook(grab)
    qat.eval()(torch.linspace(-3, 3, 16 * 64).reshape(64, 16))
    assert seen["x"].unique().numel() <= 256


@pytest.mark.parametrize(
    "options",
    [
        {"mode": "static", "format": "qdq", "per_channel": True},
        {"mode": "static", "format": "qoperator", "per_channel": True, "weight_type": "uint8"},
        {"mode": "static", "format": "qdq", "per_channel": False, "weight_type": "uint8", "reduce_range": True},
        {"mode": "dynamic", "per_channel": True},
    ],
    ids=["qdq-s8-channel", "qoperator-u8-channel", "qdq-u8-tensor-reduced", "dynamic"],
)
def test_qat_then_finalize_reproduces_trained_weights(cfg, tmp_path, options):
    """The integer weights ONNX Runtime materializes after QAT are exactly the trained fake-quant ones."""
    inputs = [TensorSpec("x", ("batch", 3, 8, 8))]
    ctx = make_ctx(tmp_path / "work", cfg, inputs=inputs)
    qpass = QuantizePass(QuantizeConfig(calibration_samples=16, **options))
    res = qpass.run(torch_handle(small_cnn(), inputs), ctx)
    assert res.metrics["weight_grid_exact"]
    qat = res.model.module.train()
    opt = torch.optim.SGD(qat.parameters(), lr=0.05)
    for _ in range(3):  # a little training moves the weights off the initial grid
        loss = qat(torch.randn(8, 3, 8, 8)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    fin = finalized_module(qat)
    path = export_module(fin, tmp_path / "float.onnx", (torch.randn(2, 3, 8, 8),))
    exported = res.model.replace(form="onnx", module=None, onnx_path=path)
    out = qpass.finalize(exported, ctx)
    assert out.model.pending == [] and out.metrics["stage"] == "materialize_qat"
    assert "QAT-trained" in out.metrics["weight_scales"]

    onnx_weights = dequantized_weights(out.model.onnx_path)
    for name in ("conv1", "conv2", "fc"):
        w = getattr(fin, name).weight.detach().double().numpy()
        errors = [np.abs((d if d.shape == w.shape else d.T) - w).max() for d in onnx_weights
                  if d.shape == w.shape or d.T.shape == w.shape]
        assert errors and min(errors) < 1e-6, (name, errors)


def test_ort_fake_quantize_matches_ort_quantizer():
    from onnx import TensorProto
    from onnxruntime.quantization.quant_utils import quantize_data

    w = torch.randn(6, 10) * torch.linspace(0.01, 3, 6)[:, None]
    w[2] = 0.0  # an all-zero channel: ORT uses scale 1
    for qtype, sym, rr in [("int8", True, False), ("int8", True, True), ("uint8", False, False), ("uint8", True, False)]:
        scheme = {"qtype": qtype, "per_channel": True, "symmetric": sym, "reduce_range": rr}
        got = ort_fake_quantize(w, scheme).double().numpy()
        onnx_type = TensorProto.INT8 if qtype == "int8" else TensorProto.UINT8
        for c in range(w.shape[0]):
            zp, scale, q = quantize_data(w[c].numpy(), onnx_type, sym, reduce_range=rr)
            ref = (q.astype(np.float64) - float(zp)) * float(scale)
            assert np.abs(got[c] - ref).max() < 1e-6, (qtype, sym, rr, c)


def test_reduce_range_auto_without_vnni_keeps_the_weight_range_closer_to_float(tmp_path, monkeypatch):
    """Without VNNI both 7-bit and 8-bit weights are built; the written model is the 8-bit one
    unless 7-bit is clearly closer to float on the eval data, and both parities are reported."""
    from helpers import eval_data_yaml

    import optimize.hardware
    from optimize.runtime import parity, predict, session
    from passes.quantize.range_choice import SEVEN_BIT_MARGIN

    monkeypatch.setattr(optimize.hardware, "has_int8_dot_product", lambda: False)
    inputs = [TensorSpec("x", ("batch", 64))]
    src = export_module(mlp_of(64, 128, 64, seed=3), tmp_path / "m.onnx", (torch.randn(1, 64),))
    ctx = make_ctx(tmp_path / "work", "schema_version: 1\npasses: []\n" + eval_data_yaml(tmp_path, "x", (64,), normal=True),
                   inputs=inputs, threads=1)
    res = QuantizePass(QuantizeConfig(mode="dynamic", per_channel=True)).run(onnx_handle(src, inputs), ctx)
    choice = res.metrics["reduce_range_choice"]
    kept = choice["7-bit min_cosine"] if res.metrics.get("reduce_range", True) else choice["8-bit min_cosine"]
    x, _ = ctx.sample_inputs("eval", ctx.parity_count())
    p = parity(predict(session(src), x), predict(session(res.model.onnx_path), x))
    assert p["min_cosine"] == pytest.approx(kept, abs=1e-6)
    assert res.metrics["reduce_range"] is (choice["7-bit min_cosine"] > choice["8-bit min_cosine"] + SEVEN_BIT_MARGIN)
    assert any(n.startswith("reduce_range auto:") for n in res.notes)


def test_range_choice_and_fallback_share_one_float_reference(tmp_path, monkeypatch):
    """Without VNNI a fixed format with a parity floor compares two weight ranges and then checks
    the floor: the float model's predictions on the eval inputs are computed once for both."""
    from helpers import eval_data_yaml

    import optimize.hardware
    import optimize.runtime

    monkeypatch.setattr(optimize.hardware, "has_int8_dot_product", lambda: False)
    calls = []
    real = optimize.runtime.predict_reference
    monkeypatch.setattr(optimize.runtime, "predict_reference", lambda *a, **k: calls.append(1) or real(*a, **k))
    inputs = [TensorSpec("x", ("batch", 64))]
    src = export_module(mlp_of(64, 128, 64, seed=3), tmp_path / "m.onnx", (torch.randn(1, 64),))
    yaml = ("schema_version: 1\npasses: []\ngates: {min_parity_cosine: 0.5}\n"
            + eval_data_yaml(tmp_path, "x", (64,), normal=True))
    ctx = make_ctx(tmp_path / "work", yaml, inputs=inputs, threads=1)
    res = QuantizePass(QuantizeConfig(mode="dynamic", per_channel=True)).run(onnx_handle(src, inputs), ctx)
    assert "reduce_range_choice" in res.metrics and "parity_all_quantized" in res.metrics
    assert len(calls) == 1


def test_seven_bit_weights_are_kept_only_when_clearly_closer_to_float():
    from types import SimpleNamespace as C

    from passes.quantize.range_choice import SEVEN_BIT_MARGIN, _keep_eight

    eight = C(min_cosine=0.9843, all_finite=True)
    assert _keep_eight(eight, C(min_cosine=0.9845, all_finite=True))  # a lead inside the margin: noise
    assert not _keep_eight(C(min_cosine=0.92, all_finite=True), C(min_cosine=1.0, all_finite=True))  # saturation
    assert not _keep_eight(eight, C(min_cosine=0.9843 + 2 * SEVEN_BIT_MARGIN, all_finite=True))
    assert not _keep_eight(C(min_cosine=None, all_finite=False), C(min_cosine=0.5, all_finite=True))
    assert _keep_eight(eight, C(min_cosine=None, all_finite=False))
