"""Free a model that is already garbage but sits in reference cycles, before the next heavy step.

A model held by onnx-ir (graphs, nodes and values point at one another: the quantize pass's
preparation, graph rewrites, fp16) or by ONNX Runtime's `SymbolicShapeInference` (inside
`quant_pre_process`; it keeps bound methods of itself in a dict) is garbage in reference cycles when
the call that built it returns: reference counting never frees it, only the cycle collector does,
and its full pass runs rarely (when the objects that survived the last one have grown by a quarter).
On the 2.42 GB model of tests/integration/test_large_model.py a whole copy of the weights (2.4 GB)
stayed alive from the quantize pass's preparation to the end of the run, under ONNX Runtime's
quantizer and the four latency sessions (per-phase VmHWM, docs/reliability.md). ONNX Runtime's
quantizers themselves (`quantize_dynamic`, `quantize_static`) leave no cycles. A full collection
costs ~0.1 s in a CLI run (~0.3 s in the test suite's process, with its 0.5 M objects: 48 s of the
integration tests' 96 s when it ran after every pass), so it runs after steps that handle whole
models, never in loops over layers, and only for models whose garbage is worth that.
"""

from __future__ import annotations

import gc

COLLECT_FROM_BYTES = 64 * 2**20  # smaller models: their garbage costs less than a full collection's time


def release_garbage(model_bytes: int | None) -> int:
    """Run the cycle collector now (all generations) when the step handled a model of at least
    COLLECT_FROM_BYTES (`model_bytes`; None: unknown, not collected); returns the objects it found."""
    if model_bytes is None or model_bytes < COLLECT_FROM_BYTES:
        return 0
    return gc.collect()


__all__ = ["release_garbage"]
