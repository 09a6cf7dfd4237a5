"""Decoder language models (issue 15): a causal-LM Hugging Face folder or a `.gguf` file → one
ONNX graph with a KV cache (prefill and decode), a decode loop on ONNX Runtime, and the LLM
measurements (prefill / decode tokens per second, token agreement, perplexity).

- `load.py` — folder or GGUF → float torch model + tokenizer, with an allow-list of model types;
- `export.py` — the KV-cache wrapper and the ONNX export, tokenizer and generation files beside it;
- `generation.py` — ONNX Runtime session, greedy / sampled decode loop with the cache;
- `llm_metrics.py` — speed (interleaved) and quality (teacher-forced agreement, perplexity);
- `route.py` — what `optimize run` does for `model.task: text-generation` (detection, plan-time
  checks, the export as baseline, serving files beside the output);
- `measure_run.py` — a decoder run's verification and report metrics.

Nothing here imports torch, transformers or onnxruntime at import time.
"""
