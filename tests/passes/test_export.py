"""passes.export: torch → ONNX with a dynamic batch axis, the opset and exporter recorded (from the
pass's own options, else `output.*`); a model the exporters cannot trace is a PassError naming the
pass."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from helpers import make_ctx, torch_handle
from tiny_models import make_mlp

from optimize.errors import PassError
from optimize.handle import TensorSpec
from passes.export import ExportConfig, ExportPass

INPUTS = [TensorSpec("x", ("batch", 8))]


def test_export_writes_onnx_with_the_pass_opset_and_a_dynamic_batch(tmp_path):
    module = make_mlp(0)
    res = ExportPass(ExportConfig(opset=17, exporter="torchscript")).run(
        torch_handle(module, INPUTS), make_ctx(tmp_path / "work", inputs=INPUTS))
    path = res.model.onnx_path
    assert res.model.form == "onnx" and res.metrics == {"exporter": res.model.exporter, "opset": 17}
    assert "torchscript" in res.metrics["exporter"].lower()
    model = onnx.load(str(path))
    assert {o.domain: o.version for o in model.opset_import}[""] == 17
    x = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)  # batch 5: not the traced 2
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, module(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-5)


def test_the_opset_defaults_to_output_opset(tmp_path):
    ctx = make_ctx(tmp_path / "work", "schema_version: 1\noutput: {opset: 16, exporter: torchscript}\npasses: []\n",
                   inputs=INPUTS)
    res = ExportPass(ExportConfig()).run(torch_handle(make_mlp(0), INPUTS), ctx)
    assert res.metrics["opset"] == 16


class Untraceable(torch.nn.Module):
    def forward(self, x):
        raise RuntimeError("no trace for you")


def test_an_untraceable_model_is_a_pass_error_naming_export(tmp_path):
    with pytest.raises(PassError, match="export"):
        ExportPass(ExportConfig(exporter="torchscript")).run(
            torch_handle(Untraceable(), INPUTS), make_ctx(tmp_path / "work", inputs=INPUTS))
