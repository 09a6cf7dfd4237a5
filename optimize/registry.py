"""The one registry of passes: explicit names, no plugin magic.

Each entry names a module and a class; the module is imported on first use (by name, so the
library never imports `passes/`: the dependency runs passes → optimize only). Pass modules are
light at import time (their heavy imports live in `run`), so building the config schema, which
needs every pass's config class, stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from optimize.pass_api import Pass

_PASSES: dict[str, str] = {
    "prune": "passes.prune.prune_pass:PrunePass",
    "quantize": "passes.quantize:QuantizePass",
    "distill": "passes.distill.distill_pass:DistillPass",
    "export": "passes.export:ExportPass",
    "graph": "passes.graph:GraphPass",
    "fp16": "passes.fp16:Fp16Pass",
}


def names() -> list[str]:
    return list(_PASSES)


def get(name: str) -> type[Pass]:
    try:
        target = _PASSES[name]
    except KeyError:
        raise KeyError(name) from None
    module_name, cls_name = target.split(":")
    return getattr(importlib.import_module(module_name), cls_name)


def all_passes() -> dict[str, type[Pass]]:
    return {n: get(n) for n in _PASSES}
