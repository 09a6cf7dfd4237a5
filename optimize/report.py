"""The report: a plain data object built from the lineage and the measurements.

JSON (versioned; `Report.model_json_schema()` is its published schema), Markdown
(optimize/report_md.py) and the terminal table (cli/render.py) are three renderings of the same object. Every metric carries its
value, its formula as text and its inputs; anything not measured is `null` with a reason.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from optimize.diagnose import Diagnostics

REPORT_SCHEMA_VERSION = 1


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Metric(_M):
    value: float | None = Field(description="The measured value, or null when not measured.")
    formula: str = Field(description="How the value is computed, as text.")
    inputs: dict[str, Any] = Field(default_factory=dict, description="The numbers the formula used.")
    reason: str | None = Field(None, description="Why the value is null (or a caveat).")
    interval: list[float] | None = Field(
        None, min_length=2, max_length=2,
        description="Speed ratios: [low, high], the 95% percentile-bootstrap interval of the median of the "
        "interleaved per-round ratios (inputs.round_ratios).",
    )
    verdict: Literal["faster", "slower", "no measurable change"] | None = Field(
        None, description="Speed ratios: faster when interval[0] > 1 + tolerance, slower when interval[1] < "
        "1 − tolerance, else no measurable change.",
    )
    tolerance: float | None = Field(None, description="Speed ratios: the band around 1 the verdict uses (0.03 = ±3%).")

    @classmethod
    def missing(cls, formula: str, reason: str) -> Metric:
        return cls(value=None, formula=formula, inputs={}, reason=reason)


class Latency(_M):
    median_ms: float
    p90_ms: float
    min_ms: float
    runs: int
    warmup: int
    batch: int
    threads: int
    runtime: str
    device: str
    calls_per_sample: int = Field(1, description="Calls timed together per sample (sub-millisecond models).")


class ModelFacts(_M):
    path: str | None = None
    form: str
    sha256: str | None = None
    bytes: int | None = None
    weights: int | None = Field(None, description="Weights of weighted ops (see docs/report.md).")
    nonzero_weights: int | None = None
    weight_bits: int | None = Field(None, description="Σ bits per weight × count.")
    weight_dtypes: dict[str, int] = Field(default_factory=dict)
    ops: dict[str, int] = Field(default_factory=dict, description="Op counts by type, subgraphs included.")
    exporter: str | None = None
    opset: int | None = None


class Step(_M):
    index: int = Field(description="1-based position among the executed steps.")
    pass_index: int | None = Field(None, description="Index in the config's `passes:` list (null for inserted steps).")
    type: str
    config: dict[str, Any]
    form_in: str
    form_out: str
    seconds: float
    params_before: int | None = Field(
        None, description="Weights before the step, counted like input/output `weights`: every weight of a weighted op "
        "(torch form: every parameter with two or more dimensions; biases and norm scales are not weights).",
    )
    params_after: int | None = Field(None, description="Weights after the step, counted like params_before.")
    metrics: dict[str, Any] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)
    inserted: bool = Field(False, description="True when the pipeline inserted this step (e.g. an export).")
    trains: bool = Field(False, description="True when the step's pass trains the torch model (distill): its "
                         "`student_accuracy` is the trained student's.")
    sparsifies: bool = Field(False, description="True when the step's pass removes or zeroes weights (prune): its "
                             "`metrics.layers` is the per-layer table of the report's sparsity chart.")
    cached: bool = Field(
        False, description="True when this step's output was reused from the pass cache (not recomputed); see docs/reliability.md."
    )


class Gate(_M):
    name: str
    limit: float
    value: float | None
    passed: bool
    message: str


class Report(_M):
    schema_version: int = REPORT_SCHEMA_VERSION
    tool: dict[str, str]
    status: Literal["ok", "gate_failed", "failed"]
    error: str | None = None
    started_at: str
    seconds: float
    peak_rss_mb: float | None = Field(
        None, description="Peak resident memory of the run's process in MB (getrusage ru_maxrss, imports included; "
        "null where the platform has no resource module)."
    )
    seed: int
    config: dict[str, Any]
    environment: dict[str, Any]
    hardware: dict[str, Any]
    input: ModelFacts
    output: ModelFacts | None = None
    steps: list[Step] = Field(default_factory=list)
    metrics: dict[str, Metric] = Field(default_factory=dict)
    latency: dict[str, Latency] = Field(
        default_factory=dict, description="Keys: input, output (configured threads), input_1t, output_1t."
    )
    gates: list[Gate] = Field(default_factory=list)
    findings: list[str] = Field(default_factory=list, description="Warnings and explanations worth reading.")
    diagnostics: Diagnostics | None = Field(
        None, description="Why is it (not) faster: kernels in the file and in ONNX Runtime's optimized graph, a "
        "kernel-time profile, unfused Q/DQ, and the likely causes of a slowdown (null when the run failed earlier)."
    )
    files: dict[str, str] = Field(default_factory=dict, description="What was written: model, report, markdown.")

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)


# Order and labels used by every rendering.
METRIC_ORDER = [
    "accuracy",
    "speedup",
    "parallel_speedup",
    "gpu_speedup",
    "sparsity",
    "density",
    "params_removed",
    "effective_sparsity",
    "quantization_ratio",
    "compression_ratio",
    "distillation_ratio",
    "accuracy_retained",
    "parity",
    "prefill_speedup",  # decoder LLMs (optimize/llm/llm_metrics.py)
    "decode_speedup",
    "token_agreement",
    "perplexity_ratio",
    "memory_ratio",
]


def format_value(key: str, m: Metric) -> str:
    if m.value is None:
        return "null"
    if key == "accuracy":
        i = m.inputs
        if i.get("metric") == "embedding_cosine":
            return f"embedding cosine mean {i.get('mean') or 0:.4f}, min {i.get('min') or 0:.4f} ({i.get('samples')} samples vs input)"
        return f"{i.get('optimized', 0):.2f}% (baseline {i.get('baseline', 0):.2f}%, drop {i.get('drop', 0):+.2f} pts)"
    if key == "parity":
        i = m.inputs
        if i.get("compared_by") == "agreement":  # integer/bool outputs only: share of equal elements
            return f"agreement {m.value:.5f}"
        diff = i.get("max_abs_diff")
        text = f"min cos {m.value:.5f}, max |Δ| {diff if diff is not None else float('nan'):.3g}"
        if i.get("agreement") is not None:
            text += f", agreement {i['agreement']:.5f}"
        if str(i.get("evidence", "")).startswith("weak"):
            text += " (weak evidence: random token ids)"
        return text
    if key.endswith("speedup"):
        from optimize.speed import format_ratio

        return format_ratio(m.value, m.interval, m.verdict)
    if key == "compression_ratio":
        return f"{m.value:.2f}x"
    return f"{m.value:.4f}"


def metric_note(m: Metric) -> str:
    """The note beside a metric: its reason, and for a speed ratio the rounds it took."""
    note = m.reason or ""
    rounds, configured = m.inputs.get("runs"), m.inputs.get("rounds_configured")
    if m.interval is not None and rounds:
        extra = f" ({configured} configured; more added while the interval was undecided)" if configured and rounds > configured else ""
        note = (note + "; " if note else "") + f"{rounds} interleaved rounds{extra}, tolerance ±{(m.tolerance or 0):.0%}"
    line = m.inputs.get("reference_line")  # e.g. a decoder's torch eager tokens/s beside the ONNX ratio
    if line:
        note = (note + "; " if note else "") + str(line)
    return note
