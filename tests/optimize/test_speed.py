"""Speed ratios with their uncertainty (optimize.speed, optimize.speed_metrics): the bootstrap
interval, the verdict and its tolerance, extra rounds while undecided, and, on real ONNX Runtime
sessions, two identical models called a tie and a model doing far less work called faster."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimize import speed
from optimize.benchmark import MoreRounds, interleaved
from optimize.config import load_config_text
from optimize.progress import NullProgress
from optimize.speed_metrics import measure_speed


def _mlp(path: Path, hidden: int, seed: int = 0, width: int = 256) -> Path:
    """x[batch, width] → MatMul(width×hidden) → Relu → MatMul(hidden×width)."""
    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array((rng.standard_normal((width, hidden)) * 0.05).astype(np.float32), "w1")
    w2 = numpy_helper.from_array((rng.standard_normal((hidden, width)) * 0.05).astype(np.float32), "w2")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["y"])],
        "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", width])], [w1, w2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _ctx(threads: int, body: str = "") -> SimpleNamespace:
    cfg = load_config_text("schema_version: 1\npasses: []\nmeasure: {repeat: 20, warmup: 3, batch: 8" + body + "}\n")
    return SimpleNamespace(config=cfg, threads=threads, progress=NullProgress())


def _inputs() -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(1).standard_normal((8, 256)).astype(np.float32)}


# ---------------------------------------------------------------- statistics


def test_interval_is_a_seeded_bootstrap_of_the_median():
    r = list(np.random.default_rng(3).normal(1.2, 0.1, 40))
    lo, hi = speed.median_interval(r)
    assert lo < float(np.median(r)) < hi
    assert (lo, hi) == speed.median_interval(r)  # seeded: the report can be recomputed
    medians = np.median(np.asarray(r)[np.random.default_rng(0).integers(0, 40, (2000, 40))], axis=1)
    assert (lo, hi) == pytest.approx(tuple(np.percentile(medians, [2.5, 97.5])))


@pytest.mark.parametrize(("lo", "hi", "verdict", "settled"), [
    (1.04, 1.20, "faster", True),
    (0.80, 0.96, "slower", True),
    (0.98, 1.02, "no measurable change", True),    # inside the ±3% band: a tie, and more rounds will not move it
    (0.95, 1.12, "no measurable change", False),   # straddles the band: undecided, more rounds are worth it
    (1.01, 1.20, "no measurable change", False),
])
def test_verdict_and_settled(lo, hi, verdict, settled):
    assert speed.verdict(lo, hi) == verdict
    assert speed.settled(lo, hi) is settled


def test_tolerance_is_the_band_width():
    assert speed.verdict(1.04, 1.2, tolerance=0.05) == "no measurable change"
    assert speed.verdict(1.04, 1.2, tolerance=0.0) == "faster"


def test_format_shows_value_interval_and_verdict():
    assert speed.format_ratio(1.04, [0.95, 1.12], "no measurable change") == "1.04x (0.95–1.12), no measurable change"
    assert speed.format_ratio(2.0, None, None) == "2.00x"


# ---------------------------------------------------------------- the min_speedup rule


@pytest.mark.parametrize(("interval", "bound", "passed", "word"), [
    ((1.10, 1.30), "upper", True, ">="),
    ((0.80, 0.95), "upper", False, "FAILED"),         # the whole interval below the limit: missed
    ((0.95, 1.08), "upper", True, "inconclusive"),    # contains the limit: passes with a finding
    ((0.95, 1.08), "lower", False, "FAILED"),         # the stricter rule needs the lower bound
    ((1.00, 1.08), "lower", True, ">="),
])
def test_min_speedup_is_judged_on_the_interval(interval, bound, passed, word):
    g = speed.judge_min("min_speedup", 1.0, 1.01, list(interval), bound)
    assert g.passed is passed and word in g.message
    assert g.inconclusive is (word == "inconclusive")


# ---------------------------------------------------------------- rounds


def test_rounds_are_added_while_undecided_up_to_the_limit(tmp_path):
    a, b = _mlp(tmp_path / "a.onnx", 32), _mlp(tmp_path / "b.onnx", 32, seed=1)
    never = interleaved({"a": a, "b": b}, _inputs(), threads=1, warmup=1, repeat=6,
                        more=MoreRounds(lambda t: False, max_rounds=17, max_seconds=60, step=5))
    assert len(never["a"].times_ms) == len(never["b"].times_ms) == 17
    decided = interleaved({"a": a, "b": b}, _inputs(), threads=1, warmup=1, repeat=6,
                          more=MoreRounds(lambda t: True, max_rounds=17, max_seconds=60))
    assert len(decided["a"].times_ms) == 6


def test_each_model_can_run_at_its_own_thread_count(tmp_path):
    a = _mlp(tmp_path / "a.onnx", 32)
    t = interleaved({"n": a, "one": a}, _inputs(), threads=2, warmup=1, repeat=4, model_threads={"one": 1})
    assert (t["n"].threads, t["one"].threads) == (2, 1)


# ---------------------------------------------------------------- real sessions


def test_two_identical_models_are_no_measurable_change(tmp_path):
    a, b = _mlp(tmp_path / "a.onnx", 512), _mlp(tmp_path / "b.onnx", 512)
    seen = []
    for _ in range(3):  # a machine busy with other work can bias one measurement; three never agree by chance
        res = measure_speed(_ctx(2), SimpleNamespace(onnx_path=a), SimpleNamespace(onnx_path=b), _inputs(), "cpu")
        sp = res.metrics["speedup"]
        seen.append((sp.verdict, sp.value, sp.interval))
        if sp.verdict == "no measurable change":
            break
    assert sp.verdict == "no measurable change", seen
    assert sp.tolerance == 0.03 and sp.interval[0] <= sp.value <= sp.interval[1]
    assert 20 <= sp.inputs["runs"] <= 60 and sp.inputs["rounds_configured"] == 20
    assert len(sp.inputs["round_ratios"]) == sp.inputs["runs"] == res.latency["output"].runs
    # parallel_speedup: output at 1 thread vs 2 threads, interleaved in the same rounds
    ps = res.metrics["parallel_speedup"]
    assert ps.interval is not None and len(ps.inputs["round_ratios"]) == sp.inputs["runs"]
    assert res.latency["output_1t"].threads == 1 and res.latency["output"].threads == 2


def test_a_model_doing_far_less_work_is_faster(tmp_path):
    big, small = _mlp(tmp_path / "big.onnx", 2048), _mlp(tmp_path / "small.onnx", 64)  # 32x fewer MACs
    res = measure_speed(_ctx(1), SimpleNamespace(onnx_path=big), SimpleNamespace(onnx_path=small), _inputs(), "cpu")
    sp = res.metrics["speedup"]
    assert sp.verdict == "faster" and sp.interval[0] > 1.5, (sp.value, sp.interval)
    assert res.metrics["parallel_speedup"].value is None  # one thread configured
    assert res.speedup.verdict == "faster"


# ---------------------------------------------------------------- findings


def test_findings_follow_the_verdict():
    from optimize.speed_metrics import speed_finding

    slow = speed_finding(speed.RatioEstimate(0.8, 0.75, 0.85, "slower", 0.03, 40), 2, 1)
    assert slow.startswith("the output model is SLOWER") and "95% interval 0.75–0.85" in slow and "40 interleaved" in slow
    tie = speed_finding(speed.RatioEstimate(1.04, 0.95, 1.12, "no measurable change", 0.03, 90), 2, 1)
    assert tie.startswith("no measurable speed change") and "±3%" in tie
    assert speed_finding(speed.RatioEstimate(2.0, 1.8, 2.2, "faster", 0.03, 30), 2, 1) is None


def test_a_slowdown_cause_without_diagnostics_needs_its_evidence(monkeypatch):
    """Diagnostics did not run: "no VNNI" is named only when the output file holds integer kernels
    and the CPU lacks int8 dot products; otherwise the finding says the cause was not diagnosed."""
    import optimize.hardware
    from optimize.measure import _slow_cause

    monkeypatch.setattr(optimize.hardware, "has_int8_dot_product", lambda: False)
    assert "VNNI" in _slow_cause({"ops": {"MatMulInteger": 2, "Relu": 1}}) and "2 MatMulInteger" in _slow_cause(
        {"ops": {"MatMulInteger": 2}})
    assert "not diagnosed" in _slow_cause({"ops": {"MatMul": 2, "QuantizeLinear": 1}})
    monkeypatch.setattr(optimize.hardware, "has_int8_dot_product", lambda: True)
    assert "not diagnosed" in _slow_cause({"ops": {"MatMulInteger": 2}})


def test_torch_interleaved_times_one_module_on_each_device_in_the_same_rounds():
    """gpu_speedup's timer (CPU vs CUDA there); here two CPU copies, so the ratio is a tie."""
    import torch

    from optimize.benchmark import torch_interleaved

    m = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU()).eval()
    t = torch_interleaved(m, (torch.randn(4, 64),), devices={"a": "cpu", "b": "cpu"}, warmup=2, repeat=12, threads=1)
    assert len(t["a"].times_ms) == len(t["b"].times_ms) == 12
    assert t["a"].device == "cpu" and t["a"].batch == 4 and t["a"].runtime.startswith("torch")


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_round_orders_are_balanced_for_position_and_carry_over(n):
    """Over one cycle every model runs in every position equally often, and right after every other
    model equally often (a Williams design), so a warm cache or a noisy neighbour favours no one."""
    from collections import Counter

    from optimize.benchmark import round_order

    names = [chr(ord("a") + i) for i in range(n)]
    cycle = n if n % 2 == 0 else 2 * n
    rows = [round_order(r, names) for r in range(cycle)]
    assert all(sorted(row) == names for row in rows)
    positions = Counter((i, name) for row in rows for i, name in enumerate(row))
    assert set(positions.values()) == {cycle // n}
    pairs = Counter((a, b) for row in rows for a, b in zip(row, row[1:], strict=False))
    assert len(pairs) == n * (n - 1) and len(set(pairs.values())) == 1
    assert round_order(cycle, names) == rows[0]
    assert all(rows[r][-1] != rows[r + 1][0] for r in range(cycle - 1)) or n == 2  # never twice in a row
