"""export: torch → ONNX (dynamic batch axis), with the exporter and opset recorded.

`exporter: auto` on a transformers model builds several exports (TorchScript with eager attention,
the same with ONNX Runtime's transformer fusion, dynamo), checks each against torch, times them on
this machine at the measured batch and sequence length (as int8 when a quantize pass follows)
and keeps the fastest (optimize/export_candidates.py); on other models it takes the first exporter
that works (dynamo, then TorchScript).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from optimize.pass_api import Pass, PassConfig


class ExportConfig(PassConfig):
    type: Literal["export"] = Field("export", description="Pass name: export")
    opset: int | None = Field(None, ge=13, le=23, description="ONNX opset (default: output.opset).")
    exporter: Literal["auto", "dynamo", "torchscript", "genai-builder"] | None = Field(
        None, description="torch.onnx exporter (default: output.exporter). genai-builder: a decoder LLM only, "
        "ONNX Runtime GenAI's model builder's fused FP32 graph (needs the [llm] extra); auto on a decoder measures "
        "it against the TorchScript export and keeps the faster (docs/llm.md)."
    )


class ExportPass(Pass):
    name = "export"
    summary = "torch → ONNX with a dynamic batch axis; exporter and opset recorded (auto: transformers measured)"
    config_cls = ExportConfig
    accepts = frozenset({"torch"})
    produces_onnx = True

    def check(self, plan):  # type: ignore[no-untyped-def]
        from optimize.errors import ConfigError

        if self.config.exporter == "genai-builder" and plan.config.model.task != "text-generation":
            raise ConfigError("exporter genai-builder makes decoder LLM graphs (model.task: text-generation); "
                              "use auto, dynamo or torchscript", key=f"{plan.key}.exporter")

    def run(self, model, ctx):  # type: ignore[no-untyped-def]
        from optimize.errors import PassError
        from optimize.export import ExportError, export_to_onnx
        from optimize.export_candidates import transformer_config
        from optimize.pass_api import PassResult

        out = ctx.config.output
        path = ctx.step_dir(self.name) / "model.onnx"
        opset = self.config.opset or out.opset
        exporter = self.config.exporter or out.exporter
        metrics: dict[str, Any] = {}
        notes: list[str] = []
        if ctx.config.model.task == "text-generation":
            return _export_decoder(model, opset, exporter, ctx)
        try:
            if exporter == "auto" and transformer_config(model) is not None:
                handle, metrics["export_choice"] = _measured_export(model, path, opset, ctx)
                notes.append(choice_note(metrics["export_choice"]))
            else:
                handle = export_to_onnx(model, path, opset=opset, exporter=exporter)
        except ExportError as exc:
            raise PassError(self.name, str(exc)) from None
        return PassResult(handle, {"exporter": handle.exporter, "opset": handle.opset, **metrics}, notes)


def _export_decoder(model: Any, opset: int, exporter: str, ctx: Any) -> Any:
    """A decoder LLM: one graph for prefill and decode with its KV cache — the TorchScript export
    (the FP32 baseline's graph, its file reused) or the model builder's fused graph, measured under
    `auto` (optimize.llm.export_choice)."""
    from optimize.errors import PassError
    from optimize.export import ExportError
    from optimize.llm.export_choice import choice_note, export_decoder
    from optimize.pass_api import PassResult

    try:
        handle, record = export_decoder(model, ctx.step_dir("export"), opset, exporter, ctx)
    except ExportError as exc:
        raise PassError("export", str(exc)) from None
    ctx.serving_dir = handle.onnx_path.parent
    metrics = {"exporter": handle.exporter, "opset": handle.opset, "kv_cache": True, "export_choice": record}
    return PassResult(handle, metrics, [choice_note(record)])


def choice_note(record: dict[str, Any]) -> str:
    """One line for the report: what was kept, and why each other candidate lost."""
    shape = "×".join(str(d) for d in next(iter(record["shape"].values()), []))
    lost = "; ".join(f"{c['name']}: {c['status']}" + (f" ({c['nodes']} nodes)" if c.get("nodes") else "")
                     for c in record["candidates"] if c["name"] != record["chosen"])
    kept = next(c for c in record["candidates"] if c["name"] == record["chosen"])
    return (f"exporter auto kept {record['chosen']} ({kept['nodes']} nodes, {kept['latency_ms']} ms median), timed as "
            f"{record['timed_as']} at {shape}, {record['threads']} threads, in {record['seconds']} s; {lost}")


def _measured_export(model: Any, path: Any, opset: int, ctx: Any) -> tuple[Any, dict[str, Any]]:
    from optimize.export_candidates import MAX_ROUNDS, choose_export
    from optimize.handed_out import handed_out

    m = ctx.config.measure
    ctx.progress.start("export.candidates", "export: building and timing the candidate exports", None)
    try:
        return choose_export(model, path, opset=opset, inputs=_timing_inputs(model, ctx), quant=_later_quantize(ctx),
                             threads=ctx.threads, warmup=min(m.warmup, 3), repeat=min(m.repeat, MAX_ROUNDS),
                             device=_ort_device(ctx.device),
                             handed_out=lambda p, f: handed_out(p, f, ctx.config.output, ctx.device))
    finally:
        ctx.progress.finish("export.candidates")


def _timing_inputs(model: Any, ctx: Any) -> dict[str, Any]:
    """One batch at measure.batch, as the final measurement takes it: eval data when there is
    enough, else random inputs from the input spec."""
    import numpy as np

    batch = ctx.config.measure.batch
    ds = ctx.data("eval") if ctx.config.data.eval is not None else None
    if ds is not None and len(ds) >= batch:
        return ds.take(batch).inputs
    ctx.resolve_shapes_from_data()
    rng = np.random.default_rng(ctx.seed)
    return {s.name: s.random(batch, rng) for s in (ctx.inputs or model.inputs)}


def _later_quantize(ctx: Any) -> Any:
    """The dynamic int8 settings of the pipeline's int8 quantize pass (None when there is none:
    candidates are timed in float). Static and auto formats are ranked by their dynamic form."""
    from optimize.export_candidates import QuickQuant

    for cfg in ctx.config.passes:
        if getattr(cfg, "type", None) != "quantize" or getattr(cfg, "bits", 8) != 8 \
                or getattr(cfg, "mode", None) == "weight_only":
            continue
        resolved = cfg.resolved() if callable(getattr(cfg, "resolved", None)) else cfg
        return QuickQuant(per_channel=bool(resolved.per_channel), reduce_range=bool(resolved.reduce_range),
                          weight_type=str(resolved.weight_type))
    return None


def _ort_device(device: str) -> str:
    """Where the candidates are timed: where the final measurement runs them (CUDA when asked for
    and ONNX Runtime has its provider, else the CPU)."""
    if device != "cuda":
        return "cpu"
    import onnxruntime as ort

    return "cuda" if "CUDAExecutionProvider" in ort.get_available_providers() else "cpu"
