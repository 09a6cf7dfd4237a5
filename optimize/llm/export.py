"""One ONNX graph for prefill and decode, with the KV cache as plain tensors.

Inputs: `input_ids`, `attention_mask` (batch, past_sequence + sequence), `position_ids`,
`past_key_values.{i}.key` / `.value` (batch, kv_heads, past_sequence, head_dim); outputs: `logits`
(batch, sequence, vocab), `present.{i}.key` / `.value` (batch, kv_heads, total_sequence, head_dim).
Prefill feeds past tensors of length 0. The names are those of optimum's and ONNX Runtime GenAI's
decoder exports, so their loops read this graph too.

transformers 5 passes the cache as a `DynamicCache` object, which neither exporter takes as an
input; `KVCacheWrapper` takes the flat tensors, builds the cache (`DynamicCache(ddp_cache_data=…)`)
and returns the flat updated cache. Exported with the TorchScript exporter (`dynamo=False`):
tested to match torch on prefill and decode; eager attention, so the graph holds plain
MatMul/Softmax that ONNX Runtime's quantizers and fusions recognize.
"""

from __future__ import annotations

import inspect
import json
import logging
import warnings
from pathlib import Path
from typing import Any

from optimize.llm.load import CausalLM

log = logging.getLogger("optimize")
LLM_META = "llm.json"  # beside the ONNX file: what the decode loop needs to know about the graph


def cache_shape(config: Any) -> tuple[int, int, int]:
    """(layers, kv heads, head dim) of the model's KV cache."""
    layers = int(config.num_hidden_layers)
    heads = int(config.num_attention_heads)
    kv = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    return layers, kv, head_dim


def io_names(layers: int) -> tuple[list[str], list[str]]:
    past = [f"past_key_values.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
    present = [f"present.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
    return ["input_ids", "attention_mask", "position_ids", *past], ["logits", *present]


def _wrapper(model: Any) -> Any:
    import torch
    from transformers import DynamicCache

    class KVCacheWrapper(torch.nn.Module):
        """The causal LM with its cache as flat tensors in and out (see module doc)."""

        def __init__(self, lm: Any) -> None:
            super().__init__()
            self.lm = lm
            # transformers 5.2x renamed `past_key_values` to `cache` (the old name warns, then goes)
            self.cache_arg = "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"

        def forward(self, input_ids: Any, attention_mask: Any, position_ids: Any, *past: Any) -> tuple[Any, ...]:
            pairs = [(past[i], past[i + 1]) for i in range(0, len(past), 2)]
            cache = DynamicCache(ddp_cache_data=pairs, config=self.lm.config)
            kwargs = {self.cache_arg: cache}
            out = self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=True, **kwargs)
            flat = []
            for layer in getattr(out, self.cache_arg).layers:
                flat += [layer.keys, layer.values]
            return (out.logits, *flat)

    return KVCacheWrapper(model)


def example_feed(config: Any, batch: int = 1, seq: int = 3, past: int = 2, seed: int = 0) -> tuple[Any, ...]:
    """Random inputs in the graph's order: `seq` new tokens after `past` cached ones."""
    import torch

    layers, kv, head_dim = cache_shape(config)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, int(config.vocab_size), (batch, seq), generator=gen)
    mask = torch.ones(batch, past + seq, dtype=torch.int64)
    pos = torch.arange(past, past + seq, dtype=torch.int64).unsqueeze(0).expand(batch, -1).contiguous()
    cache = [torch.randn(batch, kv, past, head_dim, generator=gen) for _ in range(2 * layers)]
    return (ids, mask, pos, *cache)


def export_causal_lm(lm: CausalLM, path: Path, opset: int = 18) -> Path:
    """Export `lm` to `path` (see module doc) and write the serving files beside it."""
    import torch

    config = lm.config
    layers, _, _ = cache_shape(config)
    inputs, outputs = io_names(layers)
    if hasattr(lm.model, "set_attn_implementation"):
        lm.model.set_attn_implementation("eager")
    axes: dict[str, dict[int, str]] = {
        "input_ids": {0: "batch", 1: "sequence"},
        "attention_mask": {0: "batch", 1: "total_sequence"},
        "position_ids": {0: "batch", 1: "sequence"},
        "logits": {0: "batch", 1: "sequence"},
    }
    for name in inputs[3:]:
        axes[name] = {0: "batch", 2: "past_sequence"}
    for name in outputs[1:]:
        axes[name] = {0: "batch", 2: "total_sequence"}
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = _wrapper(lm.model).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, example_feed(config), str(path), input_names=inputs, output_names=outputs,
                          dynamic_axes=axes, opset_version=opset, dynamo=False, do_constant_folding=True)
    _external_data_if_large(path)
    write_serving_files(lm, path.parent)
    return path


def _external_data_if_large(path: Path) -> None:
    """Models past 2 GB: the exporter already wrote external data; keep one data file beside it."""
    import onnx

    if path.stat().st_size < 1_900_000_000 and not any(path.parent.glob("*.data")):
        return
    model = onnx.load(str(path))
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + ".data")


def write_serving_files(lm: CausalLM, out_dir: Path) -> None:
    """Tokenizer (with its chat template), generation_config.json and `llm.json` beside the graph."""
    config = lm.config
    layers, kv, head_dim = cache_shape(config)
    lm.tokenizer.save_pretrained(str(out_dir))
    gen = getattr(lm.model, "generation_config", None)
    if gen is not None:
        gen.save_pretrained(str(out_dir))
    eos = getattr(gen, "eos_token_id", None) if gen is not None else None
    eos = eos if eos is not None else getattr(config, "eos_token_id", None)
    meta = {
        "model_type": config.model_type, "num_layers": layers, "num_kv_heads": kv, "head_dim": head_dim,
        "vocab_size": int(config.vocab_size), "eos_token_ids": [eos] if isinstance(eos, int) else list(eos or []),
        "source": lm.source,
    }
    (out_dir / LLM_META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


SERVING_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                 "chat_template.json", "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json",
                 "generation_config.json", LLM_META, "genai_config.json")


def copy_serving_files(src_dir: Path, dst_dir: Path) -> list[str]:
    """Copy the tokenizer, chat template and generation files of an export to another folder
    (a quantized model's), so that folder runs on its own. Returns the names copied."""
    import shutil

    dst_dir.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in SERVING_FILES:
        if (src_dir / name).is_file() and src_dir.resolve() != dst_dir.resolve():
            shutil.copyfile(src_dir / name, dst_dir / name)
            copied.append(name)
    return copied
