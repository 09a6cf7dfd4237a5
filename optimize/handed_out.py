"""A model as the pipeline's last steps would most likely hand it out, for timing a choice.

The prune pass's shapes and the export's candidates are chosen by latency measured here; the graph
rewrites after the passes (optimize/pad_trim.py, optimize/softmax_guard.py) change what is fast, so
each candidate is timed with the rewrites its run would most likely keep. Kept apart from
optimize/rewrite_step.py, which those rewrites import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def enabled(mode: str, device: str) -> bool:
    """Whether a model timed to choose something (a shape, an export) should be timed with a rewrite
    in `mode`, as the pipeline's last steps would most likely hand it out: `always`, or `auto` on a
    CPU run (where `auto` decides)."""
    return mode == "always" or (mode == "auto" and device == "cpu")


def handed_out(path: Path, folder: Path, output: Any, device: str) -> tuple[Path, list[str]]:
    """`path` with the rewrites after the passes that would most likely apply to it (its padding cut,
    its Softmax guarded; `output` is the config's output section) written under `folder` (`path`
    itself when none applies), and what was done: for callers that time a model to choose something."""
    from optimize import pad_trim, softmax_guard

    done = []
    if enabled(output.pad_trim, device) and (cut := pad_trim.cut_copy(path, folder / "cut")) != path:
        path, done = cut, [*done, "padding cut"]
    if enabled(output.softmax_guard, device) and (guarded := softmax_guard.guarded_copy(path, folder / "guarded")) != path:
        path, done = guarded, [*done, "Softmax guarded"]
    return path, done
