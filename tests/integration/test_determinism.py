"""Determinism: the same seed and inputs give a byte-identical ONNX file on CPU, within one
process and across processes with different hash seeds (set/dict ordering cannot leak in).

Measured here (2-core Xeon, torch 2.13, onnxruntime 1.32): the ONNX int8 pipeline, the torch
factory → dynamo export → prune → quantize pipeline and the built-in example (distillation
included, ~85 s, marked slow) all give identical sha256 run to run.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from helpers import child_pythonpath
from reliability_helpers import cli, make_mlp_onnx, write_config

INT8 = "  - type: prune\n    sparsity: 0.5\n  - type: quantize\n    mode: dynamic\n    per_channel: true\n"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_onnx_int8_pipeline_is_byte_identical_across_processes(capfd, tmp_path: Path) -> None:
    """This process (random hash seed) and a fresh one with PYTHONHASHSEED=1: same bytes."""
    model = make_mlp_onnx(tmp_path / "mlp.onnx")
    cfg = write_config(tmp_path, INT8)
    code, _, err = cli(capfd, "run", str(model), "-c", str(cfg), "-o", str(tmp_path / "a.onnx"), "-q")
    assert code == 0, err
    p = subprocess.run(
        [sys.executable, "-m", "cli", "run", str(model), "-c", str(cfg), "-o", str(tmp_path / "b.onnx"), "-q"],
        env={**os.environ, "PYTHONPATH": child_pythonpath(), "PYTHONHASHSEED": "1"}, capture_output=True, text=True, timeout=300,
    )
    assert p.returncode == 0, p.stderr
    assert sha(tmp_path / "a.onnx") == sha(tmp_path / "b.onnx")


FACTORY = """
import torch

class Net(torch.nn.Module):
    input_spec = [{"name": "x", "shape": ["batch", 1, 8, 8]}]
    output_names = ["logits"]

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))

def make():
    torch.manual_seed(0)
    return Net()
"""


@pytest.mark.slow  # four dynamo exports (baseline + output, twice): ~20 s on 2 cores
def test_torch_dynamo_export_prune_quantize_is_byte_identical(capfd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"det_net_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(FACTORY)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = write_config(tmp_path, INT8, extra="output:\n  exporter: dynamo\n")
    reports = []
    for i in range(2):
        code, stdout, err = cli(capfd, "run", f"{name}:make", "-c", str(cfg), "-o", str(tmp_path / f"t{i}.onnx"), "-q", "--json")
        assert code == 0, err
        reports.append(json.loads(stdout))
    assert "dynamo" in (reports[0]["output"]["exporter"] or "")
    assert sha(tmp_path / "t0.onnx") == sha(tmp_path / "t1.onnx")
    assert reports[0]["output"]["sha256"] == reports[1]["output"]["sha256"]


@pytest.mark.slow
def test_builtin_example_is_byte_identical_across_processes(tmp_path: Path) -> None:
    """`optimize run` (the example: teacher, prune, QAT distillation, int8) twice, fresh processes."""
    shas = []
    for i in range(2):
        p = subprocess.run(
            [sys.executable, "-m", "cli", "run", "-o", str(tmp_path / f"ex{i}.onnx"), "-q", "--json"],
            env={**os.environ, "PYTHONPATH": child_pythonpath()}, capture_output=True, text=True, timeout=900, cwd=tmp_path,
        )
        assert p.returncode == 0, p.stderr
        shas.append(json.loads(p.stdout)["output"]["sha256"])
        assert shas[-1] == sha(tmp_path / f"ex{i}.onnx")
    assert shas[0] == shas[1]
