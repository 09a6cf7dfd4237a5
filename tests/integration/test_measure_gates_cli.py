"""Every gate through the command line and the real pipeline: a limit just inside the measured
value exits 0 and writes the model under its name; just outside exits 3, writes
NAME.rejected.onnx, prints one `gate … FAILED` line on stderr, and the report says gate_failed.
`--no-fail-on-gate` exits 0 with status gate_failed; GITHUB_ACTIONS adds error annotations.

Latency is made deterministic by replacing `optimize.benchmark.interleaved` with fixed timings
(input 2.0 ms, output 1.0 ms per round: speedup exactly 2.0, output latency exactly 1.0 ms); every
other value (accuracy drop, size, sparsity, parity) is deterministic for this model and data and
is read from one probe run first, so the limits sit a hair either side of the true value.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.app import app
from optimize.benchmark import Timing

FAST = "measure: {repeat: 3, warmup: 1, parity_samples: 32, batch: 4}\n"
PASSES = "  - type: prune\n    method: magnitude\n    sparsity: 0.3\n  - type: quantize\n    mode: dynamic\n"


def _fixed_interleaved(models, inputs, *, threads, warmup=5, repeat=30, device="cpu", progress=None, key="bench", **_):
    batch = len(next(iter(inputs.values())))
    ms = {"input": 2.0, "output": 1.0}
    return {n: Timing(n, [ms.get(n, 1.0)] * repeat, batch, threads, warmup, "fixed (test)", device) for n in models}


@pytest.fixture(autouse=True)
def fixed_timing(monkeypatch):
    import optimize.benchmark

    monkeypatch.setattr(optimize.benchmark, "interleaved", _fixed_interleaved)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A small MLP and labels equal to its own predictions (baseline accuracy 100%), so pruning
    30% of the weights costs a few points of accuracy: every gate has a non-trivial value."""
    import onnxruntime as ort
    import torch

    d = tmp_path_factory.mktemp("gates")
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 5)).eval()
    model = d / "mlp.onnx"
    torch.onnx.export(m, (torch.randn(2, 16),), str(model), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "b"}, "y": {0: "b"}}, dynamo=False)
    x = np.random.default_rng(0).standard_normal((200, 16)).astype(np.float32)
    y = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0].argmax(-1)
    np.savez(d / "eval.npz", x=x, y=y)
    return d, model


def _invoke(d: Path, model: Path, name: str, gates: str, *extra: str, env: dict | None = None):
    cfg = d / f"{name}.yaml"
    cfg.write_text(
        "schema_version: 1\nmodel: {task: classification}\n"
        f"data:\n  eval: {{source: {d / 'eval.npz'}}}\npasses:\n{PASSES}{FAST}" + (f"gates:\n{gates}" if gates else "")
    )
    out = d / f"{name}.opt.onnx"
    r = CliRunner().invoke(app, ["run", str(model), "-c", str(cfg), "-o", str(out), "--json", "--progress", "none", *extra],
                           env=env or {"GITHUB_ACTIONS": "false"})
    return r, out


@pytest.fixture(scope="module")
def measured(setup):
    import optimize.benchmark

    mp = pytest.MonkeyPatch()
    mp.setattr(optimize.benchmark, "interleaved", _fixed_interleaved)
    try:
        d, model = setup
        r, out = _invoke(d, model, "probe", "")
    finally:
        mp.undo()
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    m = doc["metrics"]
    values = {
        "max_accuracy_drop": m["accuracy"]["inputs"]["drop"],
        "min_speedup": m["speedup"]["value"],
        "max_size_mb": doc["output"]["bytes"] / 1e6,
        "min_sparsity": m["sparsity"]["value"],
        "min_parity_cosine": m["parity"]["value"],
        "max_latency_ms": doc["latency"]["output"]["median_ms"],
    }
    assert values["min_speedup"] == 2.0 and values["max_latency_ms"] == 1.0
    assert values["max_accuracy_drop"] > 0 and 0 < values["min_sparsity"] < 1 and 0 < values["min_parity_cosine"] < 1
    return values


# (gate, step): `step` is how far the limit sits from the measured value; min_ gates pass at or above.
GATES = [
    ("max_accuracy_drop", 0.1),  # points; one sample of 200 is 0.5
    ("min_speedup", 0.01),
    ("max_size_mb", 1e-6),  # one byte
    ("min_sparsity", 1e-4),
    ("min_parity_cosine", 1e-4),
    ("max_latency_ms", 0.01),
]


def _limits(name: str, value: float, step: float) -> tuple[float, float]:
    """(just inside, just outside) for this gate's direction."""
    if name.startswith("min_"):
        return value - step, value + step
    return value + step, value - step


@pytest.mark.parametrize(("gate", "step"), GATES, ids=[g for g, _ in GATES])
def test_just_inside_passes(setup, measured, gate, step):
    d, model = setup
    inside, _ = _limits(gate, measured[gate], step)
    r, out = _invoke(d, model, f"in-{gate}", f"  {gate}: {inside!r}\n")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["status"] == "ok"
    (g,) = [g for g in doc["gates"] if g["name"] == gate]
    assert g["passed"] and g["value"] == pytest.approx(measured[gate])
    assert out.is_file() and not out.with_name(out.name.replace(".onnx", ".rejected.onnx")).exists()
    assert any(line.startswith(f"gate {gate}: ") and line.endswith("passed") for line in r.stderr.splitlines())


@pytest.mark.parametrize(("gate", "step"), GATES, ids=[g for g, _ in GATES])
def test_just_outside_fails_with_exit_3(setup, measured, gate, step):
    d, model = setup
    _, outside = _limits(gate, measured[gate], step)
    r, out = _invoke(d, model, f"out-{gate}", f"  {gate}: {outside!r}\n")
    assert r.exit_code == 3, r.stderr
    doc = json.loads(r.stdout)
    assert doc["status"] == "gate_failed"
    (g,) = [g for g in doc["gates"] if g["name"] == gate]
    assert not g["passed"] and g["value"] == pytest.approx(measured[gate])
    assert not out.exists(), "nothing under the final name after a failed gate"
    rejected = out.with_name(out.name[: -len(".onnx")] + ".rejected.onnx")
    assert rejected.is_file() and doc["files"]["model"] == str(rejected)
    failed = [line for line in r.stderr.splitlines() if line.startswith(f"gate {gate}: ") and line.endswith("FAILED")]
    assert len(failed) == 1
    assert json.loads(out.with_suffix(".report.json").read_text())["status"] == "gate_failed"


def test_no_fail_on_gate_exits_0_and_keeps_gate_failed(setup, measured):
    d, model = setup
    r, out = _invoke(d, model, "nofail", f"  min_speedup: {measured['min_speedup'] + 1}\n", "--no-fail-on-gate")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["status"] == "gate_failed"
    assert json.loads(out.with_suffix(".report.json").read_text())["status"] == "gate_failed"
    assert not out.exists() and out.with_name("nofail.opt.rejected.onnx").is_file()
    assert "gate min_speedup: 2x (95% interval 2–2) < 3.0x FAILED" in r.stderr.splitlines()


def test_github_actions_annotations(setup, measured):
    d, model = setup
    r, _ = _invoke(d, model, "gha", "  min_speedup: 3\n  min_sparsity: 0.01\n", env={"GITHUB_ACTIONS": "true"})
    assert r.exit_code == 3
    lines = r.stderr.splitlines()
    assert "::error title=optimize gate::gate min_speedup: 2x (95%25 interval 2–2) < 3.0x FAILED"  # % escaped as %25 in lines
    assert not any(line.startswith("::error") and "min_sparsity" in line for line in lines)  # passed: no annotation
    assert any(line.startswith("gate min_sparsity: ") and line.endswith("passed") for line in lines)
