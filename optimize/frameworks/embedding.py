"""Embedding quality for `model.task: embedding`: the cosine similarity of the optimized model's
sentence embeddings to the input model's (the teacher's), per eval sample, reported as the
accuracy metric (min and mean) and checked by the `min_embedding_cosine` gate.

Both models run in ONNX Runtime on the same eval inputs (the first output is the embedding).
"""

from __future__ import annotations

from typing import Any

import numpy as np

F_EMBEDDING = (
    "cosine(output-model embedding, input-model embedding) per data.eval sample; value = mean, "
    "inputs.min = min"
)


def embedding_cosines(reference: np.ndarray, output: np.ndarray) -> np.ndarray:
    """Per-sample cosine over the last axis (extra axes are flattened per sample). NaN when an
    output is not finite, so it never passes a gate."""
    a = reference.reshape(len(reference), -1).astype(np.float64)
    b = output.reshape(len(output), -1).astype(np.float64)
    finite = np.isfinite(a).all(axis=1) & np.isfinite(b).all(axis=1)
    a, b = np.where(finite[:, None], a, 0.0), np.where(finite[:, None], b, 0.0)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    cos = np.divide((a * b).sum(axis=1), na * nb, out=np.zeros(len(a)), where=(na * nb) > 0)
    cos[(na == 0) & (nb == 0)] = 1.0  # both all-zero: identical
    cos[~finite] = np.nan
    return cos


def add_embedding_accuracy(report: Any, ctx: Any, baseline: Any, final: Any) -> None:
    """Set `report.metrics['accuracy']` to the embedding cosine (embedders only) and evaluate the
    `min_embedding_cosine` gate. Never raises for measurement problems: the metric is then null
    with the reason, and a configured gate fails (a missing value never passes)."""
    from optimize.report import Gate, Metric

    cfg = ctx.config
    gate_limit = cfg.gates.min_embedding_cosine
    metric = None
    reason = None
    if cfg.model.task != "embedding":
        reason = f"min_embedding_cosine applies to model.task embedding (this is {cfg.model.task})"
    else:
        eval_ds = ctx.data("eval")
        if eval_ds is None:
            reason = "embedding cosine not measured: no eval data (data.eval)"
        else:
            from optimize.runtime import predict, session

            try:
                ref = predict(session(baseline.onnx_path, threads=ctx.threads), eval_ds.inputs, cfg.data.batch_size)[0]
                got = predict(session(final.onnx_path, threads=ctx.threads), eval_ds.inputs, cfg.data.batch_size)[0]
                cos = embedding_cosines(np.asarray(ref), np.asarray(got))
            except Exception as exc:  # measurement must not fail the run; say why instead
                cos, reason = None, f"embedding cosine not measured: {type(exc).__name__}: {exc}"
            if cos is not None:
                finite = bool(np.isfinite(cos).all())
                metric = Metric(
                    value=float(cos.mean()) if finite else None, formula=F_EMBEDDING,
                    inputs={"metric": "embedding_cosine", "min": float(cos.min()) if finite else None,
                            "mean": float(cos.mean()) if finite else None, "baseline": 1.0,
                            "samples": int(len(cos)), "source": eval_ds.description},
                    reason=None if finite else "the output model produced NaN or Inf embeddings",
                )
                report.metrics["accuracy"] = metric
        if metric is None:
            report.metrics["accuracy"] = Metric.missing(F_EMBEDDING, reason or "embedding cosine not measured")
    if gate_limit is None:
        return
    value = metric.inputs["min"] if metric is not None else None
    if value is None:
        gate = Gate(name="min_embedding_cosine", limit=gate_limit, value=None, passed=False,
                    message=f"min_embedding_cosine: not measured, so it cannot pass (limit {gate_limit}; {reason or 'non-finite'})")
    else:
        passed = value >= gate_limit
        gate = Gate(name="min_embedding_cosine", limit=gate_limit, value=value, passed=passed,
                    message=f"min_embedding_cosine: {value:.4g} {'>=' if passed else '<'} {gate_limit}{'' if passed else ' FAILED'}")
    report.gates.append(gate)
    if not gate.passed:
        report.status = "gate_failed"


__all__ = ["add_embedding_accuracy", "embedding_cosines", "F_EMBEDDING"]
