"""bench/run.py's pieces that do not need minutes: the phase timer, the tool-time table (phases,
passes, nested phases, the remainder) and the Markdown rendering of rows without a number."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import report as md  # noqa: E402
from bench.run import PhaseTimer, tool_time_rows  # noqa: E402
from optimize.report import ModelFacts, Report, Step  # noqa: E402


def _report(steps: list[Step]) -> Report:
    return Report(tool={"name": "optimize", "version": "t"}, status="ok", started_at="2025-01-01T00:00:00Z",
                  seconds=1.0, seed=0, config={}, environment={}, hardware={}, input=ModelFacts(form="onnx"),
                  steps=steps)


def test_phase_timer_orders_and_nests_phases():
    t = PhaseTimer()
    t.start("baseline", "export the input model", None)
    time.sleep(0.01)
    t.finish("baseline")
    t.start("pipeline", "pipeline", 2)
    t.start("calibrate", "calibration", 8)
    t.advance("calibrate")
    t.finish("calibrate")
    t.finish("pipeline")
    t.start("verify", "verify", None)
    t.finish("verify")
    t.finish("never-started")  # ignored
    by = {p["key"]: p for p in t.phases}
    assert set(by) == {"baseline", "pipeline", "calibrate", "verify"}
    assert by["calibrate"]["inside_pass"] and not by["verify"]["inside_pass"] and not by["baseline"]["inside_pass"]
    assert by["baseline"]["seconds"] >= 0.01

    steps = [Step(index=1, type="quantize", config={}, form_in="onnx", form_out="onnx", seconds=0.5,
                  params_before=10, params_after=10)]
    rows = tool_time_rows(_report(steps), t, wall=2.0)
    names = [r["pass"] for r in rows]
    assert names[0] == "export the input model"
    assert names[1] == "quantize" and names[2] == "↳ inside it: calibration"
    assert names[3] == "verify"
    rest = rows[-2]
    accounted = by["baseline"]["seconds"] + by["verify"]["seconds"] + 0.5
    assert rest["seconds"] == pytest.approx(2.0 - accounted)  # nested phases are not counted twice
    assert rows[-1]["seconds"] == 2.0 and "total" in rows[-1]["pass"]


def test_speed_table_renders_rows_without_sizes_or_iqr():
    rows = [
        {"variant": "FP32 ONNX", "median_ms": 2.0, "speedup": 1.0, "speedup_iqr": [1.0, 1.0], "size_mb": 1.0,
         "size_ratio": 1.0, "cosine": 1.0},
        {"variant": "torch eager FP32 (separate run, not interleaved)", "median_ms": 4.0, "speedup": 0.5,
         "speedup_iqr": [None, None], "size_mb": None, "size_ratio": None, "cosine": None},
        {"variant": "broken", "error": "RuntimeError: x"},
    ]
    lines = md.RENDER["speed"](rows)
    assert lines[3] == "| torch eager FP32 (separate run, not interleaved) | 4.000 | 0.50x | — | — | — | — |"
    assert "**error**" in lines[4]
