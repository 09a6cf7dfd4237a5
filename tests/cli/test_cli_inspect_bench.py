"""`optimize inspect` and `optimize bench` against fake library functions."""

from __future__ import annotations

import json
import sys
import types

import pytest

from cli.app import app

pytest_plugins = ["cli_fixtures"]  # fixtures: runner, good_yaml, bad_yaml, fake_pipeline

FACTS = {
    "path": "m.onnx",
    "form": "onnx",
    "bytes": 1234,
    "inputs": [{"name": "x", "shape": ["batch", 64], "dtype": "float32"}],
    "outputs": [{"name": "logits", "shape": ["batch", 10], "dtype": "float32"}],
    "ops": {"Gemm": 3, "Relu": 2},
    "weights": 5000,
    "sparsity": 0.25,
}


@pytest.fixture
def fake_inspect(monkeypatch):
    import optimize.api

    calls = []

    def inspect_model(spec, trust_model=False):
        calls.append((spec, trust_model))
        return FACTS

    monkeypatch.setattr(optimize.api, "inspect_model", inspect_model, raising=False)
    return calls


@pytest.fixture
def fake_bench(monkeypatch):
    import optimize

    calls = []
    mod = types.ModuleType("optimize.benchmark")

    def bench_models(model, vs=None, threads=None, batch=1, warmup=5, repeat=30, device="cpu", progress=None, trust_model=False):
        calls.append(dict(model=model, vs=vs, threads=threads, batch=batch, warmup=warmup, repeat=repeat, device=device))
        progress.start("bench-1", "latency", repeat)
        progress.finish("bench-1")
        timing = {"p50_ms": 2.0, "p90_ms": 2.5, "p99_ms": 2.9, "min_ms": 1.5, "runs": repeat, "throughput_per_s": 500.0,
                  "outliers": {"count": 1, "fence_ms": 3.0, "max_ms": 4.0}, "runtime": "onnxruntime 1.20", "device": device}
        rows = []
        for b in batch:
            for i, t in enumerate(threads or [1, 2]):
                row = {"batch": b, "threads": t, "model": dict(timing, p50_ms=2.0 / t),
                       **({"vs": timing, "speedup_vs": 1.5} if vs else {}), "parallel_speedup": float(t) if i else 1.0}
                rows.append(row)
        models = {"model": model, **({"vs": vs} if vs else {})}
        return {"models": models, "device": device, "batches": batch, "threads": threads or [1, 2], "warmup": warmup,
                "repeat": repeat, "results": rows, "memory": {"model": {"peak_rss_mb": 60.0, "model_peak_mb": 12.5}},
                "formulas": {"speedup_vs": "OTHER / MODEL"}}

    mod.bench_models = bench_models  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "optimize.benchmark", mod)
    monkeypatch.setattr(optimize, "benchmark", mod, raising=False)
    return calls


def test_inspect_json(runner, fake_inspect):
    r = runner.invoke(app, ["inspect", "m.onnx", "--json", "--trust-model"])
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout) == FACTS
    assert fake_inspect == [("m.onnx", True)]


def test_inspect_table(runner, fake_inspect):
    r = runner.invoke(app, ["inspect", "m.onnx"])
    assert r.exit_code == 0, r.stderr
    for text in ("form", "onnx", "Inputs", "Outputs", "logits", "batch* × 64", "symbolic dims", "Gemm", "Ops"):
        assert text in r.stdout
    assert r.stdout.index("Gemm") < r.stdout.index("Relu")  # most frequent op first


def test_inspect_error(runner, monkeypatch):
    import optimize.api
    from optimize.errors import ModelLoadError

    def inspect_model(spec, trust_model=False):
        raise ModelLoadError(f"{spec}: no such file")

    monkeypatch.setattr(optimize.api, "inspect_model", inspect_model, raising=False)
    r = runner.invoke(app, ["inspect", "missing.onnx"])
    assert r.exit_code == 2
    assert r.stderr.strip() == "error: missing.onnx: no such file"


def test_bench_json_and_threads(runner, fake_bench):
    r = runner.invoke(app, ["bench", "a.onnx", "--vs", "b.onnx", "--threads", "4,1", "--batch", "8,1", "--repeat", "5", "--json"])
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["threads"] == [1, 4] and doc["batches"] == [1, 8]
    assert [(x["batch"], x["threads"]) for x in doc["results"]] == [(1, 1), (1, 4), (8, 1), (8, 4)]
    assert fake_bench[-1] == dict(model="a.onnx", vs="b.onnx", threads=[1, 4], batch=[1, 8], warmup=5, repeat=5, device="cpu")
    assert "[bench-1]" in r.stderr  # progress on stderr, not stdout


def test_bench_default_threads_and_table(runner, fake_bench):
    r = runner.invoke(app, ["bench", "a.onnx", "--vs", "b.onnx", "--progress", "none"], env={"COLUMNS": "100"})
    assert r.exit_code == 0, r.stderr
    assert fake_bench[-1]["threads"] is None  # the library picks its default
    for text in ("Latency", "MODEL", "BASELINE", "> 1: MODEL is faster", "a.onnx", "b.onnx", "1.50x", "2.00x", "p50 ms", "p99 ms", "per s",
                 "outliers", "model 12.5 MB"):
        assert text in r.stdout, text


@pytest.mark.parametrize("bad", ["a", "0", "1,-2", ","])
def test_bench_bad_threads_is_usage_error(runner, fake_bench, bad):
    r = runner.invoke(app, ["bench", "a.onnx", "--threads", bad])
    assert r.exit_code == 2
    assert not fake_bench


@pytest.mark.parametrize("bad", ["x", "0", "8,-1", ","])
def test_bench_bad_batch_is_usage_error(runner, fake_bench, bad):
    r = runner.invoke(app, ["bench", "a.onnx", "--batch", bad])
    assert r.exit_code == 2
    assert not fake_bench
