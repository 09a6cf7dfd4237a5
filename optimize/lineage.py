"""A run's lineage: what the pipeline has done so far, kept while it runs.

The engine fills it step by step; measurement reads it for the report, a failure report is built
from whatever it holds when the run stops, and under torchrun rank 0 tells the waiting ranks how the
run ended only once every pass is done.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from optimize.report import Step


@dataclass
class Lineage:
    # one record per executed step (config, forms, seconds, weights before/after, metrics, notes)
    steps: list[Step] = field(default_factory=list)
    # the input model's facts (model_facts of the FP32 ONNX baseline, `path` = the given model)
    input_facts: dict[str, Any] | None = None
    # every pass has run (the other torchrun ranks wait for the outcome only after this)
    passes_done: bool = False
