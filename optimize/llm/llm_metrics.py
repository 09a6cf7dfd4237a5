"""Speed and quality of an exported decoder against its FP32 ONNX reference, at batch 1.

Formulas (the report's metrics):
- `prefill_speedup` = median over interleaved rounds of (candidate prefill tokens/s ÷ FP32's), a
  prefill being one run over a `prompt_tokens`-token prompt with an empty cache;
- `decode_speedup` = the same for decode tokens/s over `new_tokens` single-token steps with the
  cache (the tokens fed are fixed, so both models do identical work);
- `token_agreement` = share of positions where the candidate's top-1 next token equals the FP32
  model's, teacher-forced along the FP32 model's own greedy continuation (`positions` per prompt,
  so one miss does not cascade), each position one decode step with the KV cache after a prefill
  of the prompt — the path generation takes, whatever kernels a graph runs prompts with;
- `perplexity_ratio` = candidate perplexity ÷ FP32 perplexity on the same text
  (exp of the mean next-token cross-entropy over windows of `window` tokens, each window one
  forward pass: the prompt path).
Each ratio comes with its 95% interval (optimize.speed: bootstrap of the median of the rounds).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from optimize.llm.generation import OrtCausalLM, generate


@dataclass
class SpeedResult:
    prefill_tps: dict[str, float] = field(default_factory=dict)  # model → median tokens/s
    decode_tps: dict[str, float] = field(default_factory=dict)
    prefill_ratio: dict[str, Any] = field(default_factory=dict)  # model → optimize.speed.RatioEstimate vs ref
    decode_ratio: dict[str, Any] = field(default_factory=dict)


def _prefill_and_decode(lm: OrtCausalLM, prompt: np.ndarray, tokens: np.ndarray) -> tuple[float, float]:
    """Seconds for one prefill of `prompt` (1, n) and for decoding `tokens` one by one after it."""
    t0 = time.perf_counter()
    out = lm.step(prompt, lm.empty_cache(), 0)
    t1 = time.perf_counter()
    past = prompt.shape[1]
    cache = out.cache
    for tok in tokens:
        cache = lm.step(np.asarray([[tok]], np.int64), cache, past).cache
        past += 1
    return t1 - t0, time.perf_counter() - t1


def measure_speed(models: dict[str, OrtCausalLM], reference: str, prompt: Sequence[int], new_tokens: int = 128,
                  rounds: int = 5, warmup: int = 1) -> SpeedResult:
    """Interleaved (A B A B …, order alternating) prefill and decode timing of every model."""
    from optimize.speed import estimate, round_ratios

    ids = np.asarray([list(prompt)], np.int64)
    feed = np.asarray(list(prompt)[:new_tokens] * (new_tokens // max(1, len(prompt)) + 1), np.int64)[:new_tokens]
    names = list(models)
    for _ in range(warmup):
        for name in names:
            _prefill_and_decode(models[name], ids, feed[:8])
    pre: dict[str, list[float]] = {n: [] for n in names}
    dec: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            p, d = _prefill_and_decode(models[name], ids, feed)
            pre[name].append(ids.shape[1] / p)
            dec[name].append(len(feed) / d)
    res = SpeedResult()
    for name in names:
        res.prefill_tps[name] = float(np.median(pre[name]))
        res.decode_tps[name] = float(np.median(dec[name]))
        if name != reference:
            res.prefill_ratio[name] = estimate(round_ratios(pre[name], pre[reference]))
            res.decode_ratio[name] = estimate(round_ratios(dec[name], dec[reference]))
    return res


def greedy_continuation(lm: OrtCausalLM, prompt: Sequence[int], positions: int) -> list[int]:
    """The model's own greedy continuation of `prompt` (no end-of-sequence stop)."""
    return list(generate(lm, list(prompt), positions))


def decode_predictions(lm: OrtCausalLM, prompt: Sequence[int], teacher: Sequence[int]) -> np.ndarray:
    """Top-1 next token after `prompt` and after each token of `teacher` but the last, fed one
    decode step at a time with the cache: the path generation takes (one prefill, then steps)."""
    out = lm.step(np.asarray([list(prompt)], np.int64), lm.empty_cache(), 0)
    preds = [int(out.logits[0, -1].argmax())]
    past = len(prompt)
    for tok in list(teacher)[:-1]:
        out = lm.step(np.asarray([[tok]], np.int64), out.cache, past)
        preds.append(int(out.logits[0, -1].argmax()))
        past += 1
    return np.asarray(preds)


def token_agreement(reference: OrtCausalLM, candidate: OrtCausalLM, prompts: Sequence[Sequence[int]],
                    positions: int = 32, continuations: Sequence[Sequence[int]] | None = None) -> dict[str, Any]:
    """Teacher-forced top-1 agreement along the reference's greedy continuation, both models on the
    decode path (module doc): the reference's own predictions along it are the continuation itself.
    `continuations`: the reference's, computed once when several candidates are judged."""
    same = total = 0
    for k, prompt in enumerate(prompts):
        cont = np.asarray(continuations[k] if continuations is not None
                          else greedy_continuation(reference, prompt, positions))
        cand = decode_predictions(candidate, prompt, cont)
        same += int((cand == cont).sum())
        total += len(cont)
    return {"value": same / total if total else None, "matches": same, "positions": total,
            "prompts": len(prompts), "positions_per_prompt": positions, "path": "decode steps with the KV cache"}


def perplexity(lm: OrtCausalLM, token_ids: Sequence[int], window: int = 256) -> dict[str, Any]:
    """exp(mean next-token cross-entropy) over consecutive windows of `window` tokens."""
    nll = 0.0
    count = 0
    ids = list(token_ids)
    for start in range(0, max(0, len(ids) - 1), window):
        chunk = ids[start:start + window]
        if len(chunk) < 2:
            break
        logits = lm.logits_along(np.asarray([chunk], np.int64)).astype(np.float64)[:-1]
        logits -= logits.max(-1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        nll -= float(logp[np.arange(len(chunk) - 1), chunk[1:]].sum())
        count += len(chunk) - 1
    return {"value": float(np.exp(nll / count)) if count else None, "tokens": count, "window": window}


def quality(reference: OrtCausalLM, candidate: OrtCausalLM, prompts: Sequence[Sequence[int]], text_ids: Sequence[int],
            positions: int = 32, window: int = 256) -> dict[str, Any]:
    """token_agreement and perplexity_ratio of `candidate` against `reference`, with their inputs."""
    agree = token_agreement(reference, candidate, prompts, positions)
    ppl_ref = perplexity(reference, text_ids, window)
    ppl_cand = perplexity(candidate, text_ids, window)
    ratio = ppl_cand["value"] / ppl_ref["value"] if ppl_ref["value"] and ppl_cand["value"] is not None else None
    return {"token_agreement": agree, "perplexity_ratio": {"value": ratio, "reference": ppl_ref["value"],
                                                           "candidate": ppl_cand["value"], "tokens": ppl_ref["tokens"],
                                                           "window": window}}


F_PREFILL = "median over interleaved rounds of (output prefill tokens/s / FP32 ONNX prefill tokens/s), batch 1"
F_DECODE = "median over interleaved rounds of (output decode tokens/s / FP32 ONNX decode tokens/s), batch 1"
F_AGREEMENT = ("matching top-1 positions / positions, teacher-forced along the FP32 model's greedy continuation "
               "(positions_per_prompt per prompt), one decode step with the KV cache per position")
F_PERPLEXITY = ("output perplexity / FP32 perplexity, exp(mean next-token cross-entropy) over windows of the eval text, "
                "one forward pass per window")


def report_metrics(name: str, speed: SpeedResult | None, qual: dict[str, Any] | None, reason: str = "not measured") -> dict[str, Any]:
    """The report's `prefill_speedup`, `decode_speedup`, `token_agreement` and `perplexity_ratio`
    for model `name` (optimize.report.Metric; null with `reason` when not measured). The gates
    `min_token_agreement` and `max_perplexity_ratio` read the last two (optimize.measure)."""
    from optimize.report import Metric

    out: dict[str, Any] = {}
    for key, formula, ratios, tps in (("prefill_speedup", F_PREFILL, "prefill_ratio", "prefill_tps"),
                                      ("decode_speedup", F_DECODE, "decode_ratio", "decode_tps")):
        est = getattr(speed, ratios).get(name) if speed is not None else None
        if est is None:
            out[key] = Metric.missing(formula, reason)
            continue
        ref = [n for n in getattr(speed, tps) if n not in getattr(speed, ratios)]
        out[key] = Metric(value=est.value, formula=formula, interval=[est.low, est.high], verdict=est.verdict,
                          tolerance=est.tolerance,
                          inputs={"output_tps": getattr(speed, tps)[name],
                                  "fp32_tps": getattr(speed, tps)[ref[0]] if ref else None, "rounds": est.rounds,
                                  **est.inputs()})
    agree = (qual or {}).get("token_agreement")
    out["token_agreement"] = (Metric(value=agree["value"], formula=F_AGREEMENT, inputs=agree) if agree
                              else Metric.missing(F_AGREEMENT, reason))
    ppl = (qual or {}).get("perplexity_ratio")
    out["perplexity_ratio"] = (Metric(value=ppl["value"], formula=F_PERPLEXITY, inputs=ppl) if ppl
                               else Metric.missing(F_PERPLEXITY, reason))
    return out
