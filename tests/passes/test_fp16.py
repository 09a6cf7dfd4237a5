"""passes.fp16: float32 weights and compute become float16; the float32 inputs and outputs stay
unless asked; op types in `op_block_list` stay float32; the output is close to the float32 one."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from helpers import cosine, make_ctx, onnx_handle

from optimize.handle import TensorSpec
from passes.fp16 import Fp16Config, Fp16Pass

INPUTS = [TensorSpec("x", ("batch", 8))]
F32, F16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16


def convert(tmp_path, src, **options):
    return Fp16Pass(Fp16Config(**options)).run(onnx_handle(src, INPUTS), make_ctx(tmp_path / "work", inputs=INPUTS))


def io_types(model: onnx.ModelProto) -> list[int]:
    return [v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]]


def matrix_types(model: onnx.ModelProto) -> set[int]:
    return {i.data_type for i in model.graph.initializer if len(i.dims) == 2}


def test_weights_become_float16_and_the_io_stays_float32(tmp_path, mlp_onnx):
    res = convert(tmp_path, mlp_onnx)
    model = onnx.load(str(res.model.onnx_path))
    onnx.checker.check_model(model)  # the converter's Casts are re-sorted into topological order
    assert matrix_types(model) == {F16} and io_types(model) == [F32, F32]
    assert res.metrics == {"keep_io_types": True}
    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    run = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
           for p in (mlp_onnx, res.model.onnx_path)]
    assert cosine(*run) > 0.999


def test_io_float16_when_not_kept(tmp_path, mlp_onnx):
    model = onnx.load(str(convert(tmp_path, mlp_onnx, keep_io_types=False).model.onnx_path))
    assert io_types(model) == [F16, F16]


def test_blocked_op_types_keep_float32_weights(tmp_path, mlp_onnx):
    model = onnx.load(str(convert(tmp_path, mlp_onnx, op_block_list=["Gemm"]).model.onnx_path))
    assert matrix_types(model) == {F32}


def test_a_float16_io_model_is_measured_on_the_same_float32_data(tmp_path, mlp_onnx):
    # keep_io_types: false ended every run in "error: internal" (float32 data fed to float16 inputs)
    from optimize.runtime import predict

    path = convert(tmp_path, mlp_onnx, keep_io_types=False).model.onnx_path
    x = np.random.default_rng(0).standard_normal((6, 8)).astype(np.float32)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ref = ort.InferenceSession(str(mlp_onnx), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    out = predict(sess, {"x": x})[0]
    assert out.dtype == np.float16 and cosine(out.astype(np.float32), ref) > 0.999
    other_name = predict(sess, {"input": x})[0]  # one input, data under another name
    assert np.array_equal(other_name, out)
