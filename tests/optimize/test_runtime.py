"""optimize.runtime: parity numbers (cosine, max |diff|, NaN-safety), sessions, the checker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from tiny_models import IN_FEATURES, OUT_FEATURES

from optimize.errors import VerificationError
from optimize.runtime import check_model, feeds_for, parity, predict, session

RNG = np.random.default_rng(0)
REF = [RNG.standard_normal((6, 4)).astype(np.float32), RNG.standard_normal((6, 2, 3)).astype(np.float32)]


def test_identical_outputs_have_cosine_1() -> None:
    p = parity(REF, [r.copy() for r in REF])
    assert p["all_finite"] is True
    assert p["min_cosine"] == pytest.approx(1.0, abs=1e-12)
    assert p["mean_cosine"] == pytest.approx(1.0, abs=1e-12)
    assert p["max_abs_diff"] == 0.0


def test_scaled_output_has_cosine_1_but_a_difference() -> None:
    p = parity([REF[0]], [REF[0] * 2])
    assert p["min_cosine"] == pytest.approx(1.0, abs=1e-9)
    assert p["max_abs_diff"] == pytest.approx(float(np.abs(REF[0]).max()), rel=1e-6)


def test_negated_output_has_cosine_minus_1() -> None:
    p = parity([REF[0]], [-REF[0]])
    assert p["min_cosine"] == pytest.approx(-1.0, abs=1e-9)


def test_cosine_is_per_sample_and_the_minimum_is_reported() -> None:
    ref = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0]], np.float32)
    cand = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], np.float32)  # sample 1 is orthogonal
    p = parity([ref], [cand])
    assert p["min_cosine"] == pytest.approx(0.0, abs=1e-12)
    assert p["mean_cosine"] == pytest.approx(2 / 3)
    assert p["max_abs_diff"] == pytest.approx(1.0)


def test_min_over_several_outputs() -> None:
    bad = REF[1].copy()
    bad[2] = -bad[2]  # one sample of the second output flips sign
    p = parity(REF, [REF[0], bad])
    assert p["min_cosine"] == pytest.approx(-1.0, abs=1e-9)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_output_is_detected(value: float) -> None:
    cand = [REF[0].copy(), REF[1].copy()]
    cand[1][3, 1, 2] = value
    p = parity(REF, cand)
    assert p["all_finite"] is False
    assert p["min_cosine"] is None
    assert p["mean_cosine"] is None
    assert p["max_abs_diff"] is None


def test_constant_zero_output_has_cosine_0() -> None:
    p = parity([REF[0]], [np.zeros_like(REF[0])])
    assert p["all_finite"] is True
    assert p["min_cosine"] == 0.0
    assert p["mean_cosine"] == 0.0
    assert p["max_abs_diff"] == pytest.approx(float(np.abs(REF[0]).max()))


def test_both_zero_is_cosine_1() -> None:
    z = np.zeros((3, 4), np.float32)
    assert parity([z], [z.copy()])["min_cosine"] == 1.0


def test_shape_change_raises() -> None:
    with pytest.raises(VerificationError, match=r"output shape changed: \(6, 4\) → \(6, 5\)"):
        parity([REF[0]], [np.zeros((6, 5), np.float32)])


def test_parity_matches_an_independent_cosine() -> None:
    cand = REF[0] + 0.3 * RNG.standard_normal(REF[0].shape).astype(np.float32)
    expected = min(
        float(np.dot(r, c) / (np.linalg.norm(r) * np.linalg.norm(c)))
        for r, c in zip(REF[0].astype(np.float64), cand.astype(np.float64), strict=True)
    )
    p = parity([REF[0]], [cand])
    assert p["min_cosine"] == pytest.approx(expected, rel=1e-9)
    assert p["min_cosine"] < 0.999


# ---------------------------------------------------------------- sessions


def test_session_runs_the_exported_mlp(mlp_onnx: Path, mlp) -> None:
    sess = session(mlp_onnx, threads=1)
    assert [i.name for i in sess.get_inputs()] == ["x"]
    x = np.random.default_rng(1).standard_normal((10, IN_FEATURES)).astype(np.float32)
    (y,) = predict(sess, {"x": x}, batch_size=4)  # 3 batches: 4 + 4 + 2
    assert y.shape == (10, OUT_FEATURES)
    with torch.no_grad():
        ref = mlp(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    assert parity([ref], [y])["min_cosine"] > 0.99999


def test_session_runs_the_subgraph_model(subgraph_model) -> None:
    sess = session(subgraph_model.path)
    x = np.random.default_rng(2).standard_normal((3, 4)).astype(np.float32)
    h = x @ subgraph_model.gemm_weight + subgraph_model.gemm_bias
    for cond, w in ((True, subgraph_model.then_weight), (False, subgraph_model.else_weight)):
        (y,) = sess.run(None, {"X": x, "cond": np.array(cond)})
        np.testing.assert_allclose(y, h @ w @ subgraph_model.main_const_weight, rtol=1e-4, atol=1e-4)


def test_feeds_for_single_input_accepts_any_name(mlp_onnx: Path) -> None:
    sess = session(mlp_onnx)
    x = np.zeros((1, IN_FEATURES), np.float32)
    assert list(feeds_for(sess, {"pixels": x})) == ["x"]


def test_feeds_for_missing_input(subgraph_model) -> None:
    sess = session(subgraph_model.path)
    with pytest.raises(VerificationError, match=r"no data for model inputs \['cond'\]"):
        feeds_for(sess, {"X": np.zeros((1, 4), np.float32)})


def test_session_on_a_corrupt_file(tmp_path: Path, mlp_onnx: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(mlp_onnx.read_bytes()[:200])
    with pytest.raises(VerificationError, match="ONNX Runtime cannot load the model") as info:
        session(bad)
    assert "\n" not in str(info.value)
    assert info.value.exit_code == 1


def test_session_on_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(VerificationError):
        session(tmp_path / "absent.onnx")


def test_session_cuda_without_provider(mlp_onnx: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this ONNX Runtime has CUDA")
    with pytest.raises(VerificationError, match="no CUDAExecutionProvider"):
        session(mlp_onnx, device="cuda")


# ---------------------------------------------------------------- checker


def test_check_model_passes_valid_models(mlp_onnx: Path, subgraph_model) -> None:
    check_model(mlp_onnx)
    check_model(subgraph_model.path)


def test_check_model_rejects_an_undefined_input(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["missing"], ["Y"])],
        "broken",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1])],
    )
    path = tmp_path / "broken.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(VerificationError, match="ONNX checker") as info:
        check_model(path)
    assert str(path) in str(info.value)


def test_check_model_runs_shape_inference(tmp_path: Path) -> None:
    # MatMul of [2,3] by [4,5] is structurally fine; only full_check's shape inference catches it.
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["A", "B"], ["Y"])],
        "shapes",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, [2, 3]),
         helper.make_tensor_value_info("B", TensorProto.FLOAT, [4, 5])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, 5])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)  # the plain check passes
    path = tmp_path / "shapes.onnx"
    onnx.save_model(model, str(path))
    with pytest.raises(VerificationError):
        check_model(path)


def test_parity_compares_scale_groups_apart():
    """YOLOv8-like output (batch, 4 boxes in pixels + 2 scores in 0..1, anchors): scores broken by
    0.3 must show, though the boxes alone would keep a plain cosine near 1."""
    from optimize.runtime import parity

    rng = np.random.default_rng(0)
    ref = np.concatenate([rng.uniform(0, 640, (3, 4, 50)), rng.uniform(0, 0.2, (3, 2, 50))], axis=1)
    broken = ref.copy()
    broken[:, 4:] += rng.uniform(0, 0.3, (3, 2, 50))
    plain = float(np.min([(a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(ref, broken, strict=True)]))
    p = parity([ref.astype(np.float32)], [broken.astype(np.float32)])
    scores = [(a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(ref[:, 4:], broken[:, 4:], strict=True)]
    assert plain > 0.999 and p["scale_grouped_outputs"] == 1
    assert p["min_cosine"] == pytest.approx(min(scores), abs=1e-6)  # the scores' own cosine, not lifted by the boxes
    same_scale = rng.standard_normal((3, 6, 50))
    assert parity([same_scale], [same_scale])["scale_grouped_outputs"] == 0


def test_scale_groups_split_at_each_gap_over_the_spread():
    from optimize.runtime import _scale_groups

    rng = np.random.default_rng(1)
    ref = np.concatenate([rng.normal(0, 300, (2, 2, 40)), rng.normal(0, 0.5, (2, 3, 40)), np.zeros((2, 1, 40))], axis=1)
    groups = _scale_groups(ref)
    assert groups is not None and [g.tolist() for g in groups] == [[5], [2, 3, 4], [0, 1]]


def test_a_yolox_layout_is_compared_channel_by_channel():
    """YOLOX writes (batch, anchors, 4 box terms + objectness + class): each channel is its own
    quantity; a broken objectness must show though the box terms hold the most energy, and a
    channel with no signal in a sample (no object anywhere) is not judged on its noise."""
    from optimize.runtime import anchors_by_channels, parity

    rng = np.random.default_rng(2)
    ref = np.concatenate([rng.normal(0, 1.2, (2, 300, 4)), rng.uniform(0, 0.1, (2, 300, 2))], axis=2)
    ref[1, :, 4] = rng.uniform(0, 1e-4, 300)  # sample 1: no object anywhere
    broken = ref.copy()
    broken[0, :, 4] += rng.uniform(0, 0.1, 300)
    broken[1, :, 4] = rng.uniform(0, 1e-4, 300)  # noise on a dead channel
    p = parity([ref.astype(np.float32)], [broken.astype(np.float32)])
    a, b = ref[0, :, 4], broken[0, :, 4]
    assert p["min_cosine"] == pytest.approx(a @ b / np.linalg.norm(a) / np.linalg.norm(b), abs=1e-5)
    whole = ref[0].ravel() @ broken[0].ravel() / np.linalg.norm(ref[0]) / np.linalg.norm(broken[0])
    assert p["min_cosine"] < 0.95 < whole  # one cosine over all channels hides it
    assert parity([ref.astype(np.float32)], [ref.astype(np.float32)])["min_cosine"] == pytest.approx(1.0)
    assert not anchors_by_channels((1, 1, 64, 64)) and not anchors_by_channels((1, 128, 384))
    assert not anchors_by_channels((1, 84, 8400)) and anchors_by_channels((1, 3549, 6))


def test_predict_feeds_a_batch_1_export_one_sample_at_a_time(tmp_path: Path) -> None:
    """A model whose batch dim is fixed at 1 (many exporters write 1x3xHxW) gets eval data of several
    samples one at a time, not in batches ONNX Runtime rejects."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 2], np.arange(8, dtype=np.float32).tolist())
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], [w])
    path = tmp_path / "b1.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    (y,) = predict(session(path), {"x": x}, batch_size=64)
    assert y.shape == (5, 2) and np.allclose(y, x @ np.arange(8, dtype=np.float32).reshape(4, 2), atol=1e-5)


def test_ir_version_newer_than_the_runtime(tmp_path: Path, monkeypatch) -> None:
    """onnx 1.23 writes IR 14, which onnxruntime 1.30 refuses (seen on a GPU server's image). The
    user's model: exit 2 at load, one line naming both versions. A file the tool wrote: the same
    words, as a verification failure (exit 1)."""
    import onnxruntime as ort

    from optimize import runtime
    from optimize.errors import ModelLoadError
    from optimize.loaders import load_model

    real = ort.InferenceSession

    def old_runtime(model: Any, *a: Any, **k: Any) -> Any:
        ir = onnx.load_from_string(model).ir_version if isinstance(model, bytes) else onnx.load(model).ir_version
        if ir > 13:
            raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : Load model from m.onnx failed:/onnxruntime_src/"
                               f"onnxruntime/core/graph/model.cc:202 onnxruntime::Model::Model(...) Unsupported model "
                               f"IR version: {ir}, max supported IR version: 13")
        return real(model, *a, **k)

    monkeypatch.setattr(ort, "InferenceSession", old_runtime)
    runtime.runtime_refuses_ir.cache_clear()
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 14
    path = tmp_path / "new.onnx"
    onnx.save(model, str(path))
    try:
        with pytest.raises(ModelLoadError, match=r"IR version 14 is newer than onnxruntime .* \(up to IR 13\); upgrade") as err:
            load_model(str(path))
        assert err.value.exit_code == 2 and "\n" not in str(err.value)
        with pytest.raises(VerificationError, match=r"IR version 14 is newer than onnxruntime"):
            session(path)
        model.ir_version = 8
        onnx.save(model, str(path))
        assert load_model(str(path)).form == "onnx"
    finally:
        runtime.runtime_refuses_ir.cache_clear()


def test_one_score_per_sample_is_compared_as_one_track_not_by_sign() -> None:
    # openwakeword's wake-word score, (N, 1): per sample, any two positive scores have cosine 1
    ref = np.array([[0.001], [0.02], [0.95], [0.997], [0.3], [0.002]], np.float32)
    got = np.array([[0.2], [0.3], [0.5], [0.6], [0.4], [0.2]], np.float32)
    p = parity([ref], [got])
    expected = float(ref.ravel() @ got.ravel() / np.linalg.norm(ref) / np.linalg.norm(got))
    assert p["min_cosine"] == pytest.approx(expected, rel=1e-6) and p["min_cosine"] < 0.9


def _reduce_model(path: Path, coupled: bool) -> Path:
    """y = x - max(x) over the whole batch (as openwakeword's melspectrogram floors its log), or
    y = x - max(x) over each sample's own features."""
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    nodes = [helper.make_node("ReduceMax", ["x"], ["m"], keepdims=1)] if coupled else [
        helper.make_node("ReduceMax", ["x", "axes"], ["m"], keepdims=1)]
    nodes.append(helper.make_node("Sub", ["x", "m"], ["y"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
                              initializer=[] if coupled else [axes])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


def test_a_model_coupling_the_samples_of_a_batch_is_compared_at_the_batch_of_use(tmp_path: Path) -> None:
    from optimize.runtime import batch_coupled, verification_batch

    x = {"x": (RNG.standard_normal((16, 4)) * np.arange(1, 17)[:, None]).astype(np.float32)}
    coupled = session(_reduce_model(tmp_path / "c.onnx", True), threads=1)
    own = session(_reduce_model(tmp_path / "o.onnx", False), threads=1)
    assert batch_coupled(coupled, x, 64) and not batch_coupled(own, x, 64)
    assert verification_batch(coupled, x, 64, 1) == 1
    assert verification_batch(own, x, 64, 1) == 64
    assert verification_batch(coupled, x, 8, 8) == 8  # already the batch of use: nothing to run
