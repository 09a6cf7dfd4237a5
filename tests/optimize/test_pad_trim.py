"""Padding past the batch's longest row cut inside the graph (optimize/pad_trim.py): the same outputs
as the batch cut by hand (float and dynamic int8), the check that catches a model reading its padding,
what it leaves alone, and the modes."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import rewrite_ctx
from onnx import TensorProto, helper
from tiny_models import masked_encoder, save_graph

from optimize import pad_check, pad_trim
from optimize.handle import ModelHandle

VOCAB = 20  # masked_encoder's


def _batch(lengths: list[int], columns: int, *, left: bool = False, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = np.zeros((len(lengths), columns), np.int64)
    mask = np.zeros((len(lengths), columns), np.int64)
    for r, n in enumerate(lengths):
        cols = slice(columns - n, columns) if left else slice(0, n)
        ids[r, cols] = rng.integers(1, VOCAB, n)
        mask[r, cols] = 1
    return {"input_ids": ids, "attention_mask": mask}


def _run(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)


def _int8(src: Path, dst: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    assert any(x.op_type == "DynamicQuantizeLinear" for x in onnx.load(str(dst)).graph.node)
    return dst


@pytest.mark.parametrize("opset", [13, 17, 18])
def test_cut_gives_the_outputs_of_the_batch_cut_by_hand(tmp_path, opset):
    src = masked_encoder(tmp_path / "m.onnx", opset=opset)
    dst = tmp_path / "cut.onnx"
    assert pad_trim.rewrite(src, dst) == (["input_ids", "attention_mask"], None)
    onnx.checker.check_model(onnx.load(str(dst)), full_check=True)
    feeds = _batch([3, 7, 5], 16)
    by_hand = {k: v[:, :7] for k, v in feeds.items()}
    np.testing.assert_array_equal(_run(dst, feeds)[0], _run(src, by_hand)[0])
    np.testing.assert_allclose(_run(dst, feeds)[0], _run(src, feeds)[0], rtol=1e-5, atol=1e-6)
    g = onnx.load(str(dst)).graph
    assert [i.name for i in g.input] == ["input_ids", "attention_mask"]  # the API stays
    readers = {n.name for n in g.node if {"input_ids", "attention_mask"} & set(n.input)}
    assert readers and all(r.startswith("pad_trim_") for r in readers)  # the model's own nodes read the cut inputs


@pytest.mark.parametrize(("feeds", "why"), [
    (_batch([2, 4], 6, left=True), "left padding: every row ends at the last column"),
    (_batch([6, 6], 6), "no padding"),
    ({"input_ids": np.zeros((2, 5), np.int64), "attention_mask": np.zeros((2, 5), np.int64)}, "every column masked"),
])
def test_batches_with_nothing_to_cut_run_unchanged(tmp_path, feeds, why):
    src = masked_encoder(tmp_path / "m.onnx")
    pad_trim.rewrite(src, tmp_path / "cut.onnx")
    a, b = _run(src, feeds)[0], _run(tmp_path / "cut.onnx", feeds)[0]
    if feeds["attention_mask"].any():
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6, err_msg=why)
    else:  # one column is kept so the graph still has a sequence to run on; the output is the model's for it
        np.testing.assert_array_equal(b, _run(src, {k: v[:, :1] for k, v in feeds.items()})[0])


@pytest.mark.parametrize(("onnx_type", "dtype"), [(TensorProto.INT32, np.int32), (TensorProto.BOOL, np.bool_),
                                                  (TensorProto.FLOAT, np.float32)])
def test_masks_of_other_types_are_cut_too(tmp_path, onnx_type, dtype):
    src = masked_encoder(tmp_path / "m.onnx", mask_type=onnx_type)
    feeds = _batch([2, 3], 9)
    feeds["attention_mask"] = feeds["attention_mask"].astype(dtype)
    assert pad_trim.rewrite(src, tmp_path / "cut.onnx")[0]
    np.testing.assert_array_equal(_run(tmp_path / "cut.onnx", feeds)[0], _run(src, {k: v[:, :3] for k, v in feeds.items()})[0])


@pytest.mark.parametrize(("pooling", "reason"), [
    ("tokens", "output h runs along the sequence axis `sequence`"),
])
def test_models_it_does_not_apply_to(tmp_path, pooling, reason):
    src = masked_encoder(tmp_path / "m.onnx", pooling=pooling)
    assert pad_trim.rewrite(src, tmp_path / "cut.onnx") == ([], reason)
    assert not (tmp_path / "cut.onnx").exists()


def test_a_cut_model_is_not_cut_twice(tmp_path):
    src = masked_encoder(tmp_path / "m.onnx")
    pad_trim.rewrite(src, tmp_path / "cut.onnx")
    assert pad_trim.rewrite(tmp_path / "cut.onnx", tmp_path / "again.onnx") == ([], "its inputs are cut already")


def test_an_output_along_the_sequence_the_file_does_not_name_fails_the_check(tmp_path):
    src = masked_encoder(tmp_path / "m.onnx", pooling="tokens")
    m = onnx.load(str(src))
    m.graph.output[0].type.tensor_type.ClearField("shape")  # the file no longer says it runs along the sequence
    onnx.save(m, str(src))
    choice = pad_trim.choose(src, tmp_path / "out", mode="always", inputs=_batch([3, 5], 12), threads=1,
                             warmup=1, repeat=3, tolerance=0.03)
    assert choice.path == src and choice.metrics["check"]["difference"] is None
    assert "their shapes change" in choice.notes[0]


def test_the_check_runs_the_graphs_as_written(tmp_path, monkeypatch):
    """ONNX Runtime fuses a cut and an uncut graph differently, and its kernels for the two forms
    differ by more than the tolerance on int8 models: the check compares what the graphs compute."""
    from optimize import runtime

    calls = []
    real = runtime.session
    monkeypatch.setattr(runtime, "session", lambda *a, **k: calls.append(k.get("optimize_graph")) or real(*a, **k))
    src = masked_encoder(tmp_path / "m.onnx")
    pad_trim.rewrite(src, tmp_path / "c.onnx")
    assert pad_trim.check(src, tmp_path / "c.onnx", _batch([3, 5], 12), ["input_ids", "attention_mask"], 1, tmp_path / "k")["passed"]
    assert calls == [False, False]


def test_inputs_of_another_shape_leave_it_alone(tmp_path):
    x = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"])
    z = helper.make_tensor_value_info("pixel", TensorProto.FLOAT, ["batch", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])
    src = save_graph([helper.make_node("Identity", ["pixel"], ["y"])], [x, z], [y], {}, tmp_path / "m.onnx")
    names, why = pad_trim.rewrite(src, tmp_path / "cut.onnx")
    assert names == [] and "input pixel is not shaped like `attention_mask`" in why


def test_check_catches_a_model_that_reads_its_padding(tmp_path):
    src = masked_encoder(tmp_path / "m.onnx", pooling="all")  # the mean over every column, padding included
    choice = pad_trim.choose(src, tmp_path / "out", mode="always", inputs=_batch([3, 5], 12), threads=1,
                             warmup=1, repeat=3, tolerance=0.03)
    assert choice.path == src and choice.metrics["kept"] is False
    assert choice.metrics["check"]["passed"] is False and choice.metrics["check"]["difference"] > 0.01
    assert "it reads its padding" in choice.notes[0] and not (tmp_path / "out").exists()


def test_dynamic_int8_is_checked_with_its_scales_held(tmp_path):
    src = _int8(masked_encoder(tmp_path / "m.onnx"), tmp_path / "q.onnx")
    feeds = _batch([3, 7, 5], 16)
    held = pad_check.held_scales(src, pad_check.padded(feeds, ["input_ids", "attention_mask"]), 1, tmp_path / "s")
    assert not any(x.op_type == "DynamicQuantizeLinear" for x in onnx.load(str(held)).graph.node)
    padded = pad_check.padded(feeds, ["input_ids", "attention_mask"])
    np.testing.assert_allclose(_run(held, padded)[0], _run(src, padded)[0], rtol=1e-5, atol=1e-6)  # its own batch: same model
    pad_trim.rewrite(src, tmp_path / "c.onnx")
    result = pad_trim.check(src, tmp_path / "c.onnx", feeds, ["input_ids", "attention_mask"], 1, tmp_path / "chk")
    assert result["passed"] and result["scales_held"] and result["difference"] < 1e-5
    # the cut int8 model gives what the uncut one gives the batch cut by hand
    np.testing.assert_array_equal(_run(tmp_path / "c.onnx", feeds)[0], _run(src, {k: v[:, :7] for k, v in feeds.items()})[0])


def _per_token_int8(src: Path, dst: Path) -> Path:
    """`src` with its value projection as ONNX Runtime's DynamicQuantizeMatMul (int8 weights, one
    scale per column), as the quantize pass writes per-token scales."""
    from onnx import numpy_helper

    m = onnx.load(str(src))
    w = next(numpy_helper.to_array(t) for t in m.graph.initializer if t.name == "wv")
    scale = (np.abs(w).max(axis=0) / 127).astype(np.float32)
    q = np.round(w / scale).astype(np.int8)
    m.graph.initializer.extend([numpy_helper.from_array(q, "wv_q"), numpy_helper.from_array(scale, "wv_s")])
    for i, n in enumerate(m.graph.node):
        if n.op_type == "MatMul" and n.input[1] == "wv":
            m.graph.node[i].CopyFrom(helper.make_node("DynamicQuantizeMatMul", [n.input[0], "wv_q", "wv_s"], list(n.output),
                                                      domain="com.microsoft"))
    m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(m, str(dst))
    return dst


@pytest.mark.parametrize(("pooling", "passed"), [("masked", True), ("all", False)])
def test_a_fused_per_call_quantizer_is_checked_as_float(tmp_path, pooling, passed):
    src = _per_token_int8(masked_encoder(tmp_path / "m.onnx", pooling=pooling), tmp_path / "q.onnx")
    feeds = _batch([3, 7, 5], 16)
    held = pad_check.held_scales(src, pad_check.padded(feeds, ["input_ids", "attention_mask"]), 1, tmp_path / "s")
    assert {n.op_type for n in onnx.load(str(held)).graph.node} >= {"DequantizeLinear", "MatMul"}
    pad_trim.rewrite(src, tmp_path / "c.onnx")
    result = pad_trim.check(src, tmp_path / "c.onnx", feeds, ["input_ids", "attention_mask"], 1, tmp_path / "chk")
    assert result["passed"] is passed and result["scales_held"]


def test_dynamic_int8_that_reads_its_padding_still_fails(tmp_path):
    src = _int8(masked_encoder(tmp_path / "m.onnx", pooling="all"), tmp_path / "q.onnx")
    pad_trim.rewrite(src, tmp_path / "c.onnx")
    result = pad_trim.check(src, tmp_path / "c.onnx", _batch([3, 5], 12), ["input_ids", "attention_mask"], 1, tmp_path / "chk")
    assert not result["passed"]


def test_modes(tmp_path):
    src = masked_encoder(tmp_path / "m.onnx")
    feeds = _batch([3, 5], 64)
    kw = {"inputs": feeds, "threads": 1, "warmup": 1, "repeat": 5, "tolerance": 0.03}
    assert pad_trim.choose(src, tmp_path / "n", mode="never", **kw) is None
    always = pad_trim.choose(src, tmp_path / "a", mode="always", **kw)
    assert always.path == tmp_path / "a/model.onnx" and always.metrics["kept"] and "always" in always.notes[0]
    assert always.metrics["eval_columns"] == 64 and always.metrics["eval_longest"] == 5
    assert not (tmp_path / "a/check").exists()
    full = pad_trim.choose(src, tmp_path / "f", mode="auto", **{**kw, "inputs": _batch([5, 5], 5)})
    assert full.path == src and not full.metrics["kept"] and "fills its 5 columns" in full.notes[0]
    assert "check" not in full.metrics and not (tmp_path / "f").exists()  # nothing to cut: not checked either
    assert pad_trim.choose(src, tmp_path / "x", mode="auto", **{**kw, "inputs": {"x": np.zeros(2)}}) is None


def test_auto_keeps_the_cut_when_timed_faster(tmp_path, monkeypatch):
    from optimize.speed import RatioEstimate

    src = masked_encoder(tmp_path / "m.onnx")
    calls = []

    def fake_time(files, inputs, **k):
        calls.append(list(files))
        return RatioEstimate(2.0, 1.8, 2.2, "faster", 0.03, 20), 10.0, 5.0, 20

    monkeypatch.setattr(pad_trim, "time_pair", fake_time)
    kw = {"inputs": _batch([3, 5], 64), "threads": 1, "warmup": 1, "repeat": 5, "tolerance": 0.03}
    kept = pad_trim.choose(src, tmp_path / "k", mode="auto", **kw)
    assert calls == [["plain", "cut"]] and kept.path == tmp_path / "k/model.onnx" and kept.metrics["speedup"] == 2.0
    assert "64 columns cut to 5, 2.00x faster" in kept.notes[0]
    monkeypatch.setattr(pad_trim, "time_pair", lambda *a, **k: (
        RatioEstimate(1.0, 0.97, 1.03, "no measurable change", 0.03, 20), 10.0, 10.0, 20))
    dropped = pad_trim.choose(src, tmp_path / "d", mode="auto", **kw)
    assert dropped.path == src and not dropped.metrics["kept"] and not (tmp_path / "d").exists()


def test_apply_records_the_step_and_hands_on_the_cut_model(tmp_path):
    src = masked_encoder(tmp_path / "m.onnx")
    final = ModelHandle(form="onnx", onnx_path=src, inputs=[], outputs=["y"])
    lineage = SimpleNamespace(steps=[])
    out = pad_trim.apply(rewrite_ctx(tmp_path, mode="always"), final, lineage, _batch([3, 5], 32))
    assert out.onnx_path == tmp_path / "01-pad_trim/model.onnx"
    (step,) = lineage.steps
    assert step.type == "pad_trim" and step.inserted and step.metrics["kept"]
