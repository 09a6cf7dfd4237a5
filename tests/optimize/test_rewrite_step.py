"""What the graph rewrites after the passes share (optimize/rewrite_step.py): a failure to
decide is a note on an inserted step and the model is handed on unchanged, for each rewrite."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from helpers import rewrite_ctx
from onnx import TensorProto, helper
from tiny_models import save_graph

from optimize import pad_trim, skip_layernorm, softmax_guard
from optimize.handed_out import enabled, handed_out
from optimize.handle import ModelHandle


@pytest.mark.parametrize(("module", "kept_when_failed", "what"), [
    (skip_layernorm, {"layout": "add"}, "residual layout not decided"),
    (softmax_guard, {"kept": False}, "softmax guard not decided"),
    (pad_trim, {"kept": False}, "padding cut not decided"),
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


def test_enabled_for_timing_choices():
    assert enabled("always", "cuda") and enabled("auto", "cpu")
    assert not enabled("auto", "cuda") and not enabled("never", "cpu")


def test_handed_out_applies_the_rewrites_a_run_would(tmp_path):
    """A model timed to choose a shape or an export gets its padding cut, then its Softmax guarded,
    as the pipeline's last steps would; each only where its mode says so."""
    import onnx
    from tiny_models import masked_encoder

    src = masked_encoder(tmp_path / "m.onnx")

    def ops(path):
        return {n.op_type for n in onnx.load(str(path)).graph.node}

    both, done = handed_out(src, tmp_path / "a", SimpleNamespace(pad_trim="auto", softmax_guard="auto"), "cpu")
    assert both == tmp_path / "a/guarded/model.onnx" and {"Range", "Slice", "Max"} <= ops(both)
    assert done == ["padding cut", "Softmax guarded"]
    cut, done = handed_out(src, tmp_path / "b", SimpleNamespace(pad_trim="always", softmax_guard="never"), "cuda")
    assert cut == tmp_path / "b/cut/model.onnx" and "Slice" in ops(cut) and done == ["padding cut"]
    assert handed_out(src, tmp_path / "c", SimpleNamespace(pad_trim="auto", softmax_guard="auto"), "cuda") == (src, [])
