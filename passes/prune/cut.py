"""One kind of depth cut (passes/prune/blocks.py searches and applies any of them): whole blocks
(`drop_layers`) or attention sublayers (`drop_attention`, passes/prune/sublayers.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Cut:
    """One kind of depth cut: `count` units (blocks, or attention sublayers), `remove(gone)` takes
    those out for a measurement and returns the undo, `commit(gone)` takes them out for good."""

    what: str  # the config field: drop_layers / drop_attention
    noun: str  # "blocks" / "attention sublayers"
    unit: str  # the metrics' key prefix: blocks / attention_sublayers
    count: int
    remove: Callable[[tuple[int, ...]], Callable[[], None]]
    commit: Callable[[tuple[int, ...]], None]
