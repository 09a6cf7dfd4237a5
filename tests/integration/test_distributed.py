"""torchrun: `torchrun --standalone --nproc_per_node=2 -m cli run ...` distills under
DistributedDataParallel with gloo on the CPU, writes exactly one model and one report (rank 0), the
student reaches the single-process accuracy within noise, and a failed gate gives every rank exit 3.

Marked `distributed` (two processes; about 30-60 s on two cores): `pytest -m distributed`.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, child_pythonpath

pytestmark = pytest.mark.distributed

REPO = ROOT

CONFIG = """schema_version: 1
model: {{weights: {weights}}}
data:
  train: {{source: "builtin:digits", split: train}}
  eval: {{source: "builtin:digits", split: test}}
measure: {{warmup: 1, repeat: 3, single_thread: false, parity_samples: 16}}
output: {{markdown: false}}
passes:
  - {{type: distill, epochs: 4, lr: 0.005, student: {{width: 0.5}}}}
"""


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=child_pythonpath(), OMP_NUM_THREADS="1")
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _distill_metrics(report: dict) -> dict:
    return next(s for s in report["steps"] if s["type"] == "distill")["metrics"]


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from optimize import example

    d = tmp_path_factory.mktemp("dist")
    weights = d / "teacher.safetensors"
    example.train_teacher(weights, seed=0)
    path = d / "distill.yaml"
    path.write_text(CONFIG.format(weights=json.dumps(str(weights))))
    return path


def test_two_gloo_processes_write_one_output_and_match_one_process(config: Path, tmp_path: Path) -> None:
    common = ["optimize.example:digits_cnn", "-c", str(config), "--threads", "1", "--progress", "none", "--json"]
    one = _run([sys.executable, "-m", "cli", "run", *common, "-o", str(tmp_path / "one" / "m.onnx")], tmp_path)
    assert one.returncode == 0, one.stderr[-2000:]
    two = _run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "cli", "run",
         *common, "-o", str(tmp_path / "two" / "m.onnx")],
        tmp_path,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    # exactly one model and one report, written by rank 0; no temporary leftovers
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["m.onnx", "m.report.json"]
    # stdout carries exactly one JSON document (rank 0's)
    report = json.loads(two.stdout)
    assert report == json.loads((tmp_path / "two" / "m.report.json").read_text()) | {"files": report["files"]}
    m1, m2 = _distill_metrics(json.loads(one.stdout)), _distill_metrics(report)
    assert m1["world_size"] == 1 and m2["world_size"] == 2
    # each rank trains on its half of every epoch (1437 samples: 719 per rank, batch 64)
    assert m1["steps"] == 4 * math.ceil(1437 / 64) and m2["steps"] == 4 * math.ceil(719 / 64)
    assert m2["teacher_accuracy"] == m1["teacher_accuracy"]
    assert abs(m2["student_accuracy"] - m1["student_accuracy"]) <= 3.0
    assert m2["distillation_ratio"] >= 0.95


def test_a_failed_gate_gives_every_rank_exit_code_3(config: Path, tmp_path: Path) -> None:
    two = _run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "cli", "run",
         "optimize.example:digits_cnn", "-c", str(config), "--threads", "1", "--progress", "none", "-q",
         "--set", "passes[0].epochs=1", "--set", "gates.min_speedup=1000", "-o", str(tmp_path / "m.onnx")],
        tmp_path,
    )
    # torchrun itself exits 1 when any worker fails; each worker's own code is in its summary
    assert two.returncode == 1
    codes = re.findall(r"^\s*exitcode\s*:\s*(-?\d+)", two.stderr, flags=re.M)  # one summary entry per rank
    assert sorted(codes) == ["3", "3"], two.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("m.")) == ["m.rejected.onnx", "m.report.json"]
    assert json.loads((tmp_path / "m.report.json").read_text())["status"] == "gate_failed"


def test_sparsity_auto_under_two_gloo_processes_decides_alike_on_every_rank(config: Path, tmp_path: Path) -> None:
    # each probe trains under DDP, so the ranks must decide alike (rank 0's stop and meets decisions
    # are broadcast; a divergence near the time budget cannot be forced here): the search runs through
    weights = re.search(r"weights: (.+)}", config.read_text()).group(1)
    cfg = tmp_path / "auto.yaml"
    cfg.write_text(
        f"schema_version: 1\nmodel: {{weights: {weights}}}\n"
        "data:\n  train: {source: 'builtin:digits', split: train}\n  eval: {source: 'builtin:digits', split: test}\n"
        "measure: {warmup: 1, repeat: 3, single_thread: false, parity_samples: 16}\noutput: {markdown: false}\n"
        "passes:\n  - {type: prune, method: structured, sparsity: auto, search_grid: [0.25, 0.5, 0.75],"
        " search_samples: 128, search_min_cosine: 0.5}\n  - {type: distill, epochs: 1, lr: 0.002}\n"
    )
    two = _run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "cli", "run",
         "optimize.example:digits_cnn", "-c", str(cfg), "--threads", "1", "--progress", "none", "--json",
         "-o", str(tmp_path / "auto" / "m.onnx")],
        tmp_path,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    report = json.loads(two.stdout)
    assert _distill_metrics(report)["world_size"] == 2
    search = next(s for s in report["steps"] if s["type"] == "prune")["metrics"]["search"]
    met = [p["sparsity"] for p in search["curve"] if p["meets"]]
    assert search["curve"] and search["chosen"]["sparsity"] == (max(met) if met else 0.0), search
