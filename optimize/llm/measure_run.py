"""Verification and measurement of a decoder run (`model.task: text-generation`): the output ONNX
against the FP32 ONNX export (the baseline), through optimize.llm.llm_metrics, into the same Report
the other runs write (sizes and weights as for any model, gates through optimize.measure).

The generic random-input parity cannot feed a KV-cache graph, so verification here is the ONNX
checker, a load in ONNX Runtime and finite logits on the speed prompt.

Data: `data.eval` is a .txt file: its first `samples` (default 20) non-empty lines are the prompts
for token agreement (through the chat template when the tokenizer has one), its whole text (the
first `PPL_TOKENS` tokens) the perplexity text. Without it, token_agreement and perplexity_ratio
are null with the reason, and a gate on them fails as not measured.
Speed: a `PROMPT_TOKENS`-token prompt (the eval text's first tokens, else seeded random ids),
`NEW_TOKENS` decode steps, `DEFAULT_ROUNDS` interleaved rounds unless measure.repeat is set, at
hardware.threads, and again at 1 thread (`inputs.one_thread`) when measure.single_thread is on.
The float torch model runs the same rounds as a reference line (`inputs.torch_eager`: its tokens/s
and its ratio to the FP32 ONNX model; optimize/llm/eager.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from optimize import __version__
from optimize.report import Metric, ModelFacts, Report

PROMPT_TOKENS = 128
NEW_TOKENS = 128
DEFAULT_ROUNDS = 5
DEFAULT_PROMPTS = 20
POSITIONS = 32  # teacher-forced positions per prompt (token agreement)
PPL_TOKENS = 2048
PPL_WINDOW = 256
EAGER = "torch_eager"
NO_DATA = "set data.eval to a text file (its lines are the prompts, its text the perplexity text)"


@dataclass
class EvalText:
    prompts: list[list[int]]
    text_ids: list[int]
    source: str


def eval_text(ctx: Any, tokenizer: Any) -> EvalText | None:
    """The prompts and perplexity tokens from data.eval (module doc); None without data.eval."""
    from optimize.errors import DataError
    from optimize.llm.generation import prompt_ids

    spec = ctx.config.data.eval
    if spec is None:
        return None
    path = Path(spec.source) if Path(spec.source).is_absolute() else Path(ctx.base_dir) / spec.source
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"data.eval.source: cannot read {path} as UTF-8 text ({exc})") from None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()][: spec.samples or DEFAULT_PROMPTS]
    if not lines:
        raise DataError(f"data.eval.source: {path} has no non-empty line to use as a prompt")
    prompts = [prompt_ids(tokenizer, ln) for ln in lines]
    ids = list(tokenizer(text)["input_ids"])[:PPL_TOKENS]
    chat = "chat template applied" if getattr(tokenizer, "chat_template", None) else "no chat template"
    return EvalText(prompts, ids, f"data.eval: {spec.source} ({len(prompts)} prompts, {chat}; "
                                  f"perplexity on its first {len(ids)} tokens)")


def speed_prompt(data: EvalText | None, vocab: int, seed: int, limit: int) -> tuple[list[int], str]:
    """The prompt the speed rounds prefill: the eval text's first tokens, else seeded random ids."""
    n = max(1, min(PROMPT_TOKENS, limit - NEW_TOKENS))
    if data is not None and data.text_ids:
        ids = (data.text_ids * (n // len(data.text_ids) + 1))[:n]
        repeated = f" ({len(data.text_ids)} tokens, repeated)" if len(data.text_ids) < n else ""
        return ids, f"the first {n} tokens of data.eval{repeated}"
    rng = np.random.default_rng(seed)
    return [int(t) for t in rng.integers(0, vocab, n)], f"{n} random token ids (seed {seed})"


def _rounds(measure_cfg: Any) -> tuple[int, int]:
    """(rounds, warmup): measure.repeat / measure.warmup when set, else the decoder defaults."""
    fields = measure_cfg.model_fields_set
    rounds = measure_cfg.repeat if "repeat" in fields else DEFAULT_ROUNDS
    warmup = measure_cfg.warmup if "warmup" in fields else 1
    return rounds, warmup


def llm_metrics(ctx: Any, baseline: Any, final: Any) -> tuple[dict[str, Metric], bool]:
    """prefill_speedup, decode_speedup, token_agreement, perplexity_ratio (optimize.llm.llm_metrics)
    and whether the output's logits are finite."""
    from optimize.llm.eager import TorchCausalLM
    from optimize.llm.generation import OrtCausalLM
    from optimize.llm.llm_metrics import measure_speed, quality, report_metrics
    from optimize.llm.memory import memory_metric, model_memory

    lm = ctx.input_model.module
    cfg = ctx.config
    ref = OrtCausalLM(baseline.onnx_path, threads=ctx.threads)
    out = OrtCausalLM(final.onnx_path, threads=ctx.threads)
    data = eval_text(ctx, lm.tokenizer)
    limit = int(getattr(lm.config, "max_position_embeddings", 0) or PROMPT_TOKENS + NEW_TOKENS)
    prompt, prompt_source = speed_prompt(data, int(lm.config.vocab_size), ctx.seed, limit)
    finite = bool(np.isfinite(out.logits_along(np.asarray([prompt], np.int64))).all())
    rounds, warmup = _rounds(cfg.measure)
    ctx.progress.start("llm.speed", f"prefill {len(prompt)} + decode {NEW_TOKENS} tokens, {rounds} interleaved rounds",
                       None)
    speed = measure_speed({"fp32": ref, "output": out, EAGER: TorchCausalLM(lm.model, ctx.threads)}, "fp32", prompt,
                          new_tokens=NEW_TOKENS, rounds=rounds, warmup=warmup)
    ctx.progress.finish("llm.speed")
    ctx.progress.start("llm.memory", "peak memory of each model, one fresh process each", None)
    memory = model_memory({"fp32": ref, "output": out}, prompt, ctx.threads, ctx.work_dir / "llm-memory")
    ctx.progress.finish("llm.memory")
    qual = None
    if data is not None:
        ctx.progress.start("llm.quality", f"token agreement ({len(data.prompts)} prompts) and perplexity", None)
        qual = quality(ref, out, data.prompts, data.text_ids, positions=POSITIONS, window=min(PPL_WINDOW, limit))
        ctx.progress.finish("llm.quality")
    metrics = report_metrics("output", speed, qual, reason=NO_DATA)
    metrics["memory_ratio"] = memory_metric(memory, "fp32", "output")
    metrics["memory_ratio"].inputs.update(prompt_tokens=len(prompt), threads=ctx.threads)
    for key, tps, ratios in (("prefill_speedup", speed.prefill_tps, speed.prefill_ratio),
                             ("decode_speedup", speed.decode_tps, speed.decode_ratio)):
        metrics[key].inputs.update(source=prompt_source, prompt_tokens=len(prompt), new_tokens=NEW_TOKENS,
                                   threads=ctx.threads, batch=1, warmup=warmup, runs=rounds)
        est = ratios[EAGER]  # torch eager ÷ FP32 ONNX, per round
        metrics[key].inputs[EAGER] = {"tps": tps[EAGER], "vs_fp32_onnx": est.value, "interval": [est.low, est.high],
                                      "note": "the float torch model in transformers (eager, its own KV cache), "
                                              "timed in the same interleaved rounds: a reference line, not gated"}
        metrics[key].inputs["reference_line"] = (f"torch eager {tps[EAGER]:.1f} tokens/s beside FP32 ONNX "
                                                 f"{tps['fp32']:.1f} and output {tps['output']:.1f}")
    if cfg.measure.single_thread and ctx.threads > 1:
        _one_thread(ctx, baseline, final, prompt, rounds, warmup, metrics)
    for key in ("token_agreement", "perplexity_ratio"):
        if data is not None:
            metrics[key].inputs["source"] = data.source
    return metrics, finite


def weight_findings(in_facts: dict[str, Any], out_facts: dict[str, Any], metrics: dict[str, Metric],
                    steps: list[Any]) -> list[str]:
    """optimize.measure's weight findings, with a decoder's own cause of extra weight elements: the
    correction of float zero points (int4 minmax / hqq) adds K / block_size rows (or a small MatMul) per node."""
    from optimize.measure import weight_findings as generic

    found = generic(in_facts, out_facts, metrics, any(getattr(s, "sparsifies", False) for s in steps))
    split = any(str(((s.metrics or {}).get("llm") or {}).get("algorithm")) in ("minmax", "hqq") for s in steps)
    if split and (out_facts.get("weights") or 0) > (in_facts.get("weights") or 0):
        found = [f for f in found if not f.startswith("the output stores more weight elements")]
        found.append(f"the output stores more weight elements than the input ({in_facts['weights']:,} → "
                     f"{out_facts['weights']:,}): int4 minmax/hqq applies its float zero points through a per-block "
                     "correction (correction: folded, extra K rows of each MatMulNBits fed by the input's block sums; "
                     "exact, a correction MatMul beside it)")
    return found


def _one_thread(ctx: Any, baseline: Any, final: Any, prompt: list[int], rounds: int, warmup: int,
                metrics: dict[str, Metric]) -> None:
    """The same prefill / decode rounds at 1 thread (measure.single_thread), in the speed metrics'
    `inputs.one_thread`: on a shared or small machine the ratio can differ with the thread count."""
    from optimize.llm.generation import OrtCausalLM
    from optimize.llm.llm_metrics import measure_speed

    ctx.progress.start("llm.speed_1t", "the same rounds at 1 thread", None)
    models = {"fp32": OrtCausalLM(baseline.onnx_path, threads=1), "output": OrtCausalLM(final.onnx_path, threads=1)}
    speed = measure_speed(models, "fp32", prompt, new_tokens=NEW_TOKENS, rounds=rounds, warmup=warmup)
    ctx.progress.finish("llm.speed_1t")
    for key, ratios, tps in (("prefill_speedup", speed.prefill_ratio, speed.prefill_tps),
                             ("decode_speedup", speed.decode_ratio, speed.decode_tps)):
        est = ratios["output"]
        metrics[key].inputs["one_thread"] = {"value": est.value, "interval": [est.low, est.high],
                                             "verdict": est.verdict, "output_tps": tps["output"],
                                             "fp32_tps": tps["fp32"], "rounds": est.rounds}


def gguf_finding(source: str) -> str | None:
    if ".gguf" not in source.lower():
        return None
    return ("the weights come from a GGUF file: if it was quantized (Q4_0, Q4_1, …), its weights already lie on a "
            "4-bit grid that int4 minmax lands back on, which flatters int4 quality; expect less on float weights "
            "(docs/llm.md)")


def measure_llm(*, pl: Any, ctx: Any, baseline: Any, final: Any, lineage: Any, started: float, started_at: str,
                env: dict[str, Any], hw: dict[str, Any]) -> Report:
    """Verify the decoder output, measure it against the FP32 export, apply the gates (module doc)."""
    from optimize.benchmark import peak_rss_mb
    from optimize.measure import apply_gates, weight_metrics
    from optimize.model_facts import model_facts
    from optimize.runtime import check_model

    ctx.progress.start("verify", "verify (checker, ONNX Runtime load)", None)
    check_model(final.onnx_path)
    ctx.progress.finish("verify")
    findings: list[str] = list(getattr(pl, "notes", None) or [])
    metrics, finite = llm_metrics(ctx, baseline, final)
    in_facts = lineage.input_facts or {}
    out_facts = model_facts(final.onnx_path, "onnx", final)
    weight_metrics(in_facts, out_facts, final.onnx_path, False, metrics)
    findings.extend(weight_findings(in_facts, out_facts, metrics, lineage.steps))
    note = gguf_finding(str(in_facts.get("path") or ""))
    if note:
        findings.append(note)
    report = Report(
        tool={"name": "optimize", "version": __version__}, status="ok", started_at=started_at, seconds=0.0,
        seed=pl.config.seed, config=pl.config_dump, environment=env, hardware=hw, input=ModelFacts(**in_facts),
        output=ModelFacts(**out_facts), steps=lineage.steps, metrics=metrics, latency={}, findings=findings,
    )
    apply_gates(report, pl.config.gates, all_finite=finite)
    report.seconds = round(time.time() - started, 3)
    report.peak_rss_mb = peak_rss_mb()
    return report
