"""`format: auto` and `prefill: auto` on a decoder LLM (`mode: weight_only`, `model.task:
text-generation`): build the int4 variants, measure each on this CPU against the FP32 export, keep
the fastest that meets the quality gates.

Candidates: with `format: auto`, `accuracy_level` {4, 1} × `block_size` {32, 128} (`AUTO_GRID`; a
field the config sets explicitly is held at its value instead of varied); with `prefill: auto`,
the prompt paths {int8_weights, float_activations} (`PREFILL_GRID`: prompts on 8-bit copies are
faster and round more); both: their product. The other options (algorithm, head, embedding …)
apply to every candidate. Which kernel wins depends on the CPU: level 4
(int8 activations) makes decode fast where level 1 (float activations) keeps prompts near FP32 on
a CPU without int8 dot products (docs/llm.md's kernel table).

Each candidate is measured in the same interleaved rounds as the FP32 model (optimize.llm's
measure_speed: a 128-token prompt of data.eval, then `NEW_TOKENS` decode steps) and judged on
data.eval exactly as the final report judges the output (token agreement along the FP32 model's
greedy continuations, perplexity ratio), against the run's `min_token_agreement` /
`max_perplexity_ratio` gates. "Fastest" is the shortest time for that prompt plus its decode steps
(a request's latency); the candidates' table is in the step's metrics (`llm.auto`). When none
passes, the one with the highest token agreement is kept and the run's own gates decide.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from optimize.context import RunContext
    from passes.quantize.config import QuantizeConfig

AUTO_GRID = {"accuracy_level": (4, 1), "block_size": (32, 128)}
PREFILL_GRID = {"prefill": ("int8_weights", "float_activations")}
ROUNDS = 3
NEW_TOKENS = 64


def grid(cfg: QuantizeConfig) -> dict[str, tuple[Any, ...]]:
    """The axes varied: AUTO_GRID (format auto; a field the config sets is held) and PREFILL_GRID
    (prefill auto)."""
    axes: dict[str, tuple[Any, ...]] = {}
    if cfg.format == "auto":
        axes.update({k: (v if k not in cfg.model_fields_set else (getattr(cfg, k),)) for k, v in AUTO_GRID.items()})
    if cfg.prefill == "auto":
        axes.update(PREFILL_GRID)
    return axes


def variants(cfg: QuantizeConfig) -> list[dict[str, Any]]:
    """The candidates' settings: the product of `grid`'s axes, less the prompt paths of a body
    that already computes with float activations (accuracy_level 0 / 1 / unset: no prompt path
    is added, so the prefill axis would only build the same model twice)."""
    axes = grid(cfg)
    out: list[dict[str, Any]] = []
    for combo in itertools.product(*axes.values()):
        settings = dict(zip(axes, combo, strict=True))
        if "prefill" in settings and settings.get("accuracy_level", cfg.accuracy_level) in (None, 0, 1):
            settings["prefill"] = "decode_kernels"
        if settings not in out:
            out.append(settings)
    return out


def choose(cfg: QuantizeConfig, src: Path, step_dir: Path, ctx: RunContext, build: Any) -> tuple[Path, dict[str, Any]]:
    """Build every variant with `build(settings, dst) -> (path, facts)`, measure, keep one (module doc).
    Returns the kept model's path and its facts with the table under `auto`."""
    from optimize.errors import ConfigError
    from optimize.llm.generation import OrtCausalLM
    from optimize.llm.llm_metrics import measure_speed
    from optimize.llm.measure_run import eval_text, speed_prompt

    lm = ctx.input_model.module if ctx.input_model is not None else None
    data = eval_text(ctx, lm.tokenizer) if lm is not None else None
    if data is None:
        raise ConfigError("format / prefill auto on a decoder judges each candidate on data.eval: set data.eval to a "
                          "text file")
    built: list[tuple[dict[str, Any], Path, dict[str, Any]]] = []
    for i, settings in enumerate(variants(cfg)):
        dst = step_dir / "auto" / f"candidate-{i}" / "model.onnx"
        ctx.progress.start("quantize.auto", f"build candidate {i + 1} ({_label(settings)})", None)
        built.append((settings, *build(settings, dst)))
        ctx.progress.finish("quantize.auto")
    ref = OrtCausalLM(src, threads=ctx.threads)
    models = {"fp32": ref, **{f"candidate-{i}": OrtCausalLM(p, threads=ctx.threads) for i, (_, p, _) in enumerate(built)}}
    limit = int(getattr(lm.config, "max_position_embeddings", 0) or 256)
    prompt, _ = speed_prompt(data, int(lm.config.vocab_size), ctx.seed, limit)
    ctx.progress.start("quantize.auto", f"time {len(built)} candidates and FP32, {ROUNDS} interleaved rounds", None)
    speed = measure_speed(models, "fp32", prompt, new_tokens=NEW_TOKENS, rounds=ROUNDS, warmup=1)
    ctx.progress.finish("quantize.auto")
    rows = _judge(ctx, ref, models, built, data, speed, len(prompt))
    kept = _pick(rows)
    _, path, facts = built[kept]
    axes = grid(cfg)
    facts = {**facts, "auto": {"candidates": rows, "chosen": kept, "grid": {k: list(v) for k, v in axes.items()},
                               "held": sorted(k for k, v in axes.items() if len(v) == 1),
                               "speed": f"{len(prompt)}-token prompt + {NEW_TOKENS} decode steps, {ROUNDS} "
                                        f"interleaved rounds, {ctx.threads} threads", "quality": data.source}}
    return path, facts


def _judge(ctx: RunContext, ref: Any, models: dict[str, Any], built: list[Any], data: Any, speed: Any,
           prompt_tokens: int) -> list[dict[str, Any]]:
    """One row per candidate: settings, speed, quality and whether the run's quality gates pass."""
    from optimize.llm.llm_metrics import greedy_continuation, perplexity, token_agreement
    from optimize.llm.measure_run import POSITIONS, PPL_WINDOW

    gates = ctx.config.gates
    ctx.progress.start("quantize.auto", f"judge {len(built)} candidates on data.eval", None)
    conts = [greedy_continuation(ref, p, POSITIONS) for p in data.prompts]  # once for every candidate
    ref_ppl = perplexity(ref, data.text_ids, PPL_WINDOW)["value"]
    rows = []
    for i, (settings, _, _) in enumerate(built):
        name = f"candidate-{i}"
        agreement = token_agreement(ref, models[name], data.prompts, POSITIONS, conts)["value"] or 0.0
        ppl = perplexity(models[name], data.text_ids, PPL_WINDOW)["value"]
        ratio = ppl / ref_ppl if ref_ppl and ppl is not None else None
        seconds = prompt_tokens / speed.prefill_tps[name] + NEW_TOKENS / speed.decode_tps[name]
        ok = ((gates.min_token_agreement is None or agreement >= gates.min_token_agreement)
              and (gates.max_perplexity_ratio is None or (ratio is not None and ratio <= gates.max_perplexity_ratio)))
        rows.append({**settings, "request_s": round(seconds, 4), "prefill_tps": round(speed.prefill_tps[name], 1),
                     "decode_tps": round(speed.decode_tps[name], 1),
                     "decode_vs_fp32": round(speed.decode_ratio[name].value, 3),
                     "prefill_vs_fp32": round(speed.prefill_ratio[name].value, 3),
                     "token_agreement": round(agreement, 4),
                     "perplexity_ratio": round(ratio, 4) if ratio is not None else None, "passes_quality": ok})
    ctx.progress.finish("quantize.auto")
    return rows


def _pick(rows: list[dict[str, Any]]) -> int:
    passing = [i for i, r in enumerate(rows) if r["passes_quality"]]
    if passing:
        return min(passing, key=lambda i: rows[i]["request_s"])
    return max(range(len(rows)), key=lambda i: rows[i]["token_agreement"])


def _label(settings: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in settings.items())


def note(auto: dict[str, Any]) -> str:
    rows, kept = auto["candidates"], auto["chosen"]
    r = rows[kept]
    why = "the fastest passing the quality gates" if r["passes_quality"] else "none passed the quality gates: the closest"
    which = " and ".join(f"{k} auto" for k, keys in (("format", AUTO_GRID), ("prefill", PREFILL_GRID))
                         if any(x in auto["grid"] for x in keys))
    return (f"{which}: {len(rows)} int4 candidates measured on this CPU, kept {_label({k: r[k] for k in auto['grid']})} "
            f"({why}; {r['request_s']:.2f} s per request, decode {r['decode_vs_fp32']:.2f}x of FP32, token agreement "
            f"{r['token_agreement']:.3f})")
