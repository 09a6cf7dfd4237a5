"""Inputs, shapes and probes (issues 11 and 17): shapes the user controls and never invented,
scalar inputs, inputs the tool cannot feed, token ids, parity by output type, degenerate probes,
memory-bounded random probes. Every model is built in code (tests/probe_models.py)."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from probe_models import (
    argmax_model,
    constant_output_model,
    odd_input_model,
    scalar_input_model,
    symbolic_hw_model,
    token_model,
)
from reliability_helpers import assert_nothing_written, assert_one_line_error, cli

from optimize.config import load_config_text
from optimize.data import random_dataset
from optimize.errors import ModelLoadError, UsageError
from optimize.handle import TensorSpec
from optimize.probes import (
    RandomBatches,
    degenerate_reason,
    random_ids_would_be_used,
    sample_count,
    token_id_inputs,
)
from optimize.runtime import parity, predict, session
from optimize.shapes import apply_to_config, check_resolved, parse_input_shape, resolve_for_model

FAST = "measure: {repeat: 3, warmup: 1, parity_samples: 16, single_thread: false}\n"


def write_cfg(tmp_path: Path, extra: str = "", name: str = "p.yaml") -> Path:
    p = tmp_path / name
    p.write_text("schema_version: 1\npasses: []\n" + FAST + extra)
    return p


def run_json(capfd, model: Path, cfg: Path, out: Path, *extra: str) -> tuple[int, dict | None, str]:
    code, stdout, err = cli(capfd, "run", str(model), "-c", str(cfg), "-o", str(out), "--json", "--progress", "none",
                            *extra)
    return code, (json.loads(stdout) if stdout.strip() else None), err


# ---------------------------------------------------------------- --input-shape and symbolic dims


def test_parse_input_shape() -> None:
    assert parse_input_shape("images=1x3x640x640") == ("images", [1, 3, 640, 640])
    assert parse_input_shape("input.1=2,3") == ("input.1", [2, 3])
    assert parse_input_shape("sr=") == ("sr", [])
    for bad in ("images", "=1x3", "x=1x0", "x=1xH"):
        with pytest.raises(UsageError, match="--input-shape"):
            parse_input_shape(bad)


def test_flag_batch_is_the_measured_batch_unless_measure_batch_is_set() -> None:
    cfg = load_config_text("schema_version: 1\npasses: []\n")
    apply_to_config(cfg, ["x=8x3x32x32"])
    assert cfg.model.input_shapes == {"x": [8, 3, 32, 32]} and cfg.measure.batch == 8
    cfg = load_config_text("schema_version: 1\npasses: []\nmeasure: {batch: 2}\nmodel: {input_shapes: {y: [1, 4]}}\n")
    apply_to_config(cfg, ["x=8x3x32x32"])
    assert cfg.model.input_shapes == {"y": [1, 4], "x": [8, 3, 32, 32]} and cfg.measure.batch == 2


def test_unresolved_dims_are_never_invented() -> None:
    spec = TensorSpec("x", ("batch", 3, "H", "W"))
    with pytest.raises(UsageError) as info:
        spec.concrete_shape(1)
    assert str(info.value).startswith("model input 'x' has symbolic dims H (axis 2), W (axis 3): add --input-shape x=1x3xHxW")
    assert TensorSpec("x", ("batch", 3, "H", "W"), example_shape=(1, 3, 64, 32)).concrete_shape(4) == (4, 3, 64, 32)
    check_resolved([TensorSpec("x", ("batch", 16))])  # a symbolic batch axis alone is fine


def test_symbolic_hw_model_stops_before_any_work_then_runs_with_the_flag(capfd, tmp_path: Path) -> None:
    model = symbolic_hw_model(tmp_path / "hw.onnx")
    cfg, out = write_cfg(tmp_path), tmp_path / "hw.opt.onnx"
    code, _, err = cli(capfd, "run", str(model), "-c", str(cfg), "-o", str(out), "-q")
    assert_one_line_error(code, err, 2, "model input 'x' has symbolic dims H (axis 2), W (axis 3)",
                          "--input-shape x=1x3xHxW")
    assert_nothing_written(out)
    code, report, err = run_json(capfd, model, cfg, out, "--input-shape", "x=2x3x24x16")
    assert code == 0, err
    par = report["metrics"]["parity"]
    assert par["inputs"]["shapes"]["x"] == [16, 3, 24, 16]  # the declared H×W, not 1×1
    assert report["latency"]["output"]["batch"] == 2  # the flag's batch is the measured batch
    assert report["config"]["model"]["input_shapes"] == {"x": [2, 3, 24, 16]}
    second = par["inputs"]["second_shape"]  # H and W stay symbolic: also compared at half the size
    assert second["shapes"]["x"] == [8, 3, 12, 8] and second["min_cosine"] == pytest.approx(1.0)


def test_second_shape_keeps_image_dims_on_the_stride() -> None:
    from optimize.second_shape import second_specs

    (spec,) = second_specs([TensorSpec("x", ("batch", 3, "H", "W"), example_shape=(1, 3, 640, 320))])
    assert spec.concrete_shape(1) == (1, 3, 320, 160)
    (spec,) = second_specs([TensorSpec("x", ("batch", 3, "H", "W"), example_shape=(1, 3, 100, 100))])
    assert spec.concrete_shape(1) == (1, 3, 32, 32)
    assert second_specs([TensorSpec("x", ("batch", 16))]) is None  # only the batch axis is symbolic


def test_symbolic_dims_are_resolved_by_declared_data(capfd, tmp_path: Path) -> None:
    model = symbolic_hw_model(tmp_path / "hw.onnx")
    np.savez(tmp_path / "eval.npz", x=np.random.default_rng(0).standard_normal((6, 3, 10, 12)).astype(np.float32))
    cfg = write_cfg(tmp_path, f"data: {{eval: {{source: {tmp_path / 'eval.npz'}}}}}\nmodel: {{task: regression}}\n")
    code, report, err = run_json(capfd, model, cfg, tmp_path / "o.onnx")
    assert code == 0, err
    assert report["metrics"]["parity"]["inputs"]["shapes"]["x"] == [6, 3, 10, 12]
    assert report["metrics"]["parity"]["inputs"]["source"] == "data.eval"


def test_input_shape_in_the_config_and_a_wrong_name_or_rank(capfd, tmp_path: Path) -> None:
    model = symbolic_hw_model(tmp_path / "hw.onnx")
    out = tmp_path / "o.onnx"
    cfg = write_cfg(tmp_path, "model: {input_shapes: {images: [1, 3, 8, 8]}}\n")
    code, _, err = cli(capfd, "run", str(model), "-c", str(cfg), "-o", str(out), "-q")
    assert_one_line_error(code, err, 2, "no input 'images'", "it has: x")
    code, _, err = cli(capfd, "run", str(model), "-c", str(write_cfg(tmp_path, name="q.yaml")), "-o", str(out), "-q",
                       "--input-shape", "x=1x3x8")
    assert_one_line_error(code, err, 2, "'x' has 4 dims")
    assert_nothing_written(out)


def test_image_size_from_the_files_metadata(tmp_path: Path) -> None:
    model = symbolic_hw_model(tmp_path / "hw.onnx", metadata={"imgsz": "[32, 48]"})
    specs, notes = resolve_for_model(model, [TensorSpec("x", ("batch", 3, "H", "W"))], None, "t")
    assert specs[0].concrete_shape(2) == (2, 3, 32, 48)
    assert notes and "metadata (imgsz)" in notes[0]
    specs, _ = resolve_for_model(model, [TensorSpec("x", ("batch", 3, "H", "W"))], {"x": [1, 3, 8, 8]}, "t")
    assert specs[0].concrete_shape(1) == (1, 3, 8, 8)  # the user's shape wins over the file's hint


def test_inspect_and_bench_take_input_shape(capfd, tmp_path: Path) -> None:
    model = symbolic_hw_model(tmp_path / "hw.onnx")
    code, stdout, err = cli(capfd, "inspect", str(model), "--json", "--input-shape", "x=1x3x16x16")
    assert code == 0, err
    (inp,) = json.loads(stdout)["inputs"]
    assert inp["example_shape"] == [1, 3, 16, 16]
    code, stdout, err = cli(capfd, "inspect", str(model), "--json")
    assert code == 0 and "add --input-shape x=" in json.loads(stdout)["inputs"][0]["unresolved"]
    code, _, err = cli(capfd, "bench", str(model), "--threads", "1", "--repeat", "3", "--warmup", "0", "-q")
    assert_one_line_error(code, err, 2, "--input-shape x=1x3xHxW")
    code, stdout, err = cli(capfd, "bench", str(model), "--threads", "1", "--repeat", "3", "--warmup", "0", "-q",
                            "--json", "--input-shape", "x=2x3x16x16")
    assert code == 0, err
    assert json.loads(stdout)["batches"] == [2]


# ---------------------------------------------------------------- inputs the tool cannot feed; scalars


@pytest.mark.parametrize(("kind", "fragment"), [
    ("none", "has no inputs"), ("string", "input 's' is a string tensor"), ("zero", "input 'x' has a zero-size dim (axis 1)"),
])
def test_inputs_that_cannot_be_fed_are_refused_naming_the_input(capfd, tmp_path: Path, kind: str, fragment: str) -> None:
    model = odd_input_model(tmp_path / f"{kind}.onnx", kind)
    out = tmp_path / "o.onnx"
    code, _, err = cli(capfd, "run", str(model), "-c", str(write_cfg(tmp_path)), "-o", str(out), "-q")
    assert_one_line_error(code, err, 2, fragment)
    assert_nothing_written(out)


def test_a_declared_input_name_the_model_lacks_is_refused_with_did_you_mean(tmp_path: Path) -> None:
    from optimize.loaders import load_model

    model = symbolic_hw_model(tmp_path / "hw.onnx", name="images")
    cfg = load_config_text("schema_version: 1\npasses: []\nmodel:\n  inputs: [{name: image, shape: [1, 3, 8, 8]}]\n")
    with pytest.raises(ModelLoadError, match="no input 'image' \\(did you mean 'images'\\?\\)"):
        load_model(str(model), model_cfg=cfg.model)


def test_scalar_inputs_are_not_batched(tmp_path: Path) -> None:
    specs = [TensorSpec("x", ("N", 4)), TensorSpec("sr", (), "int64", low=3, high=4)]
    ds = random_dataset(specs, 10)
    assert ds.inputs["x"].shape == (10, 4) and ds.inputs["sr"].shape == () and len(ds) == 10
    assert ds.take(3).inputs["sr"].shape == () and len(ds.take(3)) == 3
    assert [b["sr"].shape for b, _ in ds.batches(4)] == [(), (), ()]
    sess = session(scalar_input_model(tmp_path / "s.onnx"))
    (y,) = predict(sess, ds.inputs, batch_size=4)
    assert y.shape == (10, 4)
    assert sample_count({"sr": np.array(3)}) == 1


def test_scalar_input_model_runs_end_to_end(capfd, tmp_path: Path) -> None:
    model = scalar_input_model(tmp_path / "s.onnx")
    code, report, err = run_json(capfd, model, write_cfg(tmp_path, "gates: {min_parity_cosine: 0.99}\n"),
                                 tmp_path / "s.opt.onnx")
    assert code == 0, err
    assert report["metrics"]["parity"]["value"] == pytest.approx(1.0)
    assert report["metrics"]["parity"]["inputs"]["shapes"]["sr"] == []


# ---------------------------------------------------------------- token ids


def test_token_id_inputs_and_the_calibration_helper() -> None:
    ids = TensorSpec("input_ids", ("batch", "seq"), "int64", example_size=8)
    mask = TensorSpec("attention_mask", ("batch", "seq"), "int64", example_size=8)
    assert token_id_inputs([ids, mask]) == ["input_ids"]
    types = TensorSpec("token_type_ids", ("batch", "seq"), "int64", example_size=8)
    positions = TensorSpec("position_ids", ("batch", "seq"), "int64", example_size=8)
    assert token_id_inputs([ids, mask, types, positions]) == ["input_ids"]  # segment/position ids are not tokens
    assert token_id_inputs([TensorSpec("x", ("batch", 4)), TensorSpec("sr", (), "int64")]) == []
    bare = load_config_text("schema_version: 1\npasses: []\n")
    text = load_config_text("schema_version: 1\npasses: []\ndata: {calibration: {source: t.txt}}\n")
    assert random_ids_would_be_used(bare, [ids, mask]) == ["input_ids"]
    assert random_ids_would_be_used(text, [ids, mask]) == []


def test_token_model_needs_a_sequence_length_and_parity_on_random_ids_is_weak(capfd, tmp_path: Path) -> None:
    model = token_model(tmp_path / "t.onnx")
    cfg, out = write_cfg(tmp_path, "model:\n  inputs: [{name: input_ids, shape: [batch, seq], dtype: int64, high: 50}]\n"), \
        tmp_path / "t.opt.onnx"
    code, _, err = cli(capfd, "run", str(model), "-c", str(cfg), "-o", str(out), "-q")
    assert_one_line_error(code, err, 2, "'input_ids' has symbolic dims seq (axis 1)", "--input-shape input_ids=1xseq")
    code, report, err = run_json(capfd, model, cfg, out, "--input-shape", "input_ids=1x12")
    assert code == 0, err
    par = report["metrics"]["parity"]
    assert par["inputs"]["source"].startswith("random token ids") and par["inputs"]["evidence"].startswith("weak")
    assert any("random token ids" in f and "weak evidence" in f for f in report["findings"])


def test_a_parity_gate_on_random_token_ids_is_exit_2_before_any_work(capfd, tmp_path: Path) -> None:
    """Random ids tell neither a good model nor a broken one (MiniLM int8: 0.64 on random ids, 0.98 on
    real sentences): a gate judged on them is refused, and --no-fail-on-gate reports it instead."""
    model = token_model(tmp_path / "t.onnx")
    cfg = write_cfg(tmp_path, "model:\n  inputs: [{name: input_ids, shape: [batch, seq], dtype: int64, high: 50}]\n"
                    "gates: {min_parity_cosine: 0.98}\n")
    out = tmp_path / "t.opt.onnx"
    code, _, err = cli(capfd, "run", str(model), "-c", str(cfg), "-o", str(out), "-q", "--input-shape", "input_ids=1x12")
    assert_one_line_error(code, err, 2, "min_parity_cosine would be judged on random token ids for 'input_ids'",
                          "data.eval")
    assert not out.exists()
    code, report, err = run_json(capfd, model, cfg, out, "--input-shape", "input_ids=1x12", "--no-fail-on-gate")
    assert code == 0, err
    assert report["metrics"]["parity"]["inputs"]["evidence"].startswith("weak")


# ---------------------------------------------------------------- parity by output type


def test_integer_outputs_compare_by_agreement_not_cosine() -> None:
    ref = np.array([0, 1, 2, 3, 4] * 20, dtype=np.int64)
    got = ref.copy()
    got[:16] = (got[:16] + 1) % 5  # 16 % of the class indices change
    p = parity([ref], [got])
    assert p["compared_by"] == "agreement" and p["agreement"] == pytest.approx(0.84)
    assert p["min_cosine"] == pytest.approx(0.84)  # what a cosine gate judges for an integer-only model
    mixed = parity([ref, np.ones((100, 3), np.float32)], [got, np.ones((100, 3), np.float32)])
    assert mixed["compared_by"] == "cosine+agreement" and mixed["min_cosine"] == pytest.approx(1.0)
    assert mixed["agreement"] == pytest.approx(0.84)


def test_argmax_model_gates_on_agreement(capfd, tmp_path: Path) -> None:
    model = argmax_model(tmp_path / "a.onnx")
    gates = "gates: {min_parity_cosine: 0.99, min_output_agreement: 1.0}\n"
    code, report, err = run_json(capfd, model, write_cfg(tmp_path, gates), tmp_path / "a.opt.onnx")
    assert code == 0, err
    par = report["metrics"]["parity"]
    assert par["inputs"]["compared_by"] == "agreement" and par["value"] == 1.0
    assert {g["name"] for g in report["gates"]} == {"min_parity_cosine", "min_output_agreement"}


def test_agreement_gate_on_a_float_only_model_fails_saying_why(capfd, tmp_path: Path) -> None:
    model = scalar_input_model(tmp_path / "s.onnx")
    code, report, err = run_json(capfd, model, write_cfg(tmp_path, "gates: {min_output_agreement: 0.9}\n"),
                                 tmp_path / "s.opt.onnx")
    assert code == 3
    (gate,) = report["gates"]
    assert not gate["passed"] and "no integer or bool outputs" in gate["message"]


# ---------------------------------------------------------------- degenerate probes


def test_degenerate_reason() -> None:
    rng = np.random.default_rng(0)
    assert degenerate_reason([rng.standard_normal((16, 4))], 16) is None
    assert "barely vary" in degenerate_reason([np.tile([1.0, 2.0, 3.0], (16, 1))], 16)
    assert "zero" in degenerate_reason([np.zeros((16, 4))], 16)
    assert degenerate_reason([np.zeros((16, 4)), rng.standard_normal((16, 2))], 16) is None  # one output varies
    assert degenerate_reason([np.full(16, 3, np.int64)], 16) is not None
    assert degenerate_reason([np.ones((1, 4))], 1) is None  # one sample cannot be judged


def test_constant_output_model_fails_its_parity_gate(capfd, tmp_path: Path) -> None:
    model = constant_output_model(tmp_path / "c.onnx")
    out = tmp_path / "c.opt.onnx"
    code, report, err = run_json(capfd, model, write_cfg(tmp_path, "gates: {min_parity_cosine: 0.9}\n"), out)
    assert code == 3, err
    par = report["metrics"]["parity"]
    assert par["value"] is None and par["inputs"]["degenerate"] is True
    assert "not meaningful" in par["reason"] and "data.eval" in par["reason"]
    (gate,) = report["gates"]
    assert not gate["passed"] and "not meaningful" in gate["message"]
    assert not out.exists()


# ---------------------------------------------------------------- memory-bounded random probes


def test_random_probes_are_drawn_in_the_models_dtype_without_a_float64_copy() -> None:
    spec = TensorSpec("x", ("batch", 64, 64), "float16")
    tracemalloc.start()
    try:
        arr = spec.random(256, np.random.default_rng(0))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert arr.dtype == np.float16 and arr.shape == (256, 64, 64)
    assert -1 <= float(arr.min()) and float(arr.max()) <= 1 and float(arr.astype(np.float32).std()) > 0.3
    # float64 all at once was 4x the result on its own; now: the result plus one float32 chunk
    assert peak < arr.nbytes + 3 * (1 << 22), peak


def test_random_batches_hold_one_batch_at_a_time_and_repeat() -> None:
    specs = [TensorSpec("x", ("batch", 16)), TensorSpec("sr", (), "int64", low=1, high=9)]
    batches = RandomBatches(specs, n=1_000_000, batch=32, seed=5)
    assert len(batches) == 31250
    first = batches[0]
    assert first["x"].shape == (32, 16) and first["sr"].shape == ()
    assert np.array_equal(batches[0]["x"], first["x"]) and not np.array_equal(batches[1]["x"], first["x"])
    assert batches[-1]["x"].shape == (32, 16)
    assert RandomBatches(specs, n=70, batch=32)[2]["x"].shape == (6, 16)
