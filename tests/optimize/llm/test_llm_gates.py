"""The decoder-LLM gates (min_token_agreement, max_perplexity_ratio) read the report metrics that
optimize.llm.llm_metrics.report_metrics builds: inside passes, outside fails, missing fails."""

from __future__ import annotations

import pytest

from optimize.config import load_config_text
from optimize.llm.llm_metrics import SpeedResult, report_metrics
from optimize.measure import evaluate_gates
from optimize.report import ModelFacts, Report
from optimize.speed import estimate


def _report(metrics):
    return Report(tool={"name": "optimize", "version": "test"}, status="ok", started_at="2025-01-01T00:00:00Z",
                  seconds=1.0, seed=0, config={}, environment={}, hardware={}, input=ModelFacts(form="onnx", bytes=1),
                  output=ModelFacts(form="onnx", bytes=1), metrics=metrics, latency={})


def _gates(text):
    return load_config_text(f"schema_version: 1\npasses: []\ngates:\n{text}", file="g.yaml").gates


def _quality(agreement, ratio):
    return {"token_agreement": {"value": agreement, "matches": 0, "positions": 640},
            "perplexity_ratio": {"value": ratio, "reference": 10.0, "candidate": 10.0 * ratio}}


@pytest.mark.parametrize(("agreement", "ratio", "passed"), [
    (0.95, 1.01, [True, True]), (0.89, 1.01, [False, True]), (0.95, 1.06, [True, False]),
])
def test_llm_gates_pass_inside_and_fail_outside(agreement, ratio, passed):
    metrics = report_metrics("int4", None, _quality(agreement, ratio))
    gates = evaluate_gates(_gates("  min_token_agreement: 0.9\n  max_perplexity_ratio: 1.05\n"), _report(metrics))
    assert [g.name for g in gates] == ["min_token_agreement", "max_perplexity_ratio"]
    assert [g.passed for g in gates] == passed


def test_llm_gates_fail_when_not_measured_and_speed_metrics_carry_their_interval():
    speed = SpeedResult(prefill_tps={"fp32": 100.0, "int4": 110.0}, decode_tps={"fp32": 10.0, "int4": 25.0},
                        prefill_ratio={"int4": estimate([1.1, 1.05, 1.12])}, decode_ratio={"int4": estimate([2.5, 2.4, 2.6])})
    metrics = report_metrics("int4", speed, None, reason="no eval text")
    assert metrics["decode_speedup"].value == pytest.approx(2.5) and metrics["decode_speedup"].verdict == "faster"
    assert metrics["decode_speedup"].inputs["fp32_tps"] == 10.0
    gates = evaluate_gates(_gates("  min_token_agreement: 0.9\n"), _report(metrics))
    assert not gates[0].passed and "no eval text" in gates[0].message


@pytest.mark.parametrize(("decode", "prefill", "bound", "passed"), [
    ([2.1, 2.2, 2.15], [1.02, 1.05, 1.03], "upper", [True, True]),
    ([1.5, 1.6, 1.55], [0.75, 0.78, 0.8], "upper", [False, False]),  # clearly below both limits
    ([1.9, 2.1, 2.0], [0.95, 1.05, 1.0], "lower", [False, False]),  # intervals straddle the limits
    ([1.9, 2.1, 2.0], [0.95, 1.05, 1.0], "upper", [True, True]),
])
def test_decode_and_prefill_speed_gates_judge_the_interval(decode, prefill, bound, passed):
    speed = SpeedResult(prefill_tps={"fp32": 100.0, "int4": 100.0}, decode_tps={"fp32": 10.0, "int4": 20.0},
                        prefill_ratio={"int4": estimate(prefill)}, decode_ratio={"int4": estimate(decode)})
    metrics = report_metrics("int4", speed, None)
    gates = evaluate_gates(_gates(f"  min_decode_speedup: 2.0\n  min_prefill_speedup: 1.0\n  speed_bound: {bound}\n"),
                           _report(metrics))
    assert [g.name for g in gates] == ["min_decode_speedup", "min_prefill_speedup"]
    assert [g.passed for g in gates] == passed


def test_speed_gates_fail_when_the_decoder_was_not_timed():
    gates = evaluate_gates(_gates("  min_decode_speedup: 2.0\n"), _report(report_metrics("int4", None, None)))
    assert not gates[0].passed and "not measured" in gates[0].message
