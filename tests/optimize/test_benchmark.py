"""`optimize bench` for real on tiny ONNX models: batch × thread sweep, percentiles, throughput,
outliers, parallel speedup, speedup vs OTHER, memory, and the statistics' formulas."""

from __future__ import annotations

import json
import statistics

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.app import app
from optimize.benchmark import Timing, bench_models, default_threads, latency_stats


def test_default_threads_sweep_reaches_all_cores():
    assert default_threads(1) == [1]
    assert default_threads(2) == [1, 2]
    assert default_threads(6) == [1, 2, 4, 6]
    assert default_threads(8) == [1, 2, 4, 8]


def test_latency_stats_formulas():
    times = [1.0] * 18 + [1.2, 10.0]  # one far outlier
    s = latency_stats(Timing("m", times, batch=8, threads=2, warmup=3, runtime="rt", device="cpu", calls_per_sample=4))
    assert s["p50_ms"] == pytest.approx(statistics.median(times))
    assert s["p90_ms"] == pytest.approx(float(np.percentile(times, 90)))
    assert s["p99_ms"] == pytest.approx(float(np.percentile(times, 99)))
    assert s["max_ms"] == 10.0 and s["min_ms"] == 1.0
    assert s["throughput_per_s"] == pytest.approx(8 * 1000.0 / s["p50_ms"])
    assert s["outliers"]["count"] == 2 and s["outliers"]["max_ms"] == 10.0  # above Q3 + 1.5 IQR = 1.0
    assert (s["runs"], s["warmup"], s["calls_per_sample"], s["batch"], s["threads"]) == (20, 3, 4, 8, 2)


def test_bench_sweeps_batches_and_threads(mlp_onnx, tmp_path):
    from onnxruntime.quantization import quantize_dynamic

    q = tmp_path / "q.onnx"
    quantize_dynamic(str(mlp_onnx), str(q))
    r = bench_models(str(mlp_onnx), str(q), threads=[2, 1], batch=[4, 1], warmup=1, repeat=4)
    assert r["threads"] == [1, 2] and r["batches"] == [1, 4] and (r["warmup"], r["repeat"]) == (1, 4)
    assert [(x["batch"], x["threads"]) for x in r["results"]] == [(1, 1), (1, 2), (4, 1), (4, 2)]
    for row in r["results"]:
        for label in ("model", "vs"):
            st = row[label]
            assert st["runs"] == 4 and st["warmup"] == 1 and st["batch"] == row["batch"] and st["threads"] == row["threads"]
            assert 0 < st["min_ms"] <= st["p50_ms"] <= st["p90_ms"] <= st["p99_ms"] <= st["max_ms"]
        assert row["speedup_vs"] > 0 and row["speedup_vs_iqr"][0] <= row["speedup_vs_iqr"][1]
    by = {(x["batch"], x["threads"]): x for x in r["results"]}
    assert by[(1, 1)]["parallel_speedup"] == 1.0
    assert by[(1, 2)]["parallel_speedup"] == pytest.approx(by[(1, 1)]["model"]["p50_ms"] / by[(1, 2)]["model"]["p50_ms"])
    mem = r["memory"]
    for label in ("model", "vs"):
        assert mem[label]["peak_rss_mb"] > 0, mem[label]
        assert mem[label]["model_peak_mb"] is None or mem[label]["model_peak_mb"] >= 0
    assert mem["bench_process_peak_rss_mb"] > 0 and "fresh Python process" in mem["what"]
    assert r["hardware"]["cores"] >= 1 and "parallel_speedup" in r["formulas"]


def test_bench_cli_json_is_one_document(mlp_onnx):
    res = CliRunner().invoke(app, ["bench", str(mlp_onnx), "--threads", "1", "--batch", "1,2", "--repeat", "3",
                                   "--warmup", "1", "--json", "--progress", "none"])
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["batches"] == [1, 2] and len(doc["results"]) == 2 and "vs" not in doc["results"][0]


def test_bench_missing_model_is_exit_2(tmp_path):
    res = CliRunner().invoke(app, ["bench", str(tmp_path / "nope.onnx"), "--progress", "none"])
    assert res.exit_code == 2
    assert res.stderr.startswith("error: ")
