"""prune on ONNX, method structured: output neurons/channels removed with the consumer's inputs."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper
from tiny_models import ffn_model, save_graph
from torch import nn

from optimize.export import export_to_onnx
from optimize.handle import ModelHandle, TensorSpec
from passes.prune import PruneConfig, PrunePass


def run(handle, ctx, **options):
    return PrunePass(PruneConfig(method="structured", **options)).run(handle, ctx)


def _run_onnx(path, feeds):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _weights(path):
    m = onnx.load(str(path))
    return {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}, m


def test_ffn_block_removes_dead_neurons_exactly(ctx, tmp_path):
    dead = [1, 4, 6, 9, 12, 15]
    src, inits = ffn_model(tmp_path / "ffn.onnx", dead)
    handle = ModelHandle(form="onnx", inputs=[TensorSpec("X", ("batch", 5, 8))], outputs=["Y"], onnx_path=src)
    res = run(handle, ctx, sparsity=6 / 16)
    out = res.model.onnx_path
    w, m = _weights(out)
    fc1 = next(n for n in m.graph.node if n.name == "fc1")
    fc2 = next(n for n in m.graph.node if n.name == "fc2")
    keep = [i for i in range(16) if i not in dead]
    np.testing.assert_array_equal(w[fc1.input[1]], inits["W1"][:, keep])
    np.testing.assert_array_equal(w[fc2.input[1]], inits["W2"][keep])
    assert w[next(n for n in m.graph.node if n.name == "bias1").input[1]].shape == (10,)
    assert "W1" not in w and "W2" not in w  # the originals are gone
    onnx.checker.check_model(m, full_check=True)
    x = np.random.default_rng(1).standard_normal((3, 5, 8)).astype(np.float32)
    np.testing.assert_allclose(_run_onnx(out, {"X": x}), _run_onnx(src, {"X": x}), atol=1e-5)
    assert res.metrics["parity"]["min_cosine"] > 0.99999
    assert res.metrics["layers_pruned"] == 1
    e = res.metrics["layers"][0]
    assert (e["channels_before"], e["channels_after"], e["consumers"]) == (16, 10, ["fc2"])
    assert e["weights_removed"] == res.metrics["params_before"] - res.metrics["params_after"] == 6 * 8 * 2
    assert res.metrics["macs_after"] < res.metrics["macs_before"]
    assert any("fc2" in n and "residual" in n for n in res.notes)  # the residual writer is blocked
    json.dumps(res.metrics)


def conv_model(path):
    """X → Conv(W1, B1) → BatchNormalization → Relu → Conv(W2) → GlobalAveragePool → Flatten → Gemm(Wo, transB)."""
    rng = np.random.default_rng(0)
    inits = {
        "W1": rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "B1": rng.standard_normal(8).astype(np.float32),
        "s": rng.uniform(0.5, 1.5, 8).astype(np.float32), "bb": rng.standard_normal(8).astype(np.float32),
        "mu": rng.standard_normal(8).astype(np.float32), "var": rng.uniform(0.5, 1.5, 8).astype(np.float32),
        "W2": rng.standard_normal((6, 8, 1, 1)).astype(np.float32),
        "Wo": rng.standard_normal((5, 6)).astype(np.float32), "Bo": np.zeros(5, np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["X", "W1", "B1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "s", "bb", "mu", "var"], ["bn"], name="bn1"),
        helper.make_node("Relu", ["bn"], ["r"]),
        helper.make_node("Conv", ["r", "W2"], ["c2"], name="conv2"),
        helper.make_node("GlobalAveragePool", ["c2"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "Wo", "Bo"], ["Y"], name="head", transB=1),
    ]
    return save_graph(
        nodes, [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 3, 6, 6])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", 5])], inits, path,
    ), inits


def test_conv_bn_chain_matches_reference(ctx, tmp_path):
    src, inits = conv_model(tmp_path / "conv.onnx")
    handle = ModelHandle(form="onnx", inputs=[TensorSpec("X", ("batch", 3, 6, 6))], outputs=["Y"], onnx_path=src)
    res = run(handle, ctx, sparsity=0.5, importance="l1")
    w, m = _weights(res.model.onnx_path)
    conv1 = next(n for n in m.graph.node if n.name == "conv1")
    kept_w1 = w[conv1.input[1]]
    assert kept_w1.shape == (4, 3, 3, 3)
    keep = [int(np.argmin(np.abs(inits["W1"] - row).sum(axis=(1, 2, 3)))) for row in kept_w1]
    bn = next(n for n in m.graph.node if n.name == "bn1")
    for j, key in zip(range(1, 5), ("s", "bb", "mu", "var"), strict=True):
        np.testing.assert_array_equal(w[bn.input[j]], inits[key][keep])
    conv2 = next(n for n in m.graph.node if n.name == "conv2")
    assert w[conv2.input[1]].shape == (6, 4, 1, 1)  # conv2's outputs feed a pool: its channels stay
    # reference: the input graph with the removed channels' contributions silenced in conv2
    ref_inits = dict(inits)
    ref_inits["W2"] = inits["W2"].copy()
    ref_inits["W2"][:, [i for i in range(8) if i not in keep]] = 0
    ref_path, _ = conv_model(tmp_path / "ref.onnx")
    ref_model = onnx.load(str(ref_path))
    for init in ref_model.graph.initializer:
        init.CopyFrom(numpy_helper.from_array(ref_inits[init.name], init.name))
    onnx.save(ref_model, str(ref_path))
    x = np.random.default_rng(2).standard_normal((2, 3, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(_run_onnx(res.model.onnx_path, {"X": x}), _run_onnx(ref_path, {"X": x}), atol=1e-4)
    assert any("conv2" in n and "GlobalAveragePool" in n for n in res.notes)


def test_gemm_chain_and_exported_torch_ffn(ctx, tmp_path):
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.l1, self.l2, self.norm = nn.Linear(8, 32), nn.Linear(32, 8), nn.LayerNorm(8)
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            h = self.norm(x + self.l2(torch.nn.functional.gelu(self.l1(x))))
            return self.head(h.mean(1))

    torch.manual_seed(0)
    block = Block().eval()
    with torch.no_grad():  # the 16 neurons to go are dead, so the outputs must not move
        block.l1.weight[16:] = 0
        block.l1.bias[16:] = 0
    torch_h = ModelHandle(form="torch", inputs=[TensorSpec("x", ("batch", 4, 8))], outputs=["y"], module=block)
    handle = export_to_onnx(torch_h, tmp_path / "block.onnx")
    res = run(handle, ctx, sparsity=0.5)
    entry = res.metrics["layers"][0]
    assert (entry["channels_before"], entry["channels_after"]) == (32, 16)
    assert res.metrics["parity"]["max_abs_diff"] < 1e-5
    assert res.metrics["params_removed"] > 0.4
    x = np.random.default_rng(0).standard_normal((2, 4, 8)).astype(np.float32)
    np.testing.assert_allclose(
        _run_onnx(res.model.onnx_path, {"x": x}), block(torch.from_numpy(x)).detach().numpy(), atol=1e-5
    )


def test_nothing_prunable_is_reported(ctx, tmp_path):
    w = np.ones((4, 4), np.float32)
    src = save_graph(
        [helper.make_node("MatMul", ["X", "W"], ["Y"], name="only")],
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", 4])], {"W": w}, tmp_path / "one.onnx",
    )
    res = run(ModelHandle(form="onnx", inputs=[TensorSpec("X", ("batch", 4))], outputs=["Y"], onnx_path=src), ctx)
    assert res.metrics["layers_pruned"] == 0
    assert any("graph output" in n for n in res.notes)
    assert any("nothing removed" in n for n in res.notes)
