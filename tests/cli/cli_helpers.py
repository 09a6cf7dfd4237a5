"""Shared helpers for the command-line tests: config texts, a report builder and a fake pipeline.

The fake pipeline stands in for `optimize.pipeline` (plan/run) so the CLI's contract (exit codes,
stdout/stderr discipline, option mapping) is tested in milliseconds without torch.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `pytest` without an installed package
    sys.path.insert(0, str(ROOT))

from optimize.report import Gate, Latency, Metric, ModelFacts, Report, Step  # noqa: E402

GOOD_YAML = """\
schema_version: 1
passes:
  - type: prune
  - type: quantize
    bits: 8
    random_calibration: true
"""

BAD_YAML = """\
schema_version: 1
passes:
  - type: quantize
    bits: 3
"""


def make_report(status: str = "ok", gates: list[Gate] | None = None) -> Report:
    return Report(
        tool={"name": "optimize", "version": "0.1.0"},
        status=status,  # type: ignore[arg-type]
        started_at="2025-01-01T00:00:00Z",
        seconds=1.5,
        seed=0,
        config={"schema_version": 1, "hardware": {"device": "cpu"}, "passes": [{"type": "prune"}]},
        environment={"torch": "2.6", "onnx": "1.17"},
        hardware={"cpu": "Test CPU [x86]", "cores": 4, "isa": ["avx2"], "gpu": None},
        input=ModelFacts(path="in/model.onnx", form="onnx", bytes=4_000_000, weights=1_000_000),
        output=ModelFacts(path="out/model.opt.onnx", form="onnx", bytes=1_000_000, weights=1_000_000),
        steps=[
            Step(index=0, type="prune", config={}, form_in="onnx", form_out="onnx", seconds=0.5, params_before=10, params_after=5),
            Step(index=1, type="export", config={}, form_in="torch", form_out="onnx", seconds=0.1, inserted=True),
        ],
        metrics={
            "speedup": Metric(value=0.82, formula="input latency / output latency", inputs={}),
            "sparsity": Metric(value=0.5, formula="zero weights / total weights", inputs={}),
            "gpu_speedup": Metric.missing("CPU latency / GPU latency", "no GPU [cuda] present"),
        },
        latency={
            "input": Latency(median_ms=1.0, p90_ms=1.2, min_ms=0.9, runs=30, warmup=5, batch=1, threads=4, runtime="onnxruntime", device="cpu"),
        },
        gates=gates or [],
        findings=["quantized model is slower than its float input [check VNNI]"],
        files={"model": "out/model.opt.onnx", "report": "out/model.opt.report.json"},
    )


FAILED_GATE = Gate(name="min_speedup", limit=1.0, value=0.82, passed=False, message="speedup below limit")
PASSED_GATE = Gate(name="min_sparsity", limit=0.4, value=0.5, passed=True, message="ok")


@dataclass
class FakeStep:
    index: int | None
    type: str
    form_in: str
    form_out: str
    inserted: bool = False


@dataclass
class FakePlan:
    config: Any
    config_dump: dict[str, Any]
    steps: list[FakeStep]
    model: str
    output_path: Path
    report_path: Path


class FakePipeline(types.ModuleType):
    """Records the RunOptions it gets; `behaviour` decides what `run` does."""

    def __init__(self) -> None:
        super().__init__("optimize.pipeline")
        self.calls: list[tuple[str, Any]] = []
        self.behaviour: Any = make_report()

    def default_config_path(self) -> Path:
        return ROOT / "configs" / "default.yaml"

    def plan(self, opts: Any) -> FakePlan:
        self.calls.append(("plan", opts))
        if isinstance(self.behaviour, BaseException):
            raise self.behaviour
        dump = {"schema_version": 1, "seed": opts.seed or 0, "passes": [{"type": "prune", "sparsity": 0.5}]}
        return FakePlan(
            config=None,
            config_dump=dump,
            steps=[
                FakeStep(0, "prune", "torch", "torch"),
                FakeStep(None, "export", "torch", "onnx", inserted=True),
            ],
            model=opts.model or "builtin:example",
            output_path=Path("out/model.opt.onnx"),
            report_path=Path("out/model.opt.report.json"),
        )

    def run(self, opts: Any) -> Report:
        self.calls.append(("run", opts))
        print("noise a library printed to stdout")  # must not reach stdout
        opts.progress.start("distill", "epoch", 2)
        opts.progress.advance("distill", 1, info="loss 0.5")
        opts.progress.advance("distill", 1, info="loss 0.25")
        opts.progress.finish("distill")
        b = self.behaviour
        if isinstance(b, BaseException):
            raise b
        if callable(b):
            return b(opts)
        return b
