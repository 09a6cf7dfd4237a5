"""Every report `optimize run` writes validates against the published JSON Schema, for every exit
code (0 ok, 3 gate_failed, 0 with --no-fail-on-gate, 1 failed), on disk and on stdout (--json);
a run rejected before any work (exit 2) writes no report. And every number is recomputable from
the files: sha256, bytes, sparsity, quantization ratio, compression ratio, params removed, the
speedup from its recorded per-round ratios, the accuracy drop and the diagnostics' graph facts."""

from __future__ import annotations

import hashlib
import json
import statistics
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from tiny_models import export_module, mlp_of
from typer.testing import CliRunner

from cli.app import app
from optimize.report import Report

jsonschema = pytest.importorskip("jsonschema")

FAST = "measure: {repeat: 5, warmup: 1, parity_samples: 16, batch: 4}\n"
BITS = {"FLOAT": 32, "FLOAT16": 16, "INT8": 8, "UINT8": 8}


def _eval_npz(path: Path) -> Path:
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.standard_normal((64, 16)).astype(np.float32), y=rng.integers(0, 3, 64))
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("schema")
    import torch

    export_module(mlp_of(16, 32, 3), d / "mlp.onnx", (torch.randn(2, 16),))
    _eval_npz(d / "eval.npz")
    return d


@pytest.fixture(scope="module")
def validator():
    schema = Report.model_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _config(work: Path, name: str, passes: str, gates: str = "") -> str:
    text = (
        "schema_version: 1\nmodel:\n  task: classification\n"
        f"data:\n  eval: {{source: {work / 'eval.npz'}}}\n"
        f"passes:\n{passes}" + FAST + (f"gates:\n{gates}" if gates else "")
    )
    p = work / f"{name}.yaml"
    p.write_text(text)
    return str(p)


PRUNE_QUANT = "  - type: prune\n    method: magnitude\n    sparsity: 0.5\n  - type: quantize\n    mode: dynamic\n"


def _run(work: Path, name: str, passes: str, gates: str = "", extra: tuple[str, ...] = ()) -> tuple[int, str, Path]:
    cfg = _config(work, name, passes, gates)
    out = work / f"{name}.opt.onnx"
    r = CliRunner().invoke(app, ["run", str(work / "mlp.onnx"), "-c", cfg, "-o", str(out), "--json",
                                 "--progress", "none", *extra])
    return r.exit_code, r.stdout, out


@pytest.fixture(scope="module")
def ok_run(work):
    code, stdout, out = _run(work, "ok", PRUNE_QUANT)
    assert code == 0, stdout
    return json.loads(stdout), out


def _validate(validator, doc: dict) -> None:
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors[:5])


def test_schema_command_prints_the_same_schema(validator):
    r = CliRunner().invoke(app, ["schema", "--report"])
    assert r.exit_code == 0
    assert json.loads(r.stdout) == json.loads(json.dumps(Report.model_json_schema()))


def test_ok_report_validates(ok_run, validator):
    doc, out = ok_run
    assert doc["status"] == "ok"
    _validate(validator, doc)
    on_disk = json.loads(out.with_suffix(".report.json").read_text())
    _validate(validator, on_disk)
    assert on_disk == doc
    assert doc["diagnostics"] is not None  # present in the schema-valid document


def test_gate_failed_report_validates(work, validator):
    code, stdout, out = _run(work, "gate", "  - type: quantize\n    mode: dynamic\n", "  min_sparsity: 0.99\n")
    assert code == 3
    doc = json.loads(stdout)
    assert doc["status"] == "gate_failed"
    _validate(validator, doc)
    _validate(validator, json.loads(out.with_suffix(".report.json").read_text()))
    assert not out.exists() and (work / "gate.opt.rejected.onnx").is_file()


def test_no_fail_on_gate_report_validates_and_keeps_status(work, validator):
    code, stdout, out = _run(work, "nofail", "  - type: quantize\n    mode: dynamic\n", "  min_sparsity: 0.99\n",
                             ("--no-fail-on-gate",))
    assert code == 0
    doc = json.loads(stdout)
    assert doc["status"] == "gate_failed"
    _validate(validator, doc)


def test_failed_report_validates(work, validator, monkeypatch):
    from passes.quantize import QuantizePass

    def boom(self, model, ctx):
        raise RuntimeError("simulated runtime failure")

    monkeypatch.setattr(QuantizePass, "run", boom)
    code, stdout, out = _run(work, "failed", "  - type: quantize\n    mode: dynamic\n")
    assert code == 1
    doc = json.loads(stdout)
    assert doc["status"] == "failed" and "simulated runtime failure" in doc["error"]
    _validate(validator, doc)
    _validate(validator, json.loads(out.with_suffix(".report.json").read_text()))
    assert not out.exists()


def test_usage_error_writes_no_report(work):
    code, stdout, out = _run(work, "usage", "  - type: quantize\n    bits: 3\n")
    assert code == 2
    assert stdout == ""
    assert not out.exists() and not out.with_suffix(".report.json").exists()


# ---------------------------------------------------------------- recompute every number


def _weights(path: Path) -> list[np.ndarray]:
    """Independent of optimize.inspect_onnx: in this MLP (and its int8 forms) the weights are exactly
    the initializers with two or more dimensions (biases, scales and zero points have fewer)."""
    model = onnx.load(str(path))
    return [numpy_helper.to_array(i) for i in model.graph.initializer if len(i.dims) >= 2]


def _bits(path: Path) -> int:
    model = onnx.load(str(path))
    return sum(BITS[onnx.TensorProto.DataType.Name(i.data_type)] * int(np.prod(i.dims))
               for i in model.graph.initializer if len(i.dims) >= 2)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_every_number_is_recomputable_from_the_files(ok_run, work):
    doc, out = ok_run
    src = work / "mlp.onnx"
    m = doc["metrics"]
    # files: hashes and sizes
    assert doc["output"]["path"] == str(out)
    assert doc["input"]["sha256"] == _sha(src) and doc["output"]["sha256"] == _sha(out)
    assert doc["input"]["bytes"] == src.stat().st_size and doc["output"]["bytes"] == out.stat().st_size
    assert m["compression_ratio"]["value"] == pytest.approx(src.stat().st_size / out.stat().st_size)
    # weights, sparsity, density, quantization ratio
    w_in, w_out = _weights(src), _weights(out)
    total = sum(w.size for w in w_out)
    zeros = sum(int((w == 0).sum()) for w in w_out)
    assert doc["output"]["weights"] == total == 16 * 32 + 32 * 3
    assert doc["input"]["weights"] == sum(w.size for w in w_in)
    assert m["sparsity"]["value"] == pytest.approx(zeros / total)
    assert m["sparsity"]["value"] > 0.25  # the prune pass left zeros that survived int8 quantization
    assert m["density"]["value"] == pytest.approx(1 - zeros / total)
    assert m["quantization_ratio"]["value"] == pytest.approx(_bits(out) / (32 * total)) == pytest.approx(0.25)
    assert m["params_removed"]["value"] == pytest.approx(1 - total / doc["input"]["weights"])
    assert m["effective_sparsity"]["value"] == pytest.approx(1 - (total - zeros) / doc["input"]["weights"])
    # latency: speedup = median of the recorded per-round ratios, its interval a seeded bootstrap of
    # that median (recomputed here with numpy alone), the verdict from the interval and tolerance;
    # at least the configured rounds, more (up to 3x) while the interval was undecided
    for key in ("speedup", "parallel_speedup"):
        sp = m[key]
        if sp["value"] is None:
            continue
        ratios = np.asarray(sp["inputs"]["round_ratios"])
        assert len(ratios) == sp["inputs"]["runs"] == doc["latency"]["output"]["runs"] and 5 <= len(ratios) <= 15
        assert sp["inputs"]["rounds_configured"] == 5
        assert sp["value"] == pytest.approx(statistics.median(ratios))
        medians = np.median(ratios[np.random.default_rng(0).integers(0, len(ratios), (2000, len(ratios)))], axis=1)
        assert sp["interval"] == pytest.approx(np.percentile(medians, [2.5, 97.5]).tolist())
        lo, hi = sp["interval"]
        assert sp["tolerance"] == 0.03
        assert sp["verdict"] == ("faster" if lo > 1.03 else "slower" if hi < 0.97 else "no measurable change")
    assert doc["latency"]["output"]["batch"] == 4
    # accuracy: drop = baseline − optimized, recomputed by running both files on the eval data
    import onnxruntime as ort

    data = np.load(work / "eval.npz")
    acc = []
    for p in (src, out):
        s = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
        acc.append(float((s.run(None, {"x": data["x"]})[0].argmax(-1) == data["y"]).mean() * 100))
    a = m["accuracy"]["inputs"]
    assert (a["baseline"], a["optimized"]) == (pytest.approx(acc[0]), pytest.approx(acc[1]))
    assert a["drop"] == pytest.approx(acc[0] - acc[1])
    # diagnostics: the file facts equal a fresh count over the written file
    from optimize.diagnose import graph_facts

    fresh = graph_facts(out).model_dump(exclude={"path"})
    recorded = {k: v for k, v in doc["diagnostics"]["output"]["file"].items() if k != "path"}
    assert recorded == fresh
    assert doc["diagnostics"]["output"]["runtime"]["kernels"].get("integer", 0) == 2


def test_the_report_states_the_runs_peak_memory(ok_run):
    doc, _ = ok_run
    assert 20 < doc["peak_rss_mb"] < 100_000  # MB of a real process (torch + onnxruntime loaded), not bytes
