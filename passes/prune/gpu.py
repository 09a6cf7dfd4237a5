"""2:4 on the GPU: time the N:M-pruned torch model with sparse semi-structured kernels
(`torch.sparse.to_sparse_semi_structured`, cuSPARSELt/CUTLASS) against the same model dense, both
in fp16 (bf16 where fp16 is unsupported), on CUDA.

ONNX Runtime has no 2:4 sparse kernels, so this is measured in torch; the exported ONNX stays
dense. Only Linear layers whose weight holds the 2:4 pattern and whose shape the kernels accept
are converted; the others stay dense and are listed. Timed interleaved (dense, sparse, dense, …)
with CUDA events after warm-up; the speedup is the median of per-round ratios.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np


def nm_gpu_benchmark(model: Any, ctx: Any, batch: int = 64, runs: int = 30, warmup: int = 5) -> dict[str, Any]:
    import torch

    from optimize.export import finalized_module

    if not torch.cuda.is_available():
        return {"speedup": None, "reason": "no CUDA device visible"}
    major, minor = torch.cuda.get_device_capability()
    if major < 8:
        return {"speedup": None, "reason": f"sparse semi-structured kernels need compute capability 8.0+, this GPU is {major}.{minor}"}
    try:
        from torch.sparse import to_sparse_semi_structured
    except ImportError:
        return {"speedup": None, "reason": "this torch has no torch.sparse.to_sparse_semi_structured"}

    dtype = torch.float16
    dense = finalized_module(model.module).to("cuda", dtype).eval()
    sparse = copy.deepcopy(dense)
    converted, kept = [], []
    for name, m in sparse.named_modules():
        if not isinstance(m, torch.nn.Linear):
            continue
        w = m.weight.detach()
        groups = (w.reshape(w.shape[0], -1, 4) != 0).sum(-1) if w.shape[1] % 4 == 0 else None
        if groups is None or bool((groups > 2).any()):
            kept.append(f"{name} (not 2:4)")
            continue
        try:
            m.weight = torch.nn.Parameter(to_sparse_semi_structured(w), requires_grad=False)
            converted.append(name)
        except Exception as exc:
            kept.append(f"{name} ({type(exc).__name__}: {str(exc).splitlines()[0][:80]})")
    if not converted:
        return {"speedup": None, "reason": "no Linear layer could use the sparse kernels", "dense_layers": kept}

    rng = np.random.default_rng(getattr(ctx, "seed", 0))
    xs = []
    for spec in model.inputs:
        t = torch.from_numpy(spec.random(batch, rng)).cuda()
        xs.append(t.to(dtype) if t.is_floating_point() else t)

    def timed(mod: Any) -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        mod(*xs)
        end.record()
        torch.cuda.synchronize()
        return float(start.elapsed_time(end))

    try:
        with torch.inference_mode():
            ref = dense(*xs)
            got = sparse(*xs)
            for _ in range(warmup):
                timed(dense)
                timed(sparse)
            d_ms, s_ms = [], []
            for _ in range(runs):
                d_ms.append(timed(dense))
                s_ms.append(timed(sparse))
    except Exception as exc:
        return {"speedup": None, "reason": f"sparse forward failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    ref_t = ref if isinstance(ref, torch.Tensor) else ref[0]
    got_t = got if isinstance(got, torch.Tensor) else got[0]
    ratios = [d / s for d, s in zip(d_ms, s_ms, strict=True) if s > 0]
    return {
        "dtype": str(dtype).replace("torch.", ""),
        "batch": batch,
        "runs": runs,
        "dense_ms": round(float(np.median(d_ms)), 4),
        "sparse_ms": round(float(np.median(s_ms)), 4),
        "speedup": round(float(np.median(ratios)), 4) if ratios else None,
        "formula": "median over interleaved rounds of dense fp16 ms / 2:4 sparse fp16 ms (torch, CUDA events)",
        "max_abs_diff": round(float((ref_t.float() - got_t.float()).abs().max()), 6),
        "sparse_layers": converted,
        "dense_layers": kept,
        "device": torch.cuda.get_device_name(),
    }
