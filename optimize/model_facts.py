"""Facts about a model file or module that the pipeline records and the report shows: weights
counted from the file, size, op counts, checksum, exporter and opset."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from optimize.handle import ModelHandle

log = logging.getLogger("optimize")


def sha256(path: Path) -> str:
    from optimize.cache import sha256_file

    return sha256_file(path)


def torch_weight_count(module: Any) -> int:
    """Every weight, counted as the ONNX weight count does (weights of weighted ops; biases and norm
    scales are not weights): every parameter with two or more dimensions — Linear/Conv kernels of any
    kind, embedding tables, LSTM/GRU matrices, attention projections — a shared parameter once."""
    return sum(int(p.numel()) for p in module.parameters() if p.dim() >= 2)


def weight_count(handle: ModelHandle) -> int | None:
    try:
        if handle.form == "torch":
            return torch_weight_count(handle.module)
        from optimize.inspect_onnx import weight_stats

        return weight_stats(handle.onnx_path).total
    except Exception:  # counting is informative; never fail a run over it
        log.debug("weight count failed", exc_info=True)
        return None


def model_facts(path: Path, form: str = "onnx", handle: ModelHandle | None = None) -> dict[str, Any]:
    from optimize.inspect_onnx import op_counts, weight_stats
    from optimize.onnx_io import total_bytes

    ws = weight_stats(path)
    return {
        "path": str(path),
        "form": form,
        "sha256": sha256(path),
        "bytes": total_bytes(path),
        "weights": ws.total,
        "nonzero_weights": ws.nonzero,
        "weight_bits": ws.bit_sum,
        "weight_dtypes": ws.by_dtype(),
        "ops": op_counts(path),
        "exporter": handle.exporter if handle else None,
        "opset": handle.opset if handle else None,
    }
