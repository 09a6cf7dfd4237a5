"""The quantize pass on a decoder LLM (`model.task: text-generation`): `mode: weight_only, bits: 4`
→ `int4.quantize_int4` (MatMulNBits body, head / embedding policies, algorithm rtn / hqq / minmax);
`mode: dynamic` → `int4.quantize_int8_dynamic`. `mode: static` is refused: there is no calibration
route for a KV-cache graph (its past inputs have a length of their own at every step).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from optimize.errors import ConfigError

if TYPE_CHECKING:
    from optimize.context import RunContext
    from optimize.handle import ModelHandle
    from optimize.pass_api import PassResult
    from passes.quantize.config import QuantizeConfig

TASK = "text-generation"
LLM_ONLY = ("algorithm", "correction", "head", "embedding", "head_accuracy_level", "prefill")
GENERIC_ONLY = ("format", "fusion", "op_types", "exclude_nodes", "parity_floor", "fallback_max_layers",
                "calibration", "calibration_samples", "random_calibration", "activation_type", "weight_type",
                "smooth_alpha", "smooth_inputs")


def check(cfg: QuantizeConfig, task: str, key: str, data_eval: Any = None) -> None:
    """Plan-time rules (exit 2): a decoder takes weight_only 4-bit (format auto: with data.eval) or
    dynamic int8; the decoder options are refused on other models, format auto with weight_only too."""
    if task != TASK:
        if cfg.mode == "weight_only" and cfg.format == "auto":
            raise ConfigError("format auto chooses among int8 forms here (int4 variants on decoder LLMs only); use it "
                              "with mode dynamic or static", key=f"{key}.format")
        given = [f for f in LLM_ONLY if f in cfg.model_fields_set]
        if given:
            raise ConfigError(f"{given[0]} applies to model.task {TASK} (decoder LLMs) only", key=f"{key}.{given[0]}")
        return
    if cfg.mode == "static":
        raise ConfigError(f"mode static: a {TASK} model has no calibration route (its KV-cache graph's past inputs "
                          "change length at every step); use mode weight_only with bits 4, or mode dynamic",
                          key=f"{key}.mode")
    if cfg.mode == "weight_only" and cfg.bits != 4:
        raise ConfigError(f"mode weight_only on a {TASK} model is 4-bit (MatMulNBits): set bits: 4", key=f"{key}.bits")
    if cfg.mode == "dynamic" and "prefill" in cfg.model_fields_set:
        raise ConfigError("prefill chooses how a weight_only (int4) decoder runs prompts; mode dynamic has one path",
                          key=f"{key}.prefill")
    if cfg.mode == "dynamic" and cfg.head == "int4":
        raise ConfigError("head int4 needs mode weight_only; dynamic int8 keeps the head int8 or float",
                          key=f"{key}.head")
    auto = cfg.format == "auto"
    if auto and cfg.mode != "weight_only":
        raise ConfigError(f"format auto on a {TASK} model measures int4 variants: use mode weight_only with bits 4",
                          key=f"{key}.format")
    if auto and data_eval is None:
        raise ConfigError("format auto on a decoder judges each candidate on data.eval: set data.eval to a text file "
                          "(its lines are the prompts, its text the perplexity text)", key=f"{key}.format")
    if cfg.prefill == "auto" and data_eval is None:
        raise ConfigError("prefill auto judges each prompt path on data.eval: set data.eval to a text file "
                          "(its lines are the prompts, its text the perplexity text)", key=f"{key}.prefill")
    if cfg.prefill in ("auto", "int8_weights", "float_activations") and not auto and cfg.accuracy_level in (None, 0, 1):
        raise ConfigError(f"prefill {cfg.prefill} adds a prompt path beside a body that computes with int8 activations "
                          "(accuracy_level 2-4), and this body does not: set accuracy_level: 4, or format: auto",
                          key=f"{key}.prefill")
    given = [f for f in GENERIC_ONLY if f in cfg.model_fields_set and not (f == "format" and auto)]
    if given:
        raise ConfigError(f"{given[0]} does not apply to a {TASK} model (its quantize options: mode, bits, "
                          "block_size, symmetric_blocks, accuracy_level, algorithm, correction, head, embedding, "
                          "head_accuracy_level, prefill, per_channel, reduce_range)", key=f"{key}.{given[0]}")


def run(cfg: QuantizeConfig, model: ModelHandle, ctx: RunContext, name: str) -> PassResult:
    """Quantize the decoder export at `model.onnx_path` into this step's folder (module doc)."""
    from pathlib import Path

    from optimize.errors import PassError
    from optimize.pass_api import PassResult
    from passes.quantize.int4 import quantize_int8_dynamic

    if model.onnx_path is None:
        raise PassError(name, "expected an ONNX model")
    src = Path(model.onnx_path)
    out = ctx.step_dir(name) / "model.onnx"
    ctx.progress.start(f"{name}.llm", f"quantize the decoder ({_label(cfg)})", None)
    try:
        if cfg.mode == "weight_only" and (cfg.format == "auto" or cfg.prefill == "auto"):
            from passes.quantize.llm_auto import choose

            out, facts = choose(cfg, src, ctx.step_dir(name), ctx, lambda s, dst: _int4(cfg, src, dst, ctx, name, **s))
        elif cfg.mode == "weight_only":
            out, facts = _int4(cfg, src, out, ctx, name)
        else:
            head = "float" if cfg.head == "float" else "int8"
            facts = quantize_int8_dynamic(src, out, head=head, per_channel=cfg.per_channel,
                                          reduce_range=bool(cfg.resolved().reduce_range))
    except Exception as exc:
        ctx.log.debug("decoder quantization failed", exc_info=True)
        line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise PassError(name, f"ONNX Runtime's quantizer failed on the decoder: {type(exc).__name__}: {line}") from exc
    finally:
        ctx.progress.finish(f"{name}.llm")
    notes = [_note(facts)]
    if "auto" in facts:
        from passes.quantize.llm_auto import note

        notes.append(note(facts["auto"]))
    return PassResult(model.replace(onnx_path=out), {"mode": cfg.mode, "bits": cfg.bits, "llm": facts}, notes)


def _int4(cfg: QuantizeConfig, src: Any, dst: Any, ctx: RunContext, name: str, **override: Any) -> tuple[Any, dict[str, Any]]:
    """One int4 model at `dst` (plus its prompt path when asked): (the path kept, facts).
    `override`: a `format` / `prefill` auto candidate's accuracy_level, block_size or prefill,
    else the config's."""
    from passes.quantize.int4 import quantize_int4

    s = {"accuracy_level": cfg.accuracy_level, "block_size": cfg.block_size, "prefill": cfg.prefill, **override}
    facts = quantize_int4(src, dst, block_size=s["block_size"], symmetric=cfg.symmetric_blocks,
                          accuracy_level=s["accuracy_level"], head=cfg.head, embedding=cfg.embedding,
                          algorithm=cfg.algorithm, head_accuracy_level=cfg.head_accuracy_level,
                          correction=cfg.correction)
    return _prefill(cfg, dst, facts, ctx, name, s["prefill"]), facts


def _prefill(cfg: QuantizeConfig, out: Any, facts: dict[str, Any], ctx: RunContext, name: str, how: str) -> Any:
    """The graph with a prompt path (passes/quantize/prefill_branch.py) when `prefill:
    float_activations` or `int8_weights` asks for it and the body computes with int8 (or 16-bit)
    activations; returns the path of the graph kept and records what was done in facts."""
    from passes.quantize.int4 import save
    from passes.quantize.prefill_branch import add_prompt_path

    if how == "decode_kernels" or facts.get("accuracy_level") in (None, 0, 1):
        facts["prefill"] = {"path": "decode_kernels", "why": "prefill: decode_kernels" if how == "decode_kernels"
                            else "the body's accuracy_level already computes with float activations"}
        return out
    branched = out.parent / "prompt-path" / "model.onnx"
    what = "8-bit weights" if how == "int8_weights" else "accuracy_level 1"
    ctx.progress.start(f"{name}.prefill", f"add a prompt path (If on the sequence length, {what})", None)
    try:
        built = add_prompt_path(out, branched, facts.get("tied_embedding"), save, body=how)
    finally:
        ctx.progress.finish(f"{name}.prefill")
    facts["prefill"] = {"path": how, **built}
    return branched


def _label(cfg: QuantizeConfig) -> str:
    if cfg.mode == "weight_only":
        return f"int4 {cfg.algorithm}, block {cfg.block_size}, head {cfg.head}"
    return f"int8 dynamic, head {'float' if cfg.head == 'float' else 'int8'}"


def _prefill_note(p: dict[str, Any]) -> str:
    if p.get("path") not in ("float_activations", "int8_weights"):
        why = str(p.get("why") or "")
        return f"; prompt path not added: {why}" if "accuracy_level" in why else ""
    if p["path"] == "int8_weights":
        body = f"{p.get('prompt_int8_kernels')} MatMuls on 7-bit weights stored again ({p.get('prompt_weight_bytes')} bytes)"
    else:
        body = f"accuracy_level {p.get('prompt_accuracy_level')}"
    return f"; prompts run a path of their own ({body}, head {p.get('prompt_head')})"


def _note(facts: dict[str, Any]) -> str:
    if facts.get("format") == "int4":
        level = facts.get("accuracy_level")
        how = facts["algorithm"] + (f", {facts['correction']} correction" if facts.get("correction") else "")
        return (f"decoder int4 ({how}): {facts['int4_matmuls']} MatMuls as 4-bit MatMulNBits blocks of "
                f"{facts['block_size']}, accuracy_level {level if level is not None else 'unset'}; head "
                f"{facts.get('head')}, embedding {facts.get('embedding')}{_prefill_note(facts.get('prefill') or {})}")
    tokens = ", each token's input at its own scale" if facts.get("per_token") else ""
    return (f"decoder int8 dynamic: MatMuls with {'7' if facts.get('reduce_range') else '8'}-bit weights, "
            f"per_channel {facts.get('per_channel')}{tokens}; head {facts.get('head')}")
