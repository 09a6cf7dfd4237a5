"""One quantization job: the pass's settings, the prepared input, and the robust call every route uses
(fixed formats, `format: auto` candidates, the accuracy-aware fallback).

Every call into ONNX Runtime's quantization tools runs with the step's scratch folder as the working
directory, because they write temporary files there (`sym_shape_infer_temp.onnx`, `<uuid>.data` of the
model's size) and leave them behind when they fail.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from passes.quantize import ort
from passes.quantize.auto import DEFAULT_AUTO_FLOOR, Evaluator, Goal, weighted_layers
from passes.quantize.repair import Repair, RepairFailed, quantize_with_repair

if TYPE_CHECKING:
    from optimize.context import RunContext
    from passes.quantize.config import QuantizeConfig


@contextlib.contextmanager
def working_directory(path: Path) -> Iterator[None]:
    """Run ONNX Runtime's tools inside `path` (they litter the current directory)."""
    path.mkdir(parents=True, exist_ok=True)
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def load_error(path: Path) -> str | None:
    """Why ONNX Runtime cannot load `path` (None: it loads)."""
    import onnxruntime as ort_rt

    opts = ort_rt.SessionOptions()
    opts.log_severity_level = 3
    try:
        ort_rt.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        return str(exc).strip() or type(exc).__name__
    return None


@dataclass
class Job:
    cfg: QuantizeConfig
    ctx: RunContext
    src: Path  # the pass's float input (the reference for parity)
    qin: Path  # the prepared input the quantizers read
    scratch: Path  # working directory for ONNX Runtime's tools
    large: bool
    _evaluator: Evaluator | None = field(default=None, init=False, repr=False)

    def evaluator(self, want_accuracy: bool) -> Evaluator:
        """One Evaluator for the whole pass: its float predictions cost a full run over the eval
        inputs, and the weight-range choice and the fallback both need them."""
        if self._evaluator is None:
            self._evaluator = Evaluator(self.ctx, self.src, want_accuracy=want_accuracy)
        elif want_accuracy:
            self._evaluator.measure_accuracy()
        return self._evaluator

    def goal(self, auto: bool) -> Goal:
        gates = self.ctx.config.gates
        if self.cfg.parity_floor is not None:
            floor, why = self.cfg.parity_floor, "quantize.parity_floor"
        elif gates.min_parity_cosine is not None:
            floor, why = gates.min_parity_cosine, "gates.min_parity_cosine"
        elif auto:
            floor, why = DEFAULT_AUTO_FLOOR, "format auto's default floor"
        else:
            floor, why = None, ""
        return Goal(floor, gates.max_accuracy_drop, why)

    def calibration_refusal(self) -> str | None:
        """Why static calibration is not possible or not meaningful here (None: it is)."""
        from passes.quantize.config import calibration_refusal

        return calibration_refusal(self.cfg, self.ctx.config, list(self.ctx.inputs), bool(self.ctx.inputs))

    def variant(self, settings: dict[str, Any]) -> QuantizeConfig:
        return self.cfg.model_copy(update={**settings, "format": settings.get("format", "qdq")})

    def quantize(
        self, cfg: QuantizeConfig, out: Path, metrics: dict[str, Any] | None = None, notes: list[str] | None = None,
        include: list[str] | None = None, exclude: list[str] | None = None,
    ) -> Repair:
        """Quantize `qin` into `out` with `cfg`; nodes that break the quantizer or the result stay float."""
        metrics = {} if metrics is None else metrics
        notes = [] if notes is None else notes
        base_exclude = list(exclude or [])

        def attempt(extra: list[str]) -> None:
            with working_directory(self.scratch):
                ort.quantize_file(cfg, self.qin, out, self.ctx, self.large, metrics, notes,
                                  include=include, exclude=[*base_exclude, *extra])

        candidates = include or weighted_layers(self.qin, cfg.op_types, [*cfg.exclude_nodes, *base_exclude])
        key = f"{ort.PASS_NAME}.{cfg.mode}"
        if include is None:  # a whole-model quantization (not one layer of a sensitivity scan): say so
            self.ctx.progress.start(key, f"{cfg.mode} quantization with ONNX Runtime", None)
        try:
            return quantize_with_repair(attempt, out, self.qin, candidates, load_error)
        except RepairFailed as exc:
            from optimize.errors import PassError

            raise PassError(ort.PASS_NAME, f"ONNX Runtime's quantizer failed: {exc}") from exc
        finally:
            if include is None:
                self.ctx.progress.finish(key)

    def quantize_fn(self) -> Any:
        """`(settings, out, include=, exclude=)` → quantize with overridden settings (fallback, auto)."""

        def quantize(settings: dict[str, Any], out: Path, include: list[str] | None = None,
                     exclude: list[str] | None = None) -> None:
            self.quantize(self.variant(settings), out, include=include, exclude=exclude)

        return quantize
