"""Which FP32 graph a decoder's export step hands on.

- `torchscript`: the KV-cache export (optimize.llm.export) — the same graph as the FP32 baseline,
  whose file it reuses;
- `genai-builder`: ONNX Runtime GenAI's model builder's fused graph (optimize.llm.builder_export);
- `auto` (the default): both, when the builder is installed and takes the model type; the
  builder's graph must match the baseline's logits (prefill of the speed prompt and one cached
  decode step: min cosine per position ≥ `MIN_COSINE`, same top-1 token at every position), then
  both are timed in the same interleaved rounds (the speed prompt, then `NEW_TOKENS` decode steps,
  `ROUNDS` rounds, the run's threads) and the one with the shorter request time is kept. The table is
  the step's `export_choice` metric. The report's speedups stay against the baseline, the plain
  TorchScript export: a fused graph's gain is part of what the pipeline did, and the table says
  how much of it the fusion alone gave.

`dynamo` on a decoder is the TorchScript export (the dynamo graph with onnxscript's fusions gained
nothing measured, docs/llm.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from optimize.export import ExportError
from optimize.handle import ModelHandle

MIN_COSINE = 0.999
ROUNDS = 3
NEW_TOKENS = 64
BUILDER = "genai-builder"
TORCHSCRIPT = "torchscript"


def export_decoder(handle: ModelHandle, step_dir: Path, opset: int, exporter: str, ctx: Any) -> tuple[ModelHandle, dict]:
    """The chosen graph (with its serving files beside it) and a record for the step's metrics."""
    from optimize.llm.builder_export import builder_unavailable
    from optimize.llm.route import baseline_path, export_handle

    lm = handle.module
    why_not = builder_unavailable(str(lm.config.model_type))
    if exporter == BUILDER:
        if why_not:
            raise ExportError(f"exporter {BUILDER}: {why_not}")
        built = _builder_graph(handle, step_dir / BUILDER / "model.onnx", ctx)
        return built, {"chosen": BUILDER, "parity": built_parity(ctx, built, _speed_prompt(ctx))}
    plain = export_handle(handle, step_dir / TORCHSCRIPT / "model.onnx", opset, reuse=baseline_path(ctx.work_dir))
    if exporter != "auto":
        return plain, {"chosen": TORCHSCRIPT}
    rows = [{"name": TORCHSCRIPT, "status": "ok"}]
    if why_not:
        rows.append({"name": BUILDER, "status": f"skipped: {why_not}"})
        return plain, {"chosen": TORCHSCRIPT, "candidates": rows}
    prompt = _speed_prompt(ctx)
    try:
        built = _builder_graph(handle, step_dir / BUILDER / "model.onnx", ctx)
        parity = built_parity(ctx, built, prompt)
    except ExportError as exc:
        rows.append({"name": BUILDER, "status": f"failed: {exc}"})
        return plain, {"chosen": TORCHSCRIPT, "candidates": rows}
    rows.append({"name": BUILDER, "status": "ok", "parity": parity})
    return _timed_choice(ctx, {TORCHSCRIPT: plain, BUILDER: built}, rows, prompt)


def _builder_graph(handle: ModelHandle, path: Path, ctx: Any) -> ModelHandle:
    from optimize.llm.builder_export import EXPORTER_NAME, export_with_builder

    ctx.progress.start("export.builder", "export with ONNX Runtime GenAI's model builder (fp32, fused)", None)
    try:
        export_with_builder(handle.module, path)
    finally:
        ctx.progress.finish("export.builder")
    return handle.replace(form="onnx", onnx_path=path, module=None, exporter=EXPORTER_NAME, opset=_opset(path))


def _opset(path: Path) -> int | None:
    """The graph's ONNX (default-domain) opset: the builder chooses its own."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def _speed_prompt(ctx: Any) -> list[int]:
    from optimize.llm.measure_run import eval_text, speed_prompt

    lm = ctx.input_model.module
    data = eval_text(ctx, lm.tokenizer)
    limit = int(getattr(lm.config, "max_position_embeddings", 0) or 256)
    return speed_prompt(data, int(lm.config.vocab_size), ctx.seed, limit)[0]


def built_parity(ctx: Any, built: ModelHandle, prompt: list[int]) -> dict[str, Any]:
    """The builder's logits against the baseline's on the speed prompt and one cached decode step;
    ExportError when they differ (see module doc)."""
    from optimize.llm.generation import OrtCausalLM
    from optimize.llm.route import baseline_path

    ref = OrtCausalLM(baseline_path(ctx.work_dir), threads=ctx.threads)
    got = OrtCausalLM(built.onnx_path, threads=ctx.threads)  # type: ignore[arg-type]
    ids = np.asarray([prompt], np.int64)
    a, b = ref.step(ids, ref.empty_cache(), 0), got.step(ids, got.empty_cache(), 0)
    nxt = np.asarray([[int(a.logits[0, -1].argmax())]], np.int64)
    a2, b2 = ref.step(nxt, a.cache, ids.shape[1]), got.step(nxt, b.cache, ids.shape[1])
    x = np.concatenate([a.logits[0], a2.logits[0]]).astype(np.float64)
    y = np.concatenate([b.logits[0], b2.logits[0]]).astype(np.float64)
    cos = (x * y).sum(-1) / np.maximum(np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1), 1e-30)
    top1 = float((x.argmax(-1) == y.argmax(-1)).mean())
    parity = {"min_cosine": round(float(cos.min()), 6), "top1_agreement": round(top1, 4), "positions": len(cos)}
    if parity["min_cosine"] < MIN_COSINE or top1 < 1.0:
        raise ExportError(f"its logits differ from the TorchScript export's (min cosine {parity['min_cosine']}, "
                          f"top-1 agreement {parity['top1_agreement']} over {len(cos)} positions)")
    return parity


def _timed_choice(ctx: Any, graphs: dict[str, ModelHandle], rows: list[dict], prompt: list[int]) -> tuple[ModelHandle, dict]:
    """Time every graph in the same interleaved rounds; keep the shortest request time."""
    from optimize.llm.generation import OrtCausalLM
    from optimize.llm.llm_metrics import measure_speed

    models = {n: OrtCausalLM(h.onnx_path, threads=ctx.threads) for n, h in graphs.items()}  # type: ignore[arg-type]
    ctx.progress.start("export.auto", f"time {len(models)} FP32 decoder graphs, {ROUNDS} interleaved rounds", None)
    speed = measure_speed(models, TORCHSCRIPT, prompt, new_tokens=NEW_TOKENS, rounds=ROUNDS, warmup=1)
    ctx.progress.finish("export.auto")
    for row in rows:
        n = row["name"]
        row.update({"request_s": round(len(prompt) / speed.prefill_tps[n] + NEW_TOKENS / speed.decode_tps[n], 4),
                    "prefill_tps": round(speed.prefill_tps[n], 1), "decode_tps": round(speed.decode_tps[n], 2)})
        if n != TORCHSCRIPT:  # ratios to the reference, with their 95% intervals
            for key, est in (("prefill", speed.prefill_ratio[n]), ("decode", speed.decode_ratio[n])):
                row[f"{key}_vs_torchscript"] = round(est.value, 3)
                row[f"{key}_vs_torchscript_interval"] = [round(est.low, 3), round(est.high, 3)]
    chosen = min(rows, key=lambda r: r["request_s"])["name"]
    record = {"chosen": chosen, "candidates": rows,
              "timed_as": f"{len(prompt)}-token prompt + {NEW_TOKENS} decode steps, {ROUNDS} interleaved rounds, "
                          f"{ctx.threads} threads"}
    return graphs[chosen], record


def choice_note(record: dict[str, Any]) -> str:
    """One line for the report."""
    chosen = record["chosen"]
    rows = record.get("candidates")
    if not rows:
        return f"decoder exported with its KV cache by {chosen}"
    kept = next(r for r in rows if r["name"] == chosen)
    others = "; ".join(f"{r['name']}: {r['status']}" + (f", {r['request_s']} s" if "request_s" in r else "")
                       for r in rows if r["name"] != chosen)
    timing = f" ({kept['request_s']} s per request" if "request_s" in kept else ""
    if "decode_vs_torchscript" in kept:
        timing += (f", decode {kept['decode_vs_torchscript']}x and prefill {kept['prefill_vs_torchscript']}x of the "
                   "TorchScript graph")
    timing += f", {record['timed_as']})" if timing else ""
    return f"exporter auto kept {chosen} for the decoder{timing}; {others}"
