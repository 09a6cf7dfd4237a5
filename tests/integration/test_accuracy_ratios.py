"""Names that mean what they measure (issue 14): `distillation_ratio` is the distill step's own
student / teacher accuracy right after training, `accuracy_retained` the end-to-end output / input
accuracy; and a step's `params_before/after` count every weight the way the report's `weights` do.

The ratios are recomputed here with ONNX Runtime from the files the run kept in its work dir (the
student as trained is the export inserted right after the distill step; the teacher is the input
model's FP32 export), not with the report's own code."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from optimize.api import RunOptions
from optimize.data import digits
from optimize.model_facts import torch_weight_count
from optimize.pipeline import run

CONFIG = """schema_version: 1
model: {{weights: {weights}}}
data:
  train: {{source: "builtin:digits", split: train}}
  eval: {{source: "builtin:digits", split: test}}
measure: {{warmup: 1, repeat: 5, single_thread: false, parity_samples: 16}}
output: {{markdown: false}}
passes:
  - {{type: prune, method: structured, sparsity: 0.5}}
  - {{type: distill, epochs: 2}}
  - {{type: quantize, mode: dynamic}}
"""


def _accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # in the run's batches (data.batch_size 64): dynamic int8 scales each call's activations by that call's range
    name = s.get_inputs()[0].name
    logits = np.concatenate([s.run(None, {name: x[i:i + 64]})[0] for i in range(0, len(x), 64)])
    return float((logits.argmax(-1) == y).mean() * 100)


@pytest.fixture(scope="module")
def kept_run(tmp_path_factory: pytest.TempPathFactory, teacher_weights: Path):
    d = tmp_path_factory.mktemp("ratios")
    cfg = d / "p.yaml"
    cfg.write_text(CONFIG.format(weights=json.dumps(str(teacher_weights))))
    work = d / "work"
    report = run(RunOptions(model="optimize.example:digits_cnn", config=str(cfg), output=str(d / "out.onnx"),
                            work_dir=work, threads=1))
    return report, work


def test_distillation_ratio_is_student_over_teacher_right_after_distill(kept_run) -> None:
    report, work = kept_run
    x, y = digits("test")
    steps = report.steps
    distill = next(i for i, s in enumerate(steps) if s.type == "distill")
    export = steps[distill + 1]
    assert export.type == "export" and export.inserted  # the student as trained, before quantization
    student = _accuracy(work / f"{export.index:02d}-export" / "model.onnx", x, y)
    teacher = _accuracy(work / "input" / "model.onnx", x, y)
    dr = report.metrics["distillation_ratio"]
    assert dr.value == pytest.approx(student / teacher, abs=1e-4)
    assert dr.inputs["step"] == steps[distill].index
    assert (dr.inputs["student"], dr.inputs["teacher"]) == (pytest.approx(student, abs=1e-3), pytest.approx(teacher, abs=1e-3))


def test_accuracy_retained_is_the_end_to_end_ratio(kept_run) -> None:
    report, work = kept_run
    x, y = digits("test")
    out = _accuracy(Path(report.files["model"]), x, y)
    inp = _accuracy(work / "input" / "model.onnx", x, y)
    assert report.metrics["accuracy_retained"].value == pytest.approx(out / inp, abs=1e-9)


def test_step_weights_count_like_the_report(kept_run) -> None:
    report, _ = kept_run
    first = report.steps[0]
    assert first.params_before == report.input.weights  # torch count of the input == ONNX count of its export
    assert report.steps[-1].params_after == report.output.weights


def test_torch_weight_count_covers_every_weighted_layer(tmp_path: Path) -> None:
    """Embedding, LSTM, attention and ConvTranspose weights count; biases and norm scales do not —
    the same total as the ONNX count of the export."""
    from optimize.inspect_onnx import weight_stats

    class Seq(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(50, 16)
            self.lstm = torch.nn.LSTM(16, 24, batch_first=True)
            self.norm = torch.nn.LayerNorm(24)
            self.att = torch.nn.MultiheadAttention(24, 4, batch_first=True)
            self.up = torch.nn.ConvTranspose1d(24, 6, 3)
            self.head = torch.nn.Linear(6, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h, _ = self.lstm(self.emb(x))
            h = self.norm(h)
            h, _ = self.att(h, h, h)
            return self.head(self.up(h.transpose(1, 2)).mean(-1))

    m = Seq().eval()
    expected = 50 * 16 + 4 * 24 * (16 + 24) + 3 * 24 * 24 + 24 * 24 + 24 * 6 * 3 + 6 * 5
    assert torch_weight_count(m) == expected
    path = tmp_path / "seq.onnx"
    torch.onnx.export(m, (torch.randint(0, 50, (2, 7)),), str(path), dynamo=False, opset_version=17)
    assert weight_stats(path).total == expected


def test_masked_prune_measures_macs_before_and_after(ctx) -> None:
    """Magnitude pruning keeps every shape, so the MACs are the dense layers' both before and after,
    each measured on its own module (masks baked in: Torch-Pruning's counter misses parametrized
    layers and once reported 1,282 MACs here for 17,794)."""
    from optimize.handle import ModelHandle, TensorSpec
    from passes.prune import PruneConfig, PrunePass

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 4))
    handle = ModelHandle(form="torch", inputs=[TensorSpec("x", ("batch", 64))], outputs=["y"], module=module)
    res = PrunePass(PruneConfig(sparsity=0.8)).run(handle, ctx)
    dense = 64 * 256 + 256 * 4  # multiply-accumulates of both Linear layers per sample (Torch-Pruning's count)
    assert res.metrics["macs_before"] >= dense and res.metrics["macs_after"] == res.metrics["macs_before"]
