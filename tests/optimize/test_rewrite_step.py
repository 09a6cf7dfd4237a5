"""What the two graph rewrites after the passes share (optimize/rewrite_step.py): a failure to
decide is a note on an inserted step and the model is handed on unchanged, for each rewrite."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from helpers import rewrite_ctx
from onnx import TensorProto, helper
from tiny_models import save_graph

from optimize import skip_layernorm, softmax_guard
from optimize.handle import ModelHandle


@pytest.mark.parametrize(("module", "kept_when_failed", "what"), [
    (skip_layernorm, {"layout": "add"}, "residual layout not decided"),
    (softmax_guard, {"kept": False}, "softmax guard not decided"),
])
def test_apply_turns_a_failure_into_a_note_and_keeps_the_model(tmp_path, monkeypatch, module, kept_when_failed, what):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    src = save_graph([helper.make_node("Relu", ["x"], ["y"])], [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
                     {}, tmp_path / "m.onnx")
    final = ModelHandle(form="onnx", onnx_path=src, inputs=[], outputs=["y"])
    lineage = SimpleNamespace(steps=[])
    scratch = tmp_path / f"01-{module.__name__.rsplit('.', 1)[1]}"

    def boom(*a, **k):
        scratch.mkdir()
        raise RuntimeError("[ONNXRuntimeError] my.domain:Foo is not a registered op")

    monkeypatch.setattr(module, "choose", boom)
    assert module.apply(rewrite_ctx(tmp_path), final, lineage, {"x": np.zeros(2, np.float32)}) is final
    (step,) = lineage.steps
    assert step.metrics == {"mode": "auto", **kept_when_failed, "error": "[ONNXRuntimeError] my.domain:Foo is not a registered op"}
    assert step.inserted and what in step.notes[0] and not scratch.exists()
