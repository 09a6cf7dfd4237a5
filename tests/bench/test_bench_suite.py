"""bench/run.py's pieces that do not need minutes: the phase timer, the tool-time table (phases,
passes, nested phases, the remainder) and the Markdown rendering of rows without a number."""

from __future__ import annotations

import sys
import time

import pytest
from helpers import ROOT

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import report as md  # noqa: E402
from bench.run import PhaseTimer, tool_time_rows  # noqa: E402
from optimize.report import ModelFacts, Report, Step  # noqa: E402


def _report(steps: list[Step]) -> Report:
    return Report(tool={"name": "optimize", "version": "t"}, status="ok", started_at="2025-01-01T00:00:00Z",
                  seconds=1.0, seed=0, config={}, environment={}, hardware={}, input=ModelFacts(form="onnx"),
                  steps=steps)


def test_phase_timer_orders_and_nests_phases():
    t = PhaseTimer()
    t.start("baseline", "export the input model", None)
    time.sleep(0.01)
    t.finish("baseline")
    t.start("pipeline", "pipeline", 2)
    t.start("calibrate", "calibration", 8)
    t.advance("calibrate")
    t.finish("calibrate")
    t.finish("pipeline")
    t.start("verify", "verify", None)
    t.finish("verify")
    t.finish("never-started")  # ignored
    by = {p["key"]: p for p in t.phases}
    assert set(by) == {"baseline", "pipeline", "calibrate", "verify"}
    assert by["calibrate"]["inside_pass"] and not by["verify"]["inside_pass"] and not by["baseline"]["inside_pass"]
    assert by["baseline"]["seconds"] >= 0.01

    steps = [Step(index=1, type="quantize", config={}, form_in="onnx", form_out="onnx", seconds=0.5,
                  params_before=10, params_after=10)]
    rows = tool_time_rows(_report(steps), t, wall=2.0)
    names = [r["pass"] for r in rows]
    assert names[0] == "export the input model"
    assert names[1] == "quantize" and names[2] == "↳ inside it: calibration"
    assert names[3] == "verify"
    rest = rows[-2]
    accounted = by["baseline"]["seconds"] + by["verify"]["seconds"] + 0.5
    assert rest["seconds"] == pytest.approx(2.0 - accounted)  # nested phases are not counted twice
    assert rows[-1]["seconds"] == 2.0 and "total" in rows[-1]["pass"]


def test_speed_table_renders_rows_without_sizes_or_iqr():
    rows = [
        {"variant": "FP32 ONNX", "median_ms": 2.0, "speedup": 1.0, "speedup_iqr": [1.0, 1.0], "size_mb": 1.0,
         "size_ratio": 1.0, "cosine": 1.0},
        {"variant": "torch eager FP32 (separate run, not interleaved)", "median_ms": 4.0, "speedup": 0.5,
         "speedup_iqr": [None, None], "size_mb": None, "size_ratio": None, "cosine": None},
        {"variant": "broken", "error": "RuntimeError: x"},
    ]
    rows[0].update(speedup_ci=[0.98, 1.02], verdict="no measurable change")
    lines = md.RENDER["speed"](rows)
    assert lines[2] == "| FP32 ONNX | 2.000 | 1.00x | 0.98–1.02 | no measurable change | 1.00–1.00 | 1.00 | 1.00x | 1.00000 |"
    assert lines[3] == "| torch eager FP32 (separate run, not interleaved) | 4.000 | 0.50x | — | — | — | — | — | — |"
    assert "**error**" in lines[4]


@pytest.mark.parametrize(("interval", "verdict"), [
    ((1.10, 1.30), "met"),            # the lower bound clears the target
    ((1.00, 1.00), "met"),            # exactly at the target (a point interval)
    ((0.80, 0.99), "missed"),         # the upper bound does not reach it
    ((0.95, 1.08), "inconclusive"),   # the interval contains the target
    ((0.99, 1.00), "inconclusive"),   # the upper bound reaches it, the lower does not
])
def test_speed_targets_are_judged_on_the_interval(interval, verdict):
    result = md.judge_interval(1.0, list(interval), 1.0)
    assert result.split(" ")[0] == verdict, result
    assert f"95% interval {interval[0]:.2f}–{interval[1]:.2f}" in result


def test_a_target_without_a_measurement_is_not_judged():
    assert md.judge_interval(None, None, 1.0) == "not measured"
    assert md.judge_interval(1.2, None, 1.0) == "not measured"


def test_ratio_columns_give_the_interval_and_verdict_of_the_rounds():
    from bench.run import ratio_columns

    same = ratio_columns([1.0, 0.99, 1.01] * 20)
    assert same["verdict"] == "no measurable change" and same["speedup_ci"][0] <= 1.0 <= same["speedup_ci"][1]
    faster = ratio_columns([3.0, 2.9, 3.2, 3.1] * 10)
    assert faster["verdict"] == "faster" and faster["speedup_ci"][0] > 2.8
    assert md.judge_interval(faster["speedup"], faster["speedup_ci"], 2.5).startswith("met")


# ---------------------------------------------------------------------------- configs and factories

# Each bench config with the model the suite runs it on (None: the built-in digits example). ONNX
# inputs in the suite are exports of these factories, so planning with the factory checks the same
# pass chain (an export is inserted where a pass needs ONNX).
BENCH_CONFIGS = {
    "mlp-static-qdq.yaml": "bench.models:mlp",
    "resnet-prune50.yaml": "bench.models:resnet18_like",
    "bert-int8.yaml": "bench.models:bert_like",
    "bert-prune.yaml": "bench.models:bert_like",
    "bert-prune-distill-int8.yaml": "bench.models:bert_like",
    "resnet-auto.yaml": "bench.models:resnet18_like",
    "mlp-int4.yaml": "bench.models:mlp",
    "mlp-int4-acc4.yaml": "bench.models:mlp",
    "digits-ptq4.yaml": None,
    "digits-kd-ptq4.yaml": None,
    "digits-qat4.yaml": None,
}


def test_every_bench_config_is_listed_and_plans(tmp_path, monkeypatch):
    """Every file in bench/configs validates and plans (config schema, model, pass chain, each pass's
    checks) with the model the suite gives it — what `bench/run.py` would hit first."""
    from optimize.api import RunOptions
    from optimize.pipeline import plan

    on_disk = {p.name for p in (ROOT / "bench" / "configs").glob("*.yaml")}
    assert on_disk == set(BENCH_CONFIGS), "list every bench config here with the model the suite runs it on"
    monkeypatch.chdir(ROOT)  # factories and data callables resolve from the repository root, as in bench/run.py
    for name, model in BENCH_CONFIGS.items():
        p = plan(RunOptions(model=model, config=str(ROOT / "bench" / "configs" / name), output=str(tmp_path / f"{name}.onnx"),
                            trust_code=True))  # the bert configs name data callables
        assert p is not None, name
    # the size objective the resnet-auto case sets with --set
    plan(RunOptions(model="bench.models:resnet18_like", config=str(ROOT / "bench/configs/resnet-auto.yaml"),
                    output=str(tmp_path / "size.onnx"), overrides=["passes[0].objective=size"]))


def test_every_case_is_wired():
    from bench import run

    assert set(run.CASES) == {"mlp", "digits", "resnet", "bert", "resnet-auto", "int4", "digits-qat4"}
    for mode in ("full", "quick"):
        assert {"bert_repeat", "auto_repeat", "int4_repeat", "qat_epochs"} <= set(run.SETTINGS[mode])


def test_bert_factory_builds_and_runs_on_zipf_tokens():
    import numpy as np
    import torch

    from bench.models import BERT_VOCAB, bert_like, zipf_eval, zipf_tokens, zipf_train
    from optimize.loaders import load_model

    h = load_model("bench.models:bert_like")  # the input spec comes from the class attribute
    assert [(s.name, s.dtype) for s in h.inputs] == [("ids", "int64")]
    ids = zipf_tokens(2, seed=0)
    assert ids.shape == (2, 128) and ids.dtype == np.int64 and 0 <= ids.min() and ids.max() < BERT_VOCAB
    with torch.inference_mode():
        y = bert_like()(torch.from_numpy(ids))
    assert y.shape == (2, 128, 384) and torch.isfinite(y).all()
    # Zipf-like: the most frequent id is far more common than under uniform ids (128·4096/8000 ≈ 66)
    train = zipf_train()["ids"]
    assert train.shape == (4096, 128) and np.bincount(train.ravel()).max() > 50 * train.size / BERT_VOCAB
    assert zipf_eval()["ids"].shape == (64, 128)
    assert not np.array_equal(zipf_eval()["ids"], train[:64])  # held out: another seed
    assert np.array_equal(zipf_tokens(3, seed=5), zipf_tokens(3, seed=5))  # deterministic


def test_generic_table_renders_cells_and_errors():
    lines = md.RENDER["table"]([
        {"run": "a", "candidate": "int8", "chosen": None},
        {"variant": "b", "error": "RuntimeError: y"},
    ])
    assert lines[0] == "| run | candidate | chosen |"
    assert lines[2] == "| a | int8 | — |"
    assert "**error**" in lines[3] and "RuntimeError: y" in lines[3]
