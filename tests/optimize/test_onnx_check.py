"""optimize.onnx_check: ONNX Runtime's own ONNX-domain ops (SimplifiedLayerNormalization, as ONNX
Runtime GenAI's model builder writes it) pass the checker; an op nobody defines still fails."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimize.errors import ModelLoadError, VerificationError
from optimize.onnx_check import check_onnx, runtime_only_ops
from optimize.onnx_load import onnx_handle
from optimize.runtime import check_model


def _model(op: str, tmp_path, external: bool = False):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])
    w = numpy_helper.from_array(np.linspace(0.5, 1.5, 8).astype(np.float32), "w")
    node = helper.make_node(op, ["x", "w"], ["y"], axis=-1, epsilon=1e-6)
    model = helper.make_model(helper.make_graph([node], "g", [x], [y], [w]), opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path), save_as_external_data=external, size_threshold=0, location="m.onnx.data")
    return path


def test_runtime_only_ops_holds_simplified_layer_norm_and_no_onnx_op():
    ops = runtime_only_ops()
    assert "SimplifiedLayerNormalization" in ops
    assert not ops & {"LayerNormalization", "MatMul", "Gather"}


@pytest.mark.parametrize("external", [False, True])
def test_a_runtime_op_in_the_onnx_domain_passes_the_full_check_and_runs(tmp_path, external):
    path = _model("SimplifiedLayerNormalization", tmp_path, external)
    with pytest.raises(onnx.checker.ValidationError):  # what the bare checker says
        onnx.checker.check_model(str(path), full_check=True)
    check_onnx(path, full_check=True)
    check_model(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == (["m.onnx", "m.onnx.data"] if external else ["m.onnx"])
    x = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    y = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    ref = x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-6) * np.linspace(0.5, 1.5, 8)
    assert np.abs(y - ref).max() < 1e-4
    assert onnx_handle(path, []).inputs[0].name == "x"  # accepted as an input model


def test_an_op_nobody_defines_is_still_refused(tmp_path):
    path = _model("NoSuchNormalization", tmp_path)
    with pytest.raises(onnx.checker.ValidationError, match="NoSuchNormalization"):
        check_onnx(path)
    with pytest.raises(VerificationError, match="NoSuchNormalization"):
        check_model(path)
    with pytest.raises(ModelLoadError, match="not a valid ONNX model"):
        onnx_handle(path, [])
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no check copy left behind
