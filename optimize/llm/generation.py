"""A decode loop on ONNX Runtime with the KV cache of an exported decoder (optimize/llm/export.py).

`OrtCausalLM` reads the cache layout from the graph's own inputs (`past_key_values.{i}.key`:
batch, kv heads, past, head dim), so it runs any graph with those names — ours, optimum's — with
plain onnxruntime and numpy. Prefill feeds the prompt with an empty cache; each decode step feeds
one token and the previous step's `present.*` outputs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from optimize.errors import ModelLoadError

PAST_PREFIX = "past_key_values."


@dataclass
class StepOutput:
    logits: np.ndarray  # (batch, sequence, vocab)
    cache: list[Any]  # present.* (onnxruntime OrtValues) in the graph's order, fed back as past_key_values.*


class OrtCausalLM:
    """An exported decoder in one ONNX Runtime session (spinning off, `threads` intra-op)."""

    def __init__(self, path: str | Path, threads: int = 1, session: Any = None) -> None:
        from optimize.runtime import session as make_session

        self.path = Path(path)
        self.session = session if session is not None else make_session(self.path, threads=threads)
        inputs = {i.name: i for i in self.session.get_inputs()}
        missing = [n for n in ("input_ids", "attention_mask") if n not in inputs]
        self.past_names = [n for n in inputs if n.startswith(PAST_PREFIX)]
        if missing or not self.past_names:
            raise ModelLoadError(
                f"{self.path}: not a decoder with a KV cache (needs input_ids, attention_mask and "
                f"{PAST_PREFIX}N.key/value inputs)"
            )
        self.has_positions = "position_ids" in inputs
        self.kv_heads, self.head_dim = self._cache_dims(inputs[self.past_names[0]].shape)
        self.cache_dtype = np.float16 if "float16" in inputs[self.past_names[0]].type else np.float32
        self.output_names = [o.name for o in self.session.get_outputs()]

    def _cache_dims(self, shape: list[Any]) -> tuple[int, int]:
        """(kv heads, head dim) from the past input's shape; ONNX Runtime GenAI's model builder leaves
        the last one symbolic (`kv_cache_dim`) and writes both in genai_config.json beside the model."""
        if isinstance(shape[1], int) and isinstance(shape[3], int):
            return shape[1], shape[3]
        meta = self.path.parent / "genai_config.json"
        try:
            dec = json.loads(meta.read_text(encoding="utf-8"))["model"]["decoder"]
            return int(dec["num_key_value_heads"]), int(dec["head_size"])
        except (OSError, ValueError, KeyError, TypeError):
            raise ModelLoadError(f"{self.path}: the KV cache's shape {shape} is symbolic and no genai_config.json "
                                 "beside the model gives num_key_value_heads / head_size") from None

    def empty_cache(self, batch: int = 1) -> list[np.ndarray]:
        return [np.zeros((batch, self.kv_heads, 0, self.head_dim), self.cache_dtype) for _ in self.past_names]

    def feed(self, ids: np.ndarray, past_len: int) -> dict[str, np.ndarray]:
        """The non-cache inputs for `ids` (batch, n) after `past_len` cached positions."""
        batch, n = ids.shape
        feed = {"input_ids": ids.astype(np.int64),
                "attention_mask": np.ones((batch, past_len + n), np.int64)}
        if self.has_positions:
            feed["position_ids"] = np.broadcast_to(np.arange(past_len, past_len + n, dtype=np.int64), (batch, n)).copy()
        return feed

    def step(self, ids: np.ndarray, cache: list[np.ndarray], past_len: int) -> StepOutput:
        """Run `ids` (batch, n) after `past_len` cached positions (no padding: batch rows aligned)."""
        feed = self.feed(ids, past_len)
        # OrtValues in and out: the present.* outputs go back as the next step's past inputs without a
        # copy into numpy arrays (at 30 layers and 128 past positions, ~6 MB a step)
        from onnxruntime import OrtValue

        values = {k: OrtValue.ortvalue_from_numpy(v) for k, v in feed.items()}
        values.update((name, c if isinstance(c, OrtValue) else OrtValue.ortvalue_from_numpy(np.ascontiguousarray(c)))
                      for name, c in zip(self.past_names, cache, strict=True))
        out = self.session.run_with_ort_values(self.output_names, values)
        return StepOutput(logits=out[0].numpy(), cache=list(out[1:]))

    def logits_along(self, ids: np.ndarray) -> np.ndarray:
        """Next-token logits at every position of `ids` (1, n) in one prefill: (n, vocab)."""
        return self.step(ids, self.empty_cache(ids.shape[0]), 0).logits[0]


def pick(logits: np.ndarray, temperature: float, rng: np.random.Generator | None) -> int:
    """Greedy at temperature 0, else a sample from softmax(logits / temperature)."""
    if temperature <= 0 or rng is None:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature
    p = np.exp(z - z.max())
    return int(rng.choice(p.size, p=p / p.sum()))


def generate(lm: OrtCausalLM, prompt_ids: list[int], max_new_tokens: int, *, temperature: float = 0.0,
             seed: int | None = None, eos_ids: tuple[int, ...] = ()) -> Iterator[int]:
    """Yield new token ids one at a time (prefill once, then one decode step per token)."""
    rng = np.random.default_rng(seed) if temperature > 0 else None
    ids = np.asarray([prompt_ids], np.int64)
    out = lm.step(ids, lm.empty_cache(), 0)
    past = ids.shape[1]
    for i in range(max_new_tokens):
        token = pick(out.logits[0, -1], temperature, rng)
        yield token
        if token in eos_ids or i == max_new_tokens - 1:
            return
        out = lm.step(np.asarray([[token]], np.int64), out.cache, past)
        past += 1


def eos_ids_of(folder: Path) -> tuple[int, ...]:
    """The end-of-sequence ids from generation_config.json (or llm.json) beside the graph."""
    for name, key in (("generation_config.json", "eos_token_id"), ("llm.json", "eos_token_ids")):
        f = folder / name
        if f.is_file():
            value = json.loads(f.read_text(encoding="utf-8")).get(key)
            if value is not None:
                return tuple(value) if isinstance(value, list) else (int(value),)
    return ()


def prompt_ids(tokenizer: Any, prompt: str, chat: bool = True) -> list[int]:
    """`prompt` as token ids: through the chat template (a user turn, then the assistant's turn
    opened) when the tokenizer has one and `chat`, else tokenized as is."""
    if chat and getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            tokenize=True)
        return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
    return list(tokenizer(prompt)["input_ids"])


def stream_text(lm: OrtCausalLM, tokenizer: Any, prompt: str, max_new_tokens: int, *, temperature: float = 0.0,
                seed: int | None = None, chat: bool = True, emit: Callable[[str], None] = print) -> list[int]:
    """Tokenize `prompt` (through the chat template when the tokenizer has one and `chat`), decode,
    and call `emit` with each new piece of text as it comes. Returns the new token ids."""
    ids = prompt_ids(tokenizer, prompt, chat)
    eos = eos_ids_of(lm.path.parent) or ((tokenizer.eos_token_id,) if tokenizer.eos_token_id is not None else ())
    new: list[int] = []
    shown = ""
    for token in generate(lm, list(ids), max_new_tokens, temperature=temperature, seed=seed, eos_ids=eos):
        new.append(token)
        text = tokenizer.decode(new, skip_special_tokens=True)
        if len(text) > len(shown):  # a multi-byte character can take several tokens
            emit(text[len(shown):])
            shown = text
    return new


def open_output(path: str | Path, threads: int = 1) -> tuple[OrtCausalLM, Any]:
    """An exported decoder (its folder, or the .onnx inside) and the tokenizer beside it."""
    from optimize.frameworks.common import has_module, quiet_transformers

    p = Path(path)
    onnx_file = _model_in(p) if p.is_dir() else p
    if not onnx_file.is_file():
        raise ModelLoadError(f"{path}: no model.onnx (give the output folder of an LLM run or its .onnx file)")
    if not has_module("transformers"):
        raise ModelLoadError(f"{path}: reading its tokenizer needs the [llm] extra: pip install 'optimize[llm]'")
    quiet_transformers()
    from transformers import AutoTokenizer

    lm = OrtCausalLM(onnx_file, threads=threads)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(onnx_file.parent), local_files_only=True)
    except Exception as exc:
        line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ModelLoadError(f"{onnx_file.parent}: no usable tokenizer beside the model ({line})") from None
    return lm, tokenizer


def _model_in(folder: Path) -> Path:
    """The graph of an output folder: the one genai_config.json names, else model.onnx, else the
    folder's only .onnx file."""
    try:
        named = json.loads((folder / "genai_config.json").read_text(encoding="utf-8"))["model"]["decoder"]["filename"]
        if (folder / named).is_file():
            return folder / named
    except (OSError, ValueError, KeyError, TypeError):
        pass
    found = sorted(folder.glob("*.onnx"))
    return found[0] if len(found) == 1 and not (folder / "model.onnx").exists() else folder / "model.onnx"
