"""prune: remove weights by magnitude (unstructured, layer-wise or global), whole channels /
neurons (structured, through Torch-Pruning's dependency graph so residuals and concatenations stay
consistent), or N:M semi-structured patterns. Torch and ONNX forms.

What is hand-written here, and why:

- Torch masks are a `torch.nn.utils.parametrize` parametrization (`WeightMask`: `X * mask`), not
  `torch.nn.utils.prune`: prune's forward-pre-hook and `weight_orig` renaming do not compose with
  the parametrizations that a later quantize pass stacks on the same weight, whereas
  parametrizations stack, survive training (a distill pass trains the module: masked weights stay
  zero because the forward multiplies by the mask) and are baked into plain weights by
  `optimize.export.finalized_module`.
- Magnitude and N:M masks are a few lines of numpy (argpartition / argsort per group) shared by
  the torch and ONNX forms, so both forms prune identically and the counts are exact.
- ONNX pruning rewrites weight tensors in the ModelProto itself — initializers, Constant nodes'
  `value` and the bodies of If/Loop/Scan subgraphs — because no library prunes ONNX initializers.
  Weight discovery is shared with the report's weight count (`optimize.inspect_onnx`).
- Structured pruning is Torch-Pruning's (`MetaPruner` + `MagnitudeImportance`); `torch_structured` only
  picks the ignored layers (the output layer, include/exclude) and checks the result still runs
  with the same output shapes.

Unstructured and N:M zeros make no dense runtime faster (ONNX Runtime on CPU): the pass says so in
its notes; only structured pruning shrinks the matmuls.

Modules: `config` (settings), `prune_pass` (checks and dispatch), `masks` (numpy keep-masks),
`torch_common` (selection, `WeightMask`, layers, output layers), `torch_masked`,
`torch_structured` (+ `transformer`), `onnx_masked`, `onnx_structured`, `util` (schedules,
quality, MACs, sizes, speed notes), `finetune` (the distill loop between gradual steps), `gpu`
(2:4 kernels on CUDA), `scan` (`optimize prune-scan`).
"""

from __future__ import annotations

from typing import Any

from passes.prune.config import PruneConfig
from passes.prune.prune_pass import PrunePass

__all__ = ["PruneConfig", "PrunePass", "WeightMask"]


def __getattr__(name: str) -> Any:  # PEP 562: `from passes.prune import WeightMask`, built on first use
    if name == "WeightMask":
        from passes.prune.torch_common import weight_mask_class

        return weight_mask_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
