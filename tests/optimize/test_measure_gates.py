"""optimize.measure.evaluate_gates: for every gate a value just inside passes, just outside fails,
and a missing or NaN value fails (it can never pass by accident)."""

from __future__ import annotations

import math

import pytest

from optimize.config import load_config_text
from optimize.measure import evaluate_gates
from optimize.report import Latency, Metric, ModelFacts, Report


def make_report(
    *, drop: float | None = None, speedup: float | None = None, size_bytes: int | None = None,
    sparsity: float | None = None, cosine: float | None = None, latency_ms: float | None = None,
) -> Report:
    metrics = {
        "accuracy": Metric(value=None if drop is None else 90.0 - drop, formula="f",
                           inputs={} if drop is None else {"baseline": 90.0, "optimized": 90.0 - drop, "drop": drop}),
        "speedup": Metric(value=speedup, formula="f"),
        "sparsity": Metric(value=sparsity, formula="f"),
        "parity": Metric(value=cosine, formula="f"),
    }
    latency = {}
    if latency_ms is not None:
        latency["output"] = Latency(median_ms=latency_ms, p90_ms=latency_ms * 1.1, min_ms=latency_ms * 0.9, runs=30,
                                    warmup=5, batch=1, threads=1, runtime="onnxruntime", device="cpu")
    return Report(
        tool={"name": "optimize", "version": "test"}, status="ok", started_at="2025-01-01T00:00:00Z", seconds=1.0,
        seed=0, config={}, environment={}, hardware={},
        input=ModelFacts(form="onnx", bytes=2_000_000),
        output=ModelFacts(form="onnx", bytes=size_bytes),
        metrics=metrics, latency=latency,
    )


def gates_for(name: str, limit: float):
    cfg = load_config_text(f"schema_version: 1\npasses: []\ngates:\n  {name}: {limit}\n", file="g.yaml")
    return cfg.gates


# gate, limit, report field, inside, outside
CASES = [
    ("max_accuracy_drop", 1.0, "drop", 0.99, 1.01),
    ("min_speedup", 1.2, "speedup", 1.21, 1.19),
    ("max_size_mb", 1.5, "size_bytes", 1_499_999, 1_500_001),
    ("min_sparsity", 0.5, "sparsity", 0.5001, 0.4999),
    ("min_parity_cosine", 0.99, "cosine", 0.9901, 0.9899),
    ("max_latency_ms", 2.0, "latency_ms", 1.999, 2.001),
]
IDS = [c[0] for c in CASES]


@pytest.mark.parametrize(("gate", "limit", "field", "inside", "outside"), CASES, ids=IDS)
def test_just_inside_passes(gate: str, limit: float, field: str, inside: float, outside: float) -> None:
    (g,) = evaluate_gates(gates_for(gate, limit), make_report(**{field: inside}))
    assert g.name == gate
    assert g.limit == limit
    assert g.passed is True
    assert g.value is not None
    assert "FAILED" not in g.message
    assert g.message.startswith(f"{gate}: ")


@pytest.mark.parametrize(("gate", "limit", "field", "inside", "outside"), CASES, ids=IDS)
def test_just_outside_fails(gate: str, limit: float, field: str, inside: float, outside: float) -> None:
    (g,) = evaluate_gates(gates_for(gate, limit), make_report(**{field: outside}))
    assert g.name == gate
    assert g.passed is False
    assert g.message.endswith("FAILED")


@pytest.mark.parametrize(("gate", "limit", "field", "inside", "outside"), CASES, ids=IDS)
def test_exactly_at_the_limit_passes(gate: str, limit: float, field: str, inside: float, outside: float) -> None:
    value = int(limit * 1e6) if field == "size_bytes" else limit
    (g,) = evaluate_gates(gates_for(gate, limit), make_report(**{field: value}))
    assert g.passed is True


@pytest.mark.parametrize(("gate", "limit", "field", "inside", "outside"), CASES, ids=IDS)
def test_missing_value_fails(gate: str, limit: float, field: str, inside: float, outside: float) -> None:
    (g,) = evaluate_gates(gates_for(gate, limit), make_report())
    assert g.passed is False
    assert g.value is None
    assert "not measured" in g.message


@pytest.mark.parametrize(
    ("gate", "limit", "field"),
    [(c[0], c[1], c[2]) for c in CASES if c[2] not in ("size_bytes",)],
    ids=[c[0] for c in CASES if c[2] != "size_bytes"],
)
def test_nan_value_fails(gate: str, limit: float, field: str) -> None:
    (g,) = evaluate_gates(gates_for(gate, limit), make_report(**{field: math.nan}))
    assert g.passed is False
    assert g.value is None


def test_the_values_reported_are_the_measured_ones() -> None:
    report = make_report(drop=0.4, speedup=1.8, size_bytes=750_000, sparsity=0.62, cosine=0.997, latency_ms=1.25)
    cfg = load_config_text(
        "schema_version: 1\npasses: []\ngates:\n  max_accuracy_drop: 1\n  min_speedup: 2\n  max_size_mb: 1\n"
        "  min_sparsity: 0.5\n  min_parity_cosine: 0.999\n  max_latency_ms: 1.5\n"
    )
    gates = {g.name: g for g in evaluate_gates(cfg.gates, report)}
    assert list(gates) == ["max_accuracy_drop", "min_speedup", "max_size_mb", "min_sparsity",
                           "min_parity_cosine", "max_latency_ms"]
    assert gates["max_accuracy_drop"].value == pytest.approx(0.4)
    assert gates["min_speedup"].value == pytest.approx(1.8)
    assert gates["max_size_mb"].value == pytest.approx(0.75)  # MB = 10^6 bytes
    assert gates["min_sparsity"].value == pytest.approx(0.62)
    assert gates["min_parity_cosine"].value == pytest.approx(0.997)
    assert gates["max_latency_ms"].value == pytest.approx(1.25)
    assert {n for n, g in gates.items() if not g.passed} == {"min_speedup", "min_parity_cosine"}


def test_no_gates_configured_gives_no_lines() -> None:
    cfg = load_config_text("schema_version: 1\npasses: []\n")
    assert evaluate_gates(cfg.gates, make_report(drop=50.0, speedup=0.1)) == []


def test_metric_absent_from_the_report_fails() -> None:
    report = make_report(speedup=3.0)
    report.metrics = {}
    report.output = None
    report.latency = {}
    cfg = load_config_text(
        "schema_version: 1\npasses: []\ngates:\n  max_accuracy_drop: 1\n  min_speedup: 1\n  max_size_mb: 1\n"
        "  min_sparsity: 0.1\n  min_parity_cosine: 0.9\n  max_latency_ms: 1\n"
    )
    gates = evaluate_gates(cfg.gates, report)
    assert len(gates) == 6
    assert not any(g.passed for g in gates)


def test_accuracy_with_a_null_value_fails_even_if_a_drop_was_recorded() -> None:
    report = make_report(drop=0.1)
    report.metrics["accuracy"] = Metric(value=None, formula="f", inputs={"drop": 0.1}, reason="non-finite outputs")
    (g,) = evaluate_gates(gates_for("max_accuracy_drop", 1.0), report)
    assert g.passed is False


# ---- min_speedup on the speedup's 95% interval (issue 14). A metric without an interval (as in the
# cases above) is judged on its value; with one, the gate fails only when the measurement shows the
# limit missed, unless gates.speed_bound: lower asks for the lower bound.


def _speed_report(value: float, interval: tuple[float, float]) -> Report:
    report = make_report(speedup=value)
    report.metrics["speedup"] = Metric(value=value, formula="f", interval=list(interval), verdict="faster", tolerance=0.03)
    return report


def _speed_gate(limit: float, value: float, interval: tuple[float, float], bound: str | None = None):
    extra = f"\n  speed_bound: {bound}" if bound else ""
    cfg = load_config_text(f"schema_version: 1\npasses: []\ngates:\n  min_speedup: {limit}{extra}\n", file="g.yaml")
    (g,) = evaluate_gates(cfg.gates, _speed_report(value, interval))
    return g


def test_min_speedup_fails_when_the_whole_interval_is_below_the_limit() -> None:
    g = _speed_gate(1.0, 0.9, (0.85, 0.97))
    assert not g.passed and g.value == pytest.approx(0.9) and "FAILED" in g.message


def test_min_speedup_inside_the_interval_is_inconclusive_and_passes() -> None:
    g = _speed_gate(1.0, 0.98, (0.9, 1.05))  # the point estimate is below the limit, the interval contains it
    assert g.passed and "inconclusive" in g.message and "95% interval 0.9–1.05" in g.message


def test_speed_bound_lower_needs_the_lower_bound_above_the_limit() -> None:
    assert not _speed_gate(1.0, 1.02, (0.97, 1.08), "lower").passed
    assert _speed_gate(1.0, 1.2, (1.01, 1.3), "lower").passed


def test_speed_bound_rejects_other_values() -> None:
    from optimize.errors import ConfigError

    with pytest.raises(ConfigError):
        load_config_text("schema_version: 1\npasses: []\ngates:\n  speed_bound: middle\n", file="g.yaml")


def test_zero_weights_are_called_unstructured_pruning_only_after_a_pruning_step():
    # int8 rounding with reduce_range leaves ~5% zeros in a quantize-only run: no pruning advice then
    from optimize.measure import weight_findings

    metrics = {"sparsity": Metric(value=0.053, formula="zeros / total"), "params_removed": Metric(value=0.0, formula="")}
    facts = {"weights": 1000}
    assert weight_findings(facts, facts, metrics, pruned=False) == []
    assert [f for f in weight_findings(facts, facts, metrics, pruned=True) if f.startswith("unstructured zeros")]
