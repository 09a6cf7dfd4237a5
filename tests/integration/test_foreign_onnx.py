"""configs/onnx-int8.yaml on ONNX files this project did not build: the model-zoo "light" models
that the onnx package ships (IR version 3, old opsets, weights as graph inputs) and a TorchScript
export with If/Loop control flow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from helpers import ROOT, child_pythonpath

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], cwd=cwd, capture_output=True, text=True, timeout=600,
        env={"PYTHONPATH": child_pythonpath(), "PATH": "/usr/bin:/bin"},
    )


def int8_run(model: Path, tmp_path: Path) -> dict:
    """The config's run: exit 0, or exit 3 on its speed gate alone (dynamic int8 on convolutions and
    tiny models runs slower than float; the config then rejects it instead of passing it)."""
    out = tmp_path / (model.stem + ".int8.onnx")
    r = run_cli("run", str(model), "-c", str(ROOT / "configs" / "onnx-int8.yaml"), "-o", str(out),
                "--json", "-q", "--set", "measure.repeat=5", cwd=tmp_path)
    assert r.returncode in (0, 3), r.stderr[-2000:]
    report = json.loads(r.stdout)
    if r.returncode == 3:
        failed = [g["name"] for g in report["gates"] if not g["passed"]]
        assert failed == ["min_speedup"] and report["metrics"]["speedup"]["value"] < 0.9, r.stderr[-2000:]
        out = out.with_name(model.stem + ".int8.rejected.onnx")
    assert out.is_file()
    onnx.checker.check_model(str(out), full_check=True)
    return report


@pytest.mark.parametrize(
    "name", ["light_squeezenet", pytest.param("light_inception_v1", marks=pytest.mark.slow),
             pytest.param("light_resnet50", marks=pytest.mark.slow)],
)
def test_model_zoo_light_models(name, tmp_path):
    model = LIGHT / f"{name}.onnx"
    if not model.is_file():
        pytest.skip("this onnx build ships no light models")
    report = int8_run(model, tmp_path)
    assert report["status"] in ("ok", "gate_failed")
    assert report["metrics"]["parity"]["inputs"]["all_finite"] is True
    assert report["metrics"]["parity"]["value"] > 0.99
    assert report["metrics"]["quantization_ratio"]["value"] == pytest.approx(0.25)
    assert any(op.endswith("ConvInteger") for op in report["output"]["ops"])


CONTROL_FLOW = '''
import torch

class Ctrl(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(32, 64)
        self.b = torch.nn.Linear(64, 64)
        self.c = torch.nn.Linear(64, 8)

    def forward(self, x):
        h = torch.relu(self.a(x))
        if bool(h.sum() > 0):
            h = torch.relu(self.b(h))
        else:
            h = -h
        for _ in range(int(x.shape[1] // 8)):
            h = h * 0.5 + torch.tanh(self.b(h))
        return self.c(h)

torch.manual_seed(0)
m = torch.jit.script(Ctrl().eval())
torch.onnx.export(m, (torch.randn(2, 32),), "ctrl.onnx", input_names=["x"], output_names=["y"],
                  dynamic_axes={"x": {0: "b"}, "y": {0: "b"}}, dynamo=False, opset_version=17)
'''


def test_torchscript_export_with_if_and_loop(tmp_path):
    (tmp_path / "make_ctrl.py").write_text(CONTROL_FLOW)
    subprocess.run([sys.executable, "make_ctrl.py"], cwd=tmp_path, check=True, capture_output=True, timeout=300)
    ops = {n.op_type for n in onnx.load(str(tmp_path / "ctrl.onnx")).graph.node}
    assert {"If", "Loop"} <= ops
    report = int8_run(tmp_path / "ctrl.onnx", tmp_path)
    assert report["metrics"]["parity"]["value"] > 0.99
    # weights inside the If and Loop bodies were quantized too
    assert report["output"]["ops"].get("MatMulInteger", 0) >= 3
