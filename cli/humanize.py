"""Numbers for people: 12.2 M weights, 21.7 kB, 1.9 %. `--json` keeps the raw values."""

from __future__ import annotations

import math
from typing import Any


def human_count(n: Any) -> str:
    """12150158 → 12.2 M; below 10,000 the digits themselves (9,736)."""
    if not isinstance(n, int | float) or isinstance(n, bool):
        return "?" if n is None else str(n)
    if abs(n) < 10_000:
        return f"{n:,}" if isinstance(n, int) else f"{n:.4g}"
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g} {unit}"
    return str(n)


def human_bytes(n: Any) -> str:
    if not isinstance(n, int | float):
        return "?"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} B"


def human_fraction(x: Any) -> str:
    """A share as a percentage with 3 significant digits: 0.019 → 1.9%, 5.99e-06 → 0.0006%."""
    if not isinstance(x, int | float) or (isinstance(x, float) and not math.isfinite(x)):
        return "—" if x is None else str(x)
    if x == 0:
        return "0%"
    pct = x * 100
    return f"{pct:.3g}%" if abs(pct) >= 0.001 else f"{pct:.1e}%"
