"""`per_token: auto`: per-token scales only where the user's data has token outliers.

One scale per call gives the whole input the step its largest token needs, so a token whose values
are r times smaller than the largest token's keeps about 1/r of the 8-bit grid. Per-token scales fix
that at the cost of passes over the input (token_scales.py), which only pay where r is large. This
module measures r for each candidate MatMul on the user's data: per batch (`measure.batch` samples,
the batches the model runs), the largest token's max |x| over the median token's, padding rows left
out where an `attention_mask` input says which they are; the median over batches.

Measured on the real all-MiniLM-L6-v2 after the hf-embedder recipe (block 2 out, FFN 1,216 wide):
the five FFN output projections read r ≈ 8 in blocks 0–2 and 2–2.4 in blocks 3–4 (docstrings and
everyday sentences alike). Per-token scales on one block at a time moved the docstring mean by
+0.0014 / +0.0004 / +0.0009 in blocks 0–2 and by nothing in blocks 3–4, and the model without them
on blocks 3 and 4 kept the quality of per-token everywhere (0.9752 / 0.9060 against 0.9752 / 0.9050,
mean / min) while running faster (AMD EPYC family 26, Zen 5, 2 threads; docs/distill.md).

Written by hand: ONNX Runtime's quantizers have no per-token mode, so no tool measures where one
would pay.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

_MEASURED: dict[tuple[Any, ...], dict[str, float]] = {}  # repair retries and fallback scans re-quantize the same file


def outlier_ratios(src: Path, inputs_of: dict[str, str], feeds: dict[str, np.ndarray], batch: int) -> dict[str, float]:
    """{MatMul name: median over batches of largest / median token max |x| of its input}.
    `inputs_of` maps each MatMul to its input tensor; `feeds` holds the samples (first axis)."""
    from passes.quantize.activation_probe import batches_of

    wanted = sorted(set(inputs_of.values()))
    per_batch: dict[str, list[float]] = {t: [] for t in wanted}
    for outs, mask in batches_of(src, wanted, feeds, batch, "token-outliers"):
        for t, x in outs.items():
            ratio = _ratio(x, mask)
            if ratio is not None:
                per_batch[t].append(ratio)
    return {m: float(np.median(per_batch[t])) for m, t in inputs_of.items() if per_batch[t]}


def _ratio(x: np.ndarray, mask: np.ndarray | None) -> float | None:
    """Largest over median row max |x| (rows: every axis but the last), real tokens only when the
    mask matches the rows; None for an input of fewer than 2 rows or all zeros."""
    if x.ndim < 2:
        return None
    from passes.quantize.activation_probe import real_rows

    rows = np.abs(real_rows(x, mask)).max(axis=-1)
    if rows.size < 2:
        return None
    median = float(np.median(rows))
    return float(rows.max()) / median if median > 0 else None


def choose(cfg: Any, src: Path, ctx: Any, include: list[str] | None, exclude: list[str], metrics: dict[str, Any],
           notes: list[str]) -> list[str] | None:
    """The names of the MatMuls after an activation (`mlp`) whose input has token outliers on the
    user's data ([] for none: all per call), or `include` unchanged when there is no data to measure
    on (then every one of them is scaled per token, as `mlp` would)."""
    from optimize.errors import OptimizeError
    from passes.quantize.activation_probe import user_samples
    from passes.quantize.token_scales import candidate_inputs

    inputs_of = candidate_inputs(src, "mlp", include, exclude)
    if not inputs_of:
        return include  # the caller says that no MatMul reads an activation
    try:
        found = user_samples(ctx)
        if found is None:
            _note(notes, "per_token auto: no data (data.calibration, data.train or data.eval) to find token outliers "
                         "on; every MatMul after an activation is scaled per token")
            return include
        feeds, source = found
        batch = max(1, int(getattr(ctx.config.measure, "batch", 1)))
        key = (str(src), src.stat().st_mtime_ns, batch, source, tuple(sorted(inputs_of.items())))
        ratios = _MEASURED[key] if key in _MEASURED else _MEASURED.setdefault(
            key, outlier_ratios(src, inputs_of, feeds, batch))
    except OptimizeError:  # the user's data is unusable: say so as for any other step
        raise
    except Exception as exc:  # noqa: BLE001 - the measurement is a refinement: mlp's choice stands without it
        _note(notes, f"per_token auto: could not measure token outliers ({type(exc).__name__}: "
                     f"{str(exc).splitlines()[0][:160] if str(exc) else ''}); every MatMul after an activation is "
                     "scaled per token")
        return include
    kept = sorted(name for name, r in ratios.items() if r >= cfg.per_token_ratio)
    metrics["per_token_ratios"] = {name: round(r, 2) for name, r in sorted(ratios.items())}
    samples = max((len(v) for v in feeds.values() if np.ndim(v) > 0), default=1)
    _note(notes, f"per_token auto: {len(kept)} of {len(inputs_of)} MatMuls after an activation scaled per token, "
                 f"those whose largest token reads ≥ {cfg.per_token_ratio:g}x the median token ({samples} samples "
                 f"of {source}, batches of {batch}; ratios: "
                 + ", ".join(f"{r:.1f}" for _, r in sorted(ratios.items())) + ")"
                 + ("" if kept else "; all scaled per call"))
    return kept


def _note(notes: list[str], text: str) -> None:
    if text not in notes:  # a repair retry quantizes again with the same notes
        notes.append(text)
