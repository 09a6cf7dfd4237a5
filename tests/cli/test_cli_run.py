"""`optimize run`: option mapping, --dry-run, stdout discipline, exit codes (against a fake pipeline)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from cli_helpers import FAILED_GATE, PASSED_GATE, ROOT, make_report

from cli.app import app
from optimize.errors import ConfigError, GateFailed, ModelLoadError, PassError

pytest_plugins = ["cli_fixtures"]  # fixtures: runner, good_yaml, bad_yaml, fake_pipeline

# ---------------------------------------------------------------- options → RunOptions


def test_flags_become_run_options(runner, fake_pipeline):
    r = runner.invoke(
        app,
        [
            "run", "m.onnx", "-c", "p.yaml", "-o", "o.onnx", "--report", "r.json", "--device", "cuda",
            "--threads", "3", "--set", "a=1", "--set", "b.c=2", "--seed", "7", "--trust-model",
            "--no-fail-on-gate", "--progress", "none", "--json",
        ],
    )
    assert r.exit_code == 0, r.stderr
    kind, opts = fake_pipeline.calls[-1]
    assert kind == "run"
    assert (opts.model, opts.config, opts.output, opts.report) == ("m.onnx", "p.yaml", "o.onnx", "r.json")
    assert (opts.device, opts.threads, opts.seed) == ("cuda", 3, 7)
    assert opts.overrides == ["a=1", "b.c=2"]
    assert opts.trust_model is True and opts.fail_on_gate is False


def test_defaults_run_the_example(runner, fake_pipeline):
    r = runner.invoke(app, ["run", "--json", "--progress", "none"])
    assert r.exit_code == 0, r.stderr
    _, opts = fake_pipeline.calls[-1]
    assert opts.model is None and opts.config is None
    assert opts.fail_on_gate is True and opts.trust_model is False
    assert opts.overrides == []


# ---------------------------------------------------------------- stdout discipline


def test_json_stdout_is_exactly_the_report(runner, fake_pipeline):
    r = runner.invoke(app, ["run", "--json", "--progress", "plain"])
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)  # fails if anything else is on stdout
    assert doc == make_report().model_dump(mode="json")
    # what the library printed and the progress lines went to stderr
    assert "noise a library printed" in r.stderr
    assert "[distill] epoch 2/2 loss 0.25" in r.stderr


def test_human_summary_on_stdout(runner, fake_pipeline):
    r = runner.invoke(app, ["run", "--progress", "none"])
    assert r.exit_code == 0, r.stderr
    out = r.stdout
    for text in ("status", "verdict", "speedup", "0.82x", "no GPU [cuda] present", "median ms", "warning:", "[check VNNI]"):
        assert text in out, text
    assert out.index("speedup") < out.index("sparsity")  # METRIC_ORDER
    assert "noise a library printed" not in out


def test_quiet_prints_no_progress(runner, fake_pipeline):
    r = runner.invoke(app, ["run", "--json", "-q", "--progress", "plain"])
    assert r.exit_code == 0
    assert "[distill]" not in r.stderr
    json.loads(r.stdout)


def test_stdout_clean_at_file_descriptor_level(tmp_path):
    """C libraries write to fd 1 directly; that must not reach stdout either."""
    import subprocess
    import sys

    script = f"""
import os, sys, types
sys.path.insert(0, {str(ROOT)!r})
sys.path.insert(0, {str(Path(__file__).parent)!r})
from cli_helpers import make_report
fake = types.ModuleType("optimize.pipeline")
def run(opts):
    os.write(1, b"fd-level noise\\n")
    print("python-level noise")
    return make_report()
fake.run = run
sys.modules["optimize.pipeline"] = fake
import optimize; optimize.pipeline = fake
from cli.app import main
main(["run", "--json", "--progress", "plain"])
"""
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["status"] == "ok"
    assert "fd-level noise" in p.stderr and "python-level noise" in p.stderr


# ---------------------------------------------------------------- gates


def test_gate_failure_exit_3_with_report(runner, fake_pipeline):
    exc = GateFailed(["min_speedup: 0.82 < 1.0"])
    exc.report = make_report("gate_failed", [FAILED_GATE, PASSED_GATE])  # type: ignore[attr-defined]
    fake_pipeline.behaviour = exc
    r = runner.invoke(app, ["run", "--json", "--progress", "none"], env={"GITHUB_ACTIONS": "false"})
    assert r.exit_code == 3
    assert json.loads(r.stdout)["status"] == "gate_failed"
    lines = r.stderr.strip().splitlines()
    assert "gate min_speedup: 0.82 < 1 FAILED" in lines
    assert "gate min_sparsity: 0.5 >= 0.4 passed" in lines  # one line per gate, passed ones too
    assert lines[-1].startswith("error: quality gate failed")
    assert "::error" not in r.stderr


def test_gate_failure_github_annotation(runner, fake_pipeline):
    exc = GateFailed(["min_speedup"])
    exc.report = make_report("gate_failed", [FAILED_GATE])  # type: ignore[attr-defined]
    fake_pipeline.behaviour = exc
    r = runner.invoke(app, ["run", "--progress", "none"], env={"GITHUB_ACTIONS": "true"})
    assert r.exit_code == 3
    assert "::error title=optimize gate::gate min_speedup: 0.82 < 1 FAILED" in r.stderr.splitlines()
    assert "FAIL" in r.stdout  # the table shows the gate


def test_no_fail_on_gate_returns_report_exit_0(runner, fake_pipeline):
    fake_pipeline.behaviour = lambda opts: make_report("gate_failed", [FAILED_GATE])
    r = runner.invoke(app, ["run", "--json", "--no-fail-on-gate", "--progress", "none"])
    assert r.exit_code == 0
    assert fake_pipeline.calls[-1][1].fail_on_gate is False
    assert json.loads(r.stdout)["status"] == "gate_failed"
    assert "gate min_speedup: 0.82 < 1 FAILED" in r.stderr


# ---------------------------------------------------------------- errors → exit codes


@pytest.mark.parametrize(
    ("exc", "code", "text"),
    [
        (ConfigError("must be one of 8", file="p.yaml", line=4, key="passes[0].quantize.bits"), 2, "error: p.yaml:4: passes[0].quantize.bits: must be one of 8"),
        (ModelLoadError("refusing to unpickle m.pt;\nuse --trust-model"), 2, "error: refusing to unpickle m.pt; | use --trust-model"),
        (PassError("quantize", "ORT failed", index=1), 1, "error: passes[1] quantize: ORT failed"),
        (RuntimeError("boom"), 1, "error: internal: RuntimeError: boom"),
    ],
)
def test_errors_are_one_line_with_exit_code(runner, fake_pipeline, exc, code, text):
    fake_pipeline.behaviour = exc
    r = runner.invoke(app, ["run", "--progress", "none"])
    assert r.exit_code == code
    assert r.stdout == ""
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(text)


def test_failure_with_report_still_prints_report(runner, fake_pipeline):
    exc = PassError("distill", "diverged", index=2)
    exc.report = make_report("failed")  # type: ignore[attr-defined]
    fake_pipeline.behaviour = exc
    r = runner.invoke(app, ["run", "--json", "--progress", "none"])
    assert r.exit_code == 1
    assert json.loads(r.stdout)["status"] == "failed"


def test_verbose_shows_traceback(runner, fake_pipeline):
    fake_pipeline.behaviour = RuntimeError("boom")
    r = runner.invoke(app, ["run", "-v", "--progress", "none"])
    assert r.exit_code == 1
    assert "Traceback" in r.stderr
    assert r.stderr.strip().splitlines()[-1] == "error: internal: RuntimeError: boom"


def test_interrupt_exits_130(runner, fake_pipeline):
    fake_pipeline.behaviour = KeyboardInterrupt()
    r = runner.invoke(app, ["run", "--progress", "none"])
    assert r.exit_code == 130
    assert r.stderr.strip().splitlines()[-1] == "interrupted"


# ---------------------------------------------------------------- dry run


def test_dry_run_json(runner, fake_pipeline):
    r = runner.invoke(app, ["run", "--dry-run", "--json", "--seed", "3"])
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert {"config", "steps", "model", "output", "report"} <= set(doc)
    assert doc["config"]["seed"] == 3
    assert doc["steps"][1] == {"index": None, "type": "export", "form_in": "torch", "form_out": "onnx", "inserted": True}
    assert [k for k, _ in fake_pipeline.calls] == ["plan"]  # nothing ran


def test_dry_run_yaml_is_a_config_file(runner, fake_pipeline):
    r = runner.invoke(app, ["run", "--dry-run"])
    assert r.exit_code == 0, r.stderr
    assert yaml.safe_load(r.stdout) == {"schema_version": 1, "seed": 0, "passes": [{"type": "prune", "sparsity": 0.5}]}
    assert "# steps:" in r.stdout and "(inserted)" in r.stdout


def test_dry_run_rejected_config_exit_2(runner, fake_pipeline):
    fake_pipeline.behaviour = ConfigError("unknown pass type 'prun'", file="p.yaml", line=3, key="passes[0]")
    r = runner.invoke(app, ["run", "--dry-run", "--json"])
    assert r.exit_code == 2
    assert r.stdout == ""
    assert r.stderr.strip() == "error: p.yaml:3: passes[0]: unknown pass type 'prun'"


@pytest.mark.skipif(not (ROOT / "optimize" / "pipeline.py").exists(), reason="optimize/pipeline.py not written yet")
def test_dry_run_real_pipeline(runner, good_yaml):
    r = runner.invoke(app, ["run", "--dry-run", "--json", "-c", str(good_yaml)])
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [p["type"] for p in doc["config"]["passes"]] == ["prune", "quantize"]
    assert {s["type"] for s in doc["steps"]} >= {"prune", "quantize"}


@pytest.mark.skipif(not (ROOT / "optimize" / "pipeline.py").exists(), reason="optimize/pipeline.py not written yet")
def test_dry_run_yaml_round_trips_through_validate(runner, tmp_path):
    """`--dry-run` output is itself a valid config: any run is reproducible from a file."""
    r = runner.invoke(app, ["run", "--dry-run", "-c", str(ROOT / "configs" / "default.yaml"), "--seed", "5"])
    assert r.exit_code == 0, r.stderr
    resolved = tmp_path / "resolved.yaml"
    resolved.write_text(r.stdout)
    v = runner.invoke(app, ["validate", str(resolved)])
    assert v.exit_code == 0, v.stderr
    assert yaml.safe_load(r.stdout)["seed"] == 5


def test_returned_gate_failure_still_exits_3(runner, fake_pipeline):
    """If the library returns a gate_failed report although fail_on_gate is set, exit 3 anyway."""
    fake_pipeline.behaviour = lambda opts: make_report("gate_failed", [FAILED_GATE])
    r = runner.invoke(app, ["run", "--json", "--progress", "none"])
    assert r.exit_code == 3
    assert json.loads(r.stdout)["status"] == "gate_failed"
    assert r.stderr.strip().splitlines()[-1] == "error: quality gate failed: min_speedup"


def test_json_has_no_nan(runner, fake_pipeline):
    """Strict JSON: a non-finite number in the report is written as null (as pydantic does)."""
    from optimize.report import Metric

    report = make_report()
    report.metrics["parity"] = Metric(value=0.99, formula="cos", inputs={"max_abs_diff": float("nan"), "inf": float("inf")})
    fake_pipeline.behaviour = report
    r = runner.invoke(app, ["run", "--json", "--progress", "none"])
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert doc["metrics"]["parity"]["inputs"] == {"max_abs_diff": None, "inf": None}
    assert doc == json.loads(report.model_dump_json())
