"""The built-in example through configs/default.yaml (prune → quantize → distill): the report's
numbers equal an independent count over the written ONNX file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from gfm_tables import assert_tables_whole
from onnx import numpy_helper

from optimize import pipeline
from optimize.api import RunOptions

BITS = {onnx.TensorProto.FLOAT: 32, onnx.TensorProto.INT8: 8, onnx.TensorProto.UINT8: 8, onnx.TensorProto.FLOAT16: 16}


def independent_count(path: Path) -> tuple[int, int, int]:
    """(weights, zeros, bits) over the initializers of rank >= 2: for this CNN exactly the conv and
    linear weights (biases, scales and zero points are rank 0 or 1)."""
    model = onnx.load(str(path))
    total = zeros = bits = 0
    for init in model.graph.initializer:
        if len(init.dims) >= 2:
            arr = numpy_helper.to_array(init)
            total += arr.size
            zeros += int(np.count_nonzero(arr == 0))
            bits += arr.size * BITS[init.data_type]
    return total, zeros, bits


def run_example(tmp_path: Path, epochs: int) -> tuple[object, Path]:
    out = tmp_path / "digits.opt.onnx"
    opts = RunOptions(
        output=str(out), overrides=[f"passes[2].epochs={epochs}", "measure.repeat=5"], fail_on_gate=False
    )
    return pipeline.run(opts), out


def test_default_pipeline_report_matches_the_file(tmp_path):
    report, out = run_example(tmp_path, epochs=2)
    written = Path(report.files["model"])
    assert written.is_file()
    total, zeros, bits = independent_count(written)
    m = report.metrics
    assert report.output.weights == total
    assert m["sparsity"].value == pytest.approx(zeros / total)
    assert m["quantization_ratio"].value == pytest.approx(bits / (32 * total))
    assert m["quantization_ratio"].value == pytest.approx(0.25)  # every weight stored as int8
    assert report.output.bytes == written.stat().st_size
    # structured pruning really shrank the tensors
    assert m["params_removed"].value > 0.4
    # integer kernels: QDQ layout with int8 weights
    ops = report.output.ops
    assert ops.get("QuantizeLinear", 0) > 0 and ops.get("DequantizeLinear", 0) > 0
    types = [s.type for s in report.steps]
    assert types == ["prune", "quantize", "distill", "export", "quantize"]
    assert [s.inserted for s in report.steps] == [False, False, False, True, True]
    assert m["accuracy"].inputs["samples"] == 360  # the held-out digits split
    on_disk = json.loads(Path(report.files["report"]).read_text())
    assert on_disk["metrics"]["sparsity"]["value"] == pytest.approx(zeros / total)
    # the Markdown of `make demo`'s pipeline: every table whole on GitHub (prune, diagnostics included)
    md = Path(report.files["markdown"]).read_text(encoding="utf-8")
    assert_tables_whole(md)
    assert md.startswith("# digits_cnn: ") and "### Step 1: prune (structured)" in md


@pytest.mark.slow
def test_default_pipeline_keeps_accuracy_within_gate(tmp_path):
    report, _ = run_example(tmp_path, epochs=15)
    acc = report.metrics["accuracy"]
    assert acc.inputs["drop"] <= 1.5, acc.inputs
    assert report.status == "ok"
