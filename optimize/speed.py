"""Speed ratios with their uncertainty: a 95 % interval and a verdict with a stated tolerance.

A ratio (speedup, parallel speedup, GPU speedup) is the median of per-round ratios from an
interleaved run (A B, B A, ...), so a slow spell of the machine hits both sides of a round. Its
interval is a percentile bootstrap of that median: the rounds are resampled with replacement
(2,000 times, seeded, so a report is reproducible from its own `round_ratios`), the median of each
resample is taken, and the 2.5th and 97.5th percentiles of those medians are the bounds.

The verdict compares the interval with a band of ± tolerance around 1 (default 3 %): `faster` when
the lower bound is above 1 + tolerance, `slower` when the upper bound is below 1 − tolerance,
otherwise `no measurable change`. The run is *settled* when the verdict cannot move with more
rounds: faster, slower, or the whole interval inside the band; until then more rounds are added
(up to a budget, see optimize.speed_metrics).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

TOLERANCE = 0.03
CONFIDENCE = 0.95
RESAMPLES = 2000
SEED = 0
FASTER, SLOWER, SAME = "faster", "slower", "no measurable change"

F_INTERVAL = (
    f"{CONFIDENCE:.0%} interval: percentile bootstrap of the median ({RESAMPLES:,} resamples of the rounds, seed {SEED}); "
    "faster if low > 1 + tolerance, slower if high < 1 − tolerance, else no measurable change"
)


def round_ratios(numerator: Sequence[float], denominator: Sequence[float]) -> list[float]:
    """Per-round ratios numerator / denominator of two interleaved series (rounds where the
    denominator is 0 are skipped: a timer that reads 0 says nothing)."""
    return [float(a) / float(b) for a, b in zip(numerator, denominator, strict=True) if b > 0]


def median_interval(ratios: Sequence[float], *, resamples: int = RESAMPLES, confidence: float = CONFIDENCE,
                    seed: int = SEED) -> tuple[float, float]:
    """Percentile-bootstrap interval of the median of `ratios`."""
    arr = np.asarray(ratios, dtype=float)
    if arr.size == 0:
        raise ValueError("no ratios to bootstrap")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, arr.size, size=(resamples, arr.size))
    medians = np.median(arr[picks], axis=1)
    tail = (1.0 - confidence) / 2.0 * 100.0
    lo, hi = np.percentile(medians, [tail, 100.0 - tail])
    return float(lo), float(hi)


def verdict(low: float, high: float, tolerance: float = TOLERANCE) -> str:
    if low > 1.0 + tolerance:
        return FASTER
    if high < 1.0 - tolerance:
        return SLOWER
    return SAME


def settled(low: float, high: float, tolerance: float = TOLERANCE) -> bool:
    """True when more rounds cannot change the verdict's meaning: the interval is clear of the band
    (faster/slower) or lies inside it (a tie, shown as one)."""
    return low > 1.0 + tolerance or high < 1.0 - tolerance or (low >= 1.0 - tolerance and high <= 1.0 + tolerance)


@dataclass
class RatioEstimate:
    value: float
    low: float
    high: float
    verdict: str
    tolerance: float
    rounds: int

    @property
    def settled(self) -> bool:
        return settled(self.low, self.high, self.tolerance)

    def inputs(self) -> dict[str, Any]:
        """What a report's metric `inputs` records about the interval (beside the round ratios)."""
        return {"confidence": CONFIDENCE, "resamples": RESAMPLES, "seed": SEED, "settled": self.settled}


def estimate(ratios: Sequence[float], tolerance: float = TOLERANCE) -> RatioEstimate:
    """Median, interval and verdict of a list of per-round ratios."""
    lo, hi = median_interval(ratios)
    return RatioEstimate(float(np.median(np.asarray(ratios, dtype=float))), lo, hi, verdict(lo, hi, tolerance),
                         tolerance, len(ratios))


def format_ratio(value: float, interval: Sequence[float] | None, verdict_text: str | None) -> str:
    """`1.04x (0.95–1.12), no measurable change`; just `1.04x` without an interval."""
    text = f"{value:.2f}x"
    if interval is not None:
        text += f" ({interval[0]:.2f}–{interval[1]:.2f})"
    if verdict_text:
        text += f", {verdict_text}"
    return text


@dataclass
class SpeedGate:
    passed: bool
    inconclusive: bool
    message: str


def judge_min(name: str, limit: float, value: float, interval: Sequence[float] | None, bound: str) -> SpeedGate:
    """A minimum-speed gate judged on the interval. `bound: upper` (default): fails only when the
    measurement shows the limit missed (the upper bound below it); an interval that contains the
    limit passes as inconclusive. `bound: lower`: passes only when the lower bound clears it."""
    lo, hi = (interval[0], interval[1]) if interval is not None else (value, value)
    shown = f"{value:.4g}x" + (f" (95% interval {lo:.4g}–{hi:.4g})" if interval is not None else "")
    if lo >= limit:
        return SpeedGate(True, False, f"{name}: {shown} >= {limit}x")
    if bound == "lower":
        return SpeedGate(False, False, f"{name}: {shown}, lower bound {lo:.4g} < {limit}x FAILED (gates.speed_bound: lower)")
    if hi < limit:
        return SpeedGate(False, False, f"{name}: {shown} < {limit}x FAILED")
    return SpeedGate(True, True, f"{name}: {shown} includes {limit}x: inconclusive, passed "
                                 "(gates.speed_bound: lower fails it unless the lower bound clears the limit)")


__all__ = ["CONFIDENCE", "F_INTERVAL", "FASTER", "RESAMPLES", "SAME", "SLOWER", "TOLERANCE", "RatioEstimate",
           "SpeedGate", "estimate", "format_ratio", "judge_min", "median_interval", "round_ratios", "settled", "verdict"]
