"""The float torch model as a reference line beside the ONNX models: the same prefill and decode
rounds (optimize.llm.llm_metrics.measure_speed) run by transformers in eager mode with its own KV
cache, so a report says how the FP32 ONNX export compares with what the user ran before it.

`TorchCausalLM` has the two calls the speed rounds make on an `OrtCausalLM` (`empty_cache`, `step`);
it is timed interleaved with the ONNX models, at the same thread count (torch's intra-op threads
are set for each step and restored after, so the rest of the run keeps its own setting).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class _Step:
    cache: Any  # transformers' past_key_values


class TorchCausalLM:
    """`model` (a transformers …ForCausalLM in eval mode) behind OrtCausalLM's step interface."""

    def __init__(self, model: Any, threads: int) -> None:
        import inspect

        self.model = model
        self.threads = threads
        # transformers 5.2x calls the cache argument `cache` (past_key_values warns, then goes in 5.40)
        self.cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def empty_cache(self) -> None:
        return None

    def step(self, ids: np.ndarray, cache: Any, past_len: int) -> _Step:
        """One forward pass over `ids` (1, n) after `past_len` cached positions (all logits computed, as
        the ONNX graph does)."""
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                n = ids.shape[1]
                mask = torch.ones((ids.shape[0], past_len + n), dtype=torch.long)
                out = self.model(input_ids=torch.from_numpy(np.ascontiguousarray(ids)), attention_mask=mask,
                                 use_cache=True, **{self.cache_arg: cache})
        finally:
            torch.set_num_threads(before)
        return _Step(out.cache if self.cache_arg == "cache" else out.past_key_values)
