"""The pipeline engine end to end on tiny models: planning, inserted steps, outputs, gates."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from optimize import pipeline
from optimize.api import RunOptions
from optimize.errors import ConfigError, GateFailed, UsageError
from optimize.inspect_onnx import weight_stats

FAST = "measure: {repeat: 3, warmup: 1, parity_samples: 8}\n"


@pytest.fixture()
def mlp_onnx(tmp_path: Path) -> Path:
    import torch

    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).eval()
    path = tmp_path / "mlp.onnx"
    torch.onnx.export(
        m, (torch.randn(2, 16),), str(path), input_names=["x"], output_names=["y"],
        dynamic_axes={"x": {0: "b"}, "y": {0: "b"}}, dynamo=False,
    )
    return path


def write(tmp_path: Path, text: str, name: str = "p.yaml") -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_onnx_graph_fp16_run_writes_model_and_true_report(tmp_path, mlp_onnx):
    cfg = write(tmp_path, "schema_version: 1\npasses:\n  - type: graph\n  - type: fp16\n" + FAST)
    out = tmp_path / "o" / "mlp.fp16.onnx"
    report = pipeline.run(RunOptions(model=str(mlp_onnx), config=cfg, output=str(out)))
    assert report.status == "ok"
    assert out.is_file() and Path(report.files["report"]).is_file() and Path(report.files["markdown"]).is_file()
    # numbers equal an independent count over the written file
    model = onnx.load(str(out))
    fp16 = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16 and len(i.dims) == 2]
    assert fp16, "fp16 pass left no float16 weight matrices"
    assert report.metrics["quantization_ratio"].value == pytest.approx(0.5)
    assert report.output.bytes == out.stat().st_size
    assert report.metrics["parity"].value > 0.999
    assert [s.type for s in report.steps] == ["graph", "fp16"]
    data = json.loads(Path(report.files["report"]).read_text())
    assert data["metrics"]["speedup"]["formula"].startswith("input latency / output latency")
    assert data["metrics"]["accuracy"]["value"] is None and "eval" in data["metrics"]["accuracy"]["reason"]
    assert not list(out.parent.glob(".*.tmp")), "temporary files left beside the output"


def test_gate_failure_writes_rejected_model_and_raises(tmp_path, mlp_onnx):
    cfg = write(tmp_path, "schema_version: 1\npasses:\n  - type: graph\ngates:\n  min_sparsity: 0.5\n" + FAST)
    out = tmp_path / "mlp.opt.onnx"
    out.write_bytes(b"stale output from an earlier run")
    with pytest.raises(GateFailed) as info:
        pipeline.run(RunOptions(model=str(mlp_onnx), config=cfg, output=str(out)))
    assert info.value.exit_code == 3
    assert not out.exists(), "a failed run must leave nothing under the final name"
    rejected = tmp_path / "mlp.opt.rejected.onnx"
    assert rejected.is_file()
    report = info.value.report  # type: ignore[attr-defined]
    assert report.status == "gate_failed"
    gate = next(g for g in report.gates if g.name == "min_sparsity")
    assert not gate.passed and gate.value == pytest.approx(0.0)
    on_disk = json.loads((tmp_path / "mlp.opt.report.json").read_text())
    assert on_disk["status"] == "gate_failed"


def test_no_fail_on_gate_returns_report(tmp_path, mlp_onnx):
    cfg = write(tmp_path, "schema_version: 1\npasses: []\ngates:\n  max_latency_ms: 0.000001\n" + FAST)
    report = pipeline.run(RunOptions(model=str(mlp_onnx), config=cfg, output=str(tmp_path / "x.onnx"), fail_on_gate=False))
    assert report.status == "gate_failed"
    assert (tmp_path / "x.rejected.onnx").is_file() and not (tmp_path / "x.onnx").exists()


def test_output_equal_to_input_is_refused(tmp_path, mlp_onnx):
    cfg = write(tmp_path, "schema_version: 1\npasses: []\n")
    before = mlp_onnx.read_bytes()
    with pytest.raises(UsageError, match="overwrite the input"):
        pipeline.plan(RunOptions(model=str(mlp_onnx), config=cfg, output=str(mlp_onnx)))
    assert mlp_onnx.read_bytes() == before


def test_torch_pass_on_onnx_model_is_a_config_error(tmp_path, mlp_onnx):
    cfg = write(tmp_path, "schema_version: 1\npasses:\n  - type: export\n")
    with pytest.raises(ConfigError, match=r"passes\[0\]\.export: export needs a torch model"):
        pipeline.plan(RunOptions(model=str(mlp_onnx), config=cfg))


def test_flags_override_config(tmp_path, mlp_onnx):
    cfg = write(tmp_path, "schema_version: 1\npasses: []\n")
    pl = pipeline.plan(RunOptions(model=str(mlp_onnx), config=cfg, threads=1, seed=7, output=str(tmp_path / "a.onnx")))
    assert pl.config.hardware.threads == 1 and pl.config.seed == 7
    assert pl.output_path == tmp_path / "a.onnx"
    assert pl.report_path == tmp_path / "a.report.json"


def test_cuda_without_gpu_is_a_usage_error(tmp_path, mlp_onnx):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    cfg = write(tmp_path, "schema_version: 1\npasses: []\n")
    with pytest.raises(UsageError, match="--device auto"):
        pipeline.plan(RunOptions(model=str(mlp_onnx), config=cfg, device="cuda"))
    assert pipeline.plan(RunOptions(model=str(mlp_onnx), config=cfg, device="auto")).device == "cpu"


FACTORY = '''
import torch

class Net(torch.nn.Module):
    input_spec = [{"name": "x", "shape": ["batch", 8], "dtype": "float32"}]
    output_names = ["logits"]

    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(8, 16)
        self.fc2 = torch.nn.Linear(16, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))

def make():
    torch.manual_seed(0)
    return Net()
'''


def test_torch_factory_gets_export_inserted_and_baseline(tmp_path, monkeypatch):
    (tmp_path / "tinynet.py").write_text(FACTORY)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = write(tmp_path, "schema_version: 1\npasses:\n  - type: graph\n" + FAST)
    pl = pipeline.plan(RunOptions(model="tinynet:make", config=cfg))
    assert [(s.type, s.inserted) for s in pl.steps] == [("export", True), ("graph", False)]
    report = pipeline.run(RunOptions(model="tinynet:make", config=cfg, output=str(tmp_path / "net.onnx")))
    assert report.output.exporter and "torch.onnx" in report.output.exporter
    assert report.input.weights == 8 * 16 + 16 * 3 == weight_stats(tmp_path / "net.onnx").total
    assert report.metrics["parity"].value > 0.9999
    assert report.metrics["compression_ratio"].inputs["input_file"].startswith("the input model exported")


def test_pass_failure_is_exit_1_and_leaves_no_output(tmp_path, mlp_onnx, monkeypatch):
    from optimize.errors import PassError
    from passes import graph

    def boom(self, model, ctx):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(graph.GraphPass, "run", boom)
    cfg = write(tmp_path, "schema_version: 1\npasses:\n  - type: graph\n" + FAST)
    out = tmp_path / "m.onnx"
    with pytest.raises(PassError, match=r"passes\[0\] graph: RuntimeError: kaboom") as info:
        pipeline.run(RunOptions(model=str(mlp_onnx), config=cfg, output=str(out)))
    assert info.value.exit_code == 1
    assert not out.exists()
    report = json.loads((tmp_path / "m.report.json").read_text())
    assert report["status"] == "failed" and "kaboom" in report["error"]


def test_non_finite_output_fails_builtin_gate(tmp_path, mlp_onnx, monkeypatch):
    from passes import graph

    def poison(self, model, ctx):
        from optimize.pass_api import PassResult

        m = onnx.load(str(model.onnx_path))
        for init in m.graph.initializer:
            arr = onnx.numpy_helper.to_array(init).copy()
            arr[...] = np.nan
            init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
        out = ctx.step_dir("graph") / "model.onnx"
        onnx.save(m, str(out))
        return PassResult(model.replace(onnx_path=out))

    monkeypatch.setattr(graph.GraphPass, "run", poison)
    cfg = write(tmp_path, "schema_version: 1\npasses:\n  - type: graph\n" + FAST)
    with pytest.raises(GateFailed) as info:
        pipeline.run(RunOptions(model=str(mlp_onnx), config=cfg, output=str(tmp_path / "n.onnx")))
    report = info.value.report  # type: ignore[attr-defined]
    assert report.metrics["parity"].value is None
    assert report.metrics["parity"].inputs["all_finite"] is False
    assert any(g.name == "finite_outputs" and not g.passed for g in report.gates)
