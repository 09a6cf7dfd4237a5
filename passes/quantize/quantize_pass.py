"""The quantize pass: planning checks, the torch route (quantization-aware training, materialized after
export) and the ONNX route (fuse → prepare → ONNX Runtime's `quant_pre_process` → a fixed format,
`format: auto`, or weight-only → counts of what became integer)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optimize.pass_api import Pass
from passes.quantize import ort
from passes.quantize.config import QuantizeConfig, calibration_refusal

if TYPE_CHECKING:
    from optimize.context import PlanContext, RunContext
    from optimize.handle import ModelHandle
    from optimize.pass_api import PassResult
    from passes.quantize.job import Job

class QuantizePass(Pass):
    name = "quantize"
    summary = (
        "int8 with ONNX Runtime's quantizers: dynamic, or static calibrated (QDQ / QOperator), format auto "
        "(measured candidates), int4 weight-only, binary/ternary weights (int8 codes); "
        "before distill, quantization-aware training on ORT's exact weight grid"
    )
    config_cls = QuantizeConfig
    accepts = frozenset({"torch", "onnx"})
    cacheable = True
    measure_range = False  # reduce_range auto resolved on (no VNNI): build both weight ranges, keep the closer

    # ------------------------------------------------------------------ planning

    def form_for(self, current, later_passes):  # type: ignore[no-untyped-def]
        if current == "torch" and any(getattr(p, "trains", False) for p in later_passes):
            return "torch"  # quantization-aware training: simulate now, materialize after export
        return "onnx"

    def defers(self, form):  # type: ignore[no-untyped-def]
        return form == "torch"

    def cache_exclusion(self) -> str | None:
        if getattr(self.config, "format", None) == "auto":
            return "quantize chooses its format from measured latency (not deterministic)"
        if getattr(self.config, "prefill", None) == "auto":
            return "quantize chooses its prompt path from measured latency (not deterministic)"
        return None

    def cache_inputs(self, config):  # type: ignore[no-untyped-def]
        # per_token auto measures token outliers, smooth_alpha auto simulates per-call int8, in batches of measure.batch
        reads_batch = getattr(self.config, "per_token", None) == "auto" or getattr(self.config, "smooth_alpha", None) == "auto"
        return {"measure.batch": config.measure.batch} if reads_batch else {}

    def check(self, plan: PlanContext) -> None:
        from optimize.errors import ConfigError

        cfg = self.config
        assert isinstance(cfg, QuantizeConfig)
        key = f"{plan.key}.quantize"
        from passes.quantize import llm

        llm.check(cfg, plan.config.model.task, key, plan.config.data.eval)  # decoder LLMs: their own route (passes/quantize/llm.py)
        if plan.config.model.task == llm.TASK:
            return
        if plan.form_at_pass == "torch":  # quantization-aware training before distill
            if cfg.format == "auto":
                raise ConfigError(
                    "format auto measures finished ONNX candidates; with quantization-aware training (quantize "
                    "before distill) choose the format (qdq or qoperator) and mode", key=f"{key}.format",
                )
            if cfg.mode == "weight_only" or cfg.fusion != "none":
                field = "mode" if cfg.mode == "weight_only" else "fusion"
                raise ConfigError(
                    f"{field} {getattr(cfg, field)} applies to ONNX models; quantization-aware training (quantize "
                    "before distill) simulates int8 dynamic/static", key=f"{key}.{field}",
                )
        # format auto without an explicit mode tries static only when it can calibrate
        needs_static = cfg.mode == "static" and (cfg.format != "auto" or "mode" in cfg.model_fields_set)
        # (QAT re-calibrates on the pipeline's data; an input quantized already is handed back)
        if needs_static and plan.form_at_pass == "onnx":
            reason = calibration_refusal(cfg, plan.config, list(getattr(plan.model, "inputs", None) or []),
                                         plan.has_input_spec)
            if reason is not None and not _hands_back_input(plan):  # reads the model: only when refusing
                raise ConfigError(reason, key=f"{key}.mode")
        data = plan.config.data
        if cfg.smooth_alpha is not None and data.calibration is None and data.train is None and data.eval is None:
            raise ConfigError(
                "smooth_alpha measures each input channel's range on the user's data: set data.calibration (or "
                "data.train / data.eval), or remove smooth_alpha", key=f"{key}.smooth_alpha",
            )
        if cfg.mode == "static" and cfg.activation_type == "int8" and cfg.weight_type == "uint8":
            raise ConfigError(
                "ONNX Runtime does not support int8 activations with uint8 weights; use weight_type: int8",
                key=f"{key}.weight_type",
            )

    # ------------------------------------------------------------------ running

    def run(self, model: ModelHandle, ctx: RunContext) -> PassResult:
        from passes.quantize import llm

        if ctx.config.model.task == llm.TASK:
            assert isinstance(self.config, QuantizeConfig)
            return llm.run(self.config, model, ctx, self.name)
        if model.form == "torch":
            from passes.quantize.qat import qat_result

            cfg = self.config
            assert isinstance(cfg, QuantizeConfig)
            return qat_result(model, cfg.resolved(), self.name)
        return self._quantize_onnx(model, ctx, after_qat=False)

    def finalize(self, model: ModelHandle, ctx: RunContext) -> PassResult:
        result = self._quantize_onnx(model, ctx, after_qat=True)
        pending = list(result.model.pending)
        for i, (name, _) in enumerate(pending):
            if name == self.name:
                del pending[i]
                break
        result.model = result.model.replace(pending=pending)
        return result

    def _quantize_onnx(self, model: ModelHandle, ctx: RunContext, after_qat: bool) -> PassResult:
        from optimize import onnx_io
        from optimize.errors import PassError
        from optimize.pass_api import PassResult
        from passes.quantize.report import (
            already_quantized,
            base_metrics,
            describe_result,
            nothing_quantized,
            unmatched_exclusions,
        )

        cfg = self.config
        assert isinstance(cfg, QuantizeConfig)
        cfg = cfg.resolved()
        if model.onnx_path is None:
            raise PassError(self.name, "expected an ONNX model")
        src = Path(model.onnx_path)
        step = ctx.step_dir(self.name)
        notes: list[str] = []
        metrics = base_metrics(cfg, after_qat)
        held = None if after_qat else already_quantized(src)  # after QAT: the fake-quant model to materialize
        if held:
            notes.append(f"{held}: quantizing it again is not done; the input model is handed back unchanged")
            describe_result(cfg, src, src, after_qat, metrics, notes)
            return PassResult(model, metrics, notes)
        # after QAT the weights were trained on the resolved range's grid: quantizing to another undoes that
        self.measure_range = self.config.reduce_range == "auto" and cfg.reduce_range and not after_qat
        ctx.progress.start(f"{self.name}.prepare", "preparing the model for the quantizer", None)
        try:
            job, fused = self._prepare(cfg, src, step, ctx, metrics, notes)
        finally:
            ctx.progress.finish(f"{self.name}.prepare")
        notes.extend(unmatched_exclusions(cfg, job.qin, bool(metrics.get("rewrites", {}).get("applied"))))
        quiet = logging.getLogger()
        old_level = quiet.level
        quiet.setLevel(max(old_level, logging.ERROR))  # the quantizers warn through the root logger
        try:
            with warnings.catch_warnings():
                # numpy's overflow warnings inside the quantizer's scale arithmetic printed a bare
                # source line ("zero_point = numpy.array(...)") on the user's terminal (MiniLM, auto)
                warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"onnxruntime\.quantization")
                final = self._route(job, model, fused, step / "model.onnx", metrics, notes)
        finally:
            quiet.setLevel(old_level)
            _cleanup(step, keep=("model.onnx", "model.onnx.data"))
        float_chosen = metrics.get("format") == "auto" and metrics.get("mode") == "float"  # fused / rewritten
        why_none = nothing_quantized(final, src, cfg.op_types) if final != src and not float_chosen else None
        if why_none:
            notes.append(why_none)
            final = src
        if final != src:
            onnx_io.normalize_ir_version_file(final)  # the quantizer raises the opset, not the IR version
        describe_result(cfg, src, final, after_qat, metrics, notes)
        return PassResult(model.replace(onnx_path=final), metrics, notes)

    def _prepare(self, cfg: QuantizeConfig, src: Path, step: Path, ctx: RunContext, metrics: dict[str, Any],
                 notes: list[str]) -> tuple[Job, Path]:
        """Fusion (optional), then make the model quantizable, then ONNX Runtime's pre-processing."""
        from optimize import onnx_io
        from optimize.memory import release_garbage
        from passes.quantize.job import Job, working_directory
        from passes.quantize.prepare import PER_CHANNEL_QDQ_OPSET, prepare

        size = onnx_io.total_bytes(src)
        large = size > onnx_io.EXTERNAL_DATA_THRESHOLD
        scratch = step / "scratch"
        fused = ort.fuse(cfg, src, step / "fused.onnx", large, metrics) if cfg.fusion != "none" else src
        rewrites = cfg.rewrite_names()
        if rewrites and not large:
            from passes.quantize.rewrites import rewritten_input

            fused = rewritten_input(fused, step, rewrites, ctx, metrics, notes)
        per_channel_qdq = cfg.per_channel and (cfg.mode == "static" or cfg.format == "auto")
        prepared = step / "prepared.onnx"
        info = prepare(fused, prepared, min_opset=PER_CHANNEL_QDQ_OPSET if per_channel_qdq else None, large=large)
        release_garbage(size)  # the onnx-ir model prepare() built: a whole copy of the weights, in reference cycles
        metrics["prepare"] = info.metrics()
        notes.extend(info.notes)
        job = Job(cfg, ctx, src, prepared, scratch, large)
        if per_channel_qdq and info.opset_to is None and _opset(prepared) < PER_CHANNEL_QDQ_OPSET and cfg.mode == "static":
            job.cfg = cfg.model_copy(update={"per_channel": False})
            notes.append(f"per-tensor weights: per-channel QDQ needs opset {PER_CHANNEL_QDQ_OPSET} and the opset "
                         "could not be converted")
        with working_directory(scratch):
            job.qin = ort.preprocess(prepared, step / "preprocessed.onnx", large, notes)
        release_garbage(size)  # ONNX Runtime's shape inference leaves its copy of the model in reference cycles
        metrics["preprocessed"] = job.qin != prepared
        return job, fused

    def _route(self, job: Job, model: ModelHandle, fused: Path, out: Path, metrics: dict[str, Any],
               notes: list[str]) -> Path:
        from optimize.errors import OptimizeError, PassError
        from passes.quantize.fallback import fixed_with_fallback
        from passes.quantize.job import working_directory
        from passes.quantize.search import run_auto

        cfg = job.cfg
        try:
            if cfg.mode == "weight_only":
                with working_directory(job.scratch):
                    ort.weight_only(cfg, job.qin, out, job.large, metrics, notes)
                return out
            if cfg.format == "auto":
                return run_auto(job, model.inputs, fused, out, metrics, notes)
            repair = job.quantize(cfg, out, metrics, notes)
            _report_repair(repair, metrics, notes)
            if self.measure_range and cfg.mode in ("dynamic", "static"):
                from passes.quantize.range_choice import choose_weight_range

                choose_weight_range(job, out, metrics, notes)
            elif self.measure_range:
                notes.append("reduce_range auto: 7-bit weights (no VNNI on this CPU, where ONNX Runtime's u8s8 "
                             "kernels can saturate)")
            return fixed_with_fallback(job, out, metrics, notes)
        except OptimizeError:  # PassError, DataError: already say what is wrong
            raise
        except Exception as exc:
            job.ctx.log.debug("quantization failed", exc_info=True)
            raise PassError(self.name, f"ONNX Runtime's quantizer failed: {ort.first_line(exc)}") from exc


def _report_repair(repair: Any, metrics: dict[str, Any], notes: list[str]) -> None:
    metrics["repair_float_nodes"] = list(repair.float_nodes)
    if repair.float_nodes:
        notes.append(
            f"kept {len(repair.float_nodes)} node(s) in float because ONNX Runtime's quantizer failed on them or its "
            f"output did not load: {'; '.join(repair.reasons)}"
        )


def _opset(path: Path) -> int:
    import onnx

    from passes.quantize.prepare import default_opset

    return default_opset(onnx.load(str(path), load_external_data=False))


def _cleanup(step: Path, keep: tuple[str, ...]) -> None:
    """Remove the step's intermediate files (prepared, pre-processed, fused, scratch), keep the result."""
    import shutil

    for f in step.iterdir():
        if f.name in keep:
            continue
        if f.is_dir():
            shutil.rmtree(f, ignore_errors=True)
        else:
            f.unlink(missing_ok=True)


def _hands_back_input(plan: PlanContext) -> bool:
    """True when this step sees the input file (or its graph-optimized form: ONNX Runtime's graph
    optimizations keep integer ops) and that file is quantized already: the run hands it back
    unchanged, so static mode needs no calibration data."""
    from passes.quantize.report import already_quantized

    path = getattr(plan.model, "onnx_path", None)
    only_graph = all(getattr(p, "name", None) == "graph" for p in plan.earlier)
    return only_graph and plan.input_form == "onnx" and path is not None and already_quantized(Path(path)) is not None
