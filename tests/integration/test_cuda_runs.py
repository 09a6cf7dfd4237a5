"""The CUDA paths end to end, through the command line as a GPU-server user runs them: `--device
auto` picking the GPU, distillation (autocast) and structured pruning on CUDA, quantization-aware
training on CUDA, and the report's CPU-vs-GPU speedup measured with torch.

Marked `gpu`: excluded from `make test`, and skipped when no CUDA device is visible
(`pytest -m gpu`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, child_pythonpath

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=child_pythonpath())
    return subprocess.run([sys.executable, "-m", "cli", "run", *args, "--progress", "none", "--json"], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=600)


def _ort_has_cuda() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def _step(report: dict, kind: str) -> dict:
    return next(s for s in report["steps"] if s["type"] == kind)["metrics"]


def test_gpu_config_auto_trains_on_cuda_and_reports_gpu_speedup(tmp_path: Path) -> None:
    out = tmp_path / "d.onnx"
    r = _cli(["-c", str(ROOT / "configs" / "gpu.yaml"), "-o", str(out)], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout)
    assert report["config"]["hardware"]["device"] == "auto"
    assert _step(report, "prune")["device"].startswith("cuda")  # scored and cut on the GPU, handed on on the CPU
    distill = _step(report, "distill")
    assert distill["device"].startswith("cuda") and distill["amp"] in ("bfloat16", "float16")
    assert distill["student_accuracy"] >= distill["teacher_accuracy"] - 3.0, distill
    gpu = report["metrics"]["gpu_speedup"]
    if _ort_has_cuda():  # the output latency itself is the CUDA timing then
        assert report["latency"]["output"]["device"] == "cuda", report["latency"]["output"]
    else:
        assert gpu["value"] is not None and gpu["value"] > 0, gpu
        assert {"torch_cpu", "torch_cuda"} <= set(report["latency"]), report["latency"].keys()
    assert report["hardware"].get("gpu"), report["hardware"]
    assert out.is_file() and all(g["passed"] for g in report["gates"])


def test_prune_qat_distill_on_cuda_gives_int8_that_keeps_accuracy(tmp_path: Path) -> None:
    cfg = tmp_path / "qat.yaml"
    cfg.write_text(
        "schema_version: 1\n"
        "data:\n  train: {source: 'builtin:digits', split: train}\n  eval: {source: 'builtin:digits', split: test}\n"
        "passes:\n"
        "  - {type: prune, method: structured, importance: fisher, sparsity: 0.25}\n"
        "  - {type: quantize, mode: static}\n"
        "  - {type: distill, epochs: 6, lr: 0.002}\n"
        "gates: {max_accuracy_drop: 3.0}\n"
    )
    r = _cli(["-c", str(cfg), "--device", "cuda", "-o", str(tmp_path / "q.onnx")], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout)
    assert _step(report, "prune")["device"].startswith("cuda") and _step(report, "distill")["device"].startswith("cuda")
    assert report["metrics"]["quantization_ratio"]["value"] is not None
    assert report["output"]["weight_dtypes"].get("int8") or report["output"]["weight_dtypes"].get("uint8"), report["output"]


def test_device_cuda_with_no_amp_trains_in_float32(tmp_path: Path) -> None:
    r = _cli(["-c", str(ROOT / "configs" / "gpu.yaml"), "--device", "cuda", "--set", "passes[1].amp=false",
              "--set", "passes[1].epochs=2", "-o", str(tmp_path / "f.onnx")], tmp_path)
    assert r.returncode in (0, 3), r.stderr[-3000:]
    distill = _step(json.loads(r.stdout), "distill")
    assert distill["device"].startswith("cuda") and distill["amp"] is None


def _digits_config(path: Path, prune: str) -> Path:
    path.write_text(
        "schema_version: 1\n"
        "data:\n  train: {source: 'builtin:digits', split: train}\n  eval: {source: 'builtin:digits', split: test}\n"
        f"passes:\n  - {{type: prune, method: structured, {prune}}}\n  - {{type: distill, epochs: 4, lr: 0.002}}\n"
        "gates: {max_accuracy_drop: 5.0}\n"
    )
    return path


def test_gradual_refit_prune_runs_on_cuda_and_hands_the_model_back(tmp_path: Path) -> None:
    # refit's least-squares solve and the fine-tuning between steps on CUDA tensors
    cfg = _digits_config(tmp_path / "g.yaml", "importance: fisher, sparsity: 0.5, steps: 2, finetune_epochs: 1, refit: true")
    r = _cli(["-c", str(cfg), "--device", "cuda", "-o", str(tmp_path / "g.onnx")], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    prune = _step(json.loads(r.stdout), "prune")
    assert prune["device"].startswith("cuda")
    steps = prune["per_step"]
    assert len(steps) == 2 and steps[0]["finetune_epochs"] == 1
    assert all(s["refit"]["layers"] >= 1 for s in steps), steps
    assert steps[0]["refit"]["rel_error_after_mean"] < steps[0]["refit"]["rel_error_before_mean"], steps[0]


def test_sparsity_auto_searches_on_cuda(tmp_path: Path) -> None:
    cfg = _digits_config(tmp_path / "a.yaml", "sparsity: auto, search_grid: [0.125, 0.25, 0.5], search_min_cosine: 0.8,"
                                              " search_samples: 256, search_budget_minutes: 2")
    r = _cli(["-c", str(cfg), "--device", "cuda", "-o", str(tmp_path / "a.onnx")], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    prune = _step(json.loads(r.stdout), "prune")
    assert prune["device"].startswith("cuda")
    search = prune["search"]
    assert search["curve"] and all(p["min_cosine"] is not None for p in search["curve"]), search
    met = [p["sparsity"] for p in search["curve"] if p["meets"]]
    assert search["chosen"]["sparsity"] == (max(met) if met else 0.0), search
