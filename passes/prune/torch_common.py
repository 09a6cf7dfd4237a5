"""The torch building blocks of the prune pass, shared by its masked, structured and ONNX paths
(and by distillation students): layer selection, the `WeightMask` parametrization, layer
discovery, the output layers, example inputs, and parameters as the forward sees them.

Heavy imports (torch) happen inside the functions, so importing this module stays light.
"""

from __future__ import annotations

import fnmatch
from typing import TYPE_CHECKING, Any

import numpy as np

from passes.prune.masks import layer_entry

if TYPE_CHECKING:
    from passes.prune.config import PruneConfig


def matches(names: list[str], patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(n, p) for n in names for p in patterns)


def selected(cfg: PruneConfig, names: list[str]) -> bool:
    """A layer is selected when it matches an `include` pattern (or there are none) and no
    `exclude` pattern. `names` holds every name the layer goes by (module, parameter, node)."""
    if cfg.include and not matches(names, cfg.include):
        return False
    return not matches(names, cfg.exclude)


def short_list(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


_MASK_CLASS: Any = None


def weight_mask_class() -> Any:
    """`WeightMask`: a parametrization whose forward is `X * mask` (mask is a bool buffer, so it
    moves with `.to(device)` and is saved in `state_dict`). Built on first use so importing this
    module does not import torch; `passes.prune.WeightMask` resolves to it."""
    global _MASK_CLASS
    if _MASK_CLASS is None:
        import torch

        class WeightMask(torch.nn.Module):
            def __init__(self, mask: torch.Tensor) -> None:
                super().__init__()
                self.register_buffer("mask", mask.to(torch.bool))

            def forward(self, X: torch.Tensor) -> torch.Tensor:
                return X * self.mask

            def extra_repr(self) -> str:
                return f"density={self.mask.float().mean().item():.3f}"

        WeightMask.__module__ = "passes.prune"  # where users find it (PEP 562 there)
        WeightMask.__qualname__ = "WeightMask"
        _MASK_CLASS = WeightMask
    return _MASK_CLASS


def apply_mask(module: Any, keep: np.ndarray) -> None:
    """Mask `module.weight`: tighten an existing WeightMask in place, else register one (after any
    parametrization already there)."""
    import torch
    from torch.nn.utils import parametrize

    if keep.all():
        return
    mask_cls = weight_mask_class()
    mask = torch.from_numpy(np.ascontiguousarray(keep)).to(module.weight.device)
    if parametrize.is_parametrized(module, "weight"):
        for p in module.parametrizations.weight:
            if isinstance(p, mask_cls):
                p.mask &= mask
                return
    parametrize.register_parametrization(module, "weight", mask_cls(mask))


def torch_layers(module: Any) -> list[tuple[str, Any]]:
    """Conv / ConvTranspose / Linear modules with a materialized weight, in module order."""
    import torch
    from torch import nn

    out = []
    for name, m in module.named_modules():
        if not isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
            continue
        w = getattr(m, "weight", None)
        if isinstance(w, torch.Tensor) and not isinstance(w, nn.parameter.UninitializedParameter):
            out.append((name, m))
    return out


def example_args(model: Any, ctx: Any) -> tuple[Any, ...] | None:
    """Example inputs from the declared input spec, on the module's device; None when unknown."""
    import torch

    specs = model.inputs or getattr(ctx, "inputs", None) or []
    if not specs:
        return None
    rng = np.random.default_rng(getattr(ctx, "seed", 0))
    dev = next((p.device for p in model.module.parameters()), torch.device("cpu"))
    return tuple(torch.from_numpy(s.random(2, rng)).to(dev) for s in specs)


def torch_output_layers(module: Any, layers: list[tuple[str, Any]], args: tuple[Any, ...] | None) -> tuple[set[str], str]:
    """The layers whose outputs are the model's outputs: found by running the model once with
    hooks (a layer whose output tensor is returned as is; else the last layer to run). Without
    example inputs, the last Conv/Linear in module order."""
    import torch
    from torch.utils._pytree import tree_leaves

    if not layers:
        return set(), ""
    fallback = ({layers[-1][0]}, "the last Conv/Linear in module order")
    if args is None:
        return fallback
    order: list[str] = []
    produced: dict[str, list[Any]] = {}

    def hook_for(name: str) -> Any:
        def hook(_m: Any, _i: Any, out: Any) -> None:
            order.append(name)
            produced.setdefault(name, []).extend(t for t in tree_leaves(out) if isinstance(t, torch.Tensor))

        return hook

    handles = [m.register_forward_hook(hook_for(n)) for n, m in layers]
    was_training = module.training
    try:
        module.eval()
        with torch.no_grad():
            result = module(*args)
    except Exception:  # an unusual forward signature: fall back to module order
        return fallback
    finally:
        for h in handles:
            h.remove()
        module.train(was_training)
    leaves = [t for t in tree_leaves(result) if isinstance(t, torch.Tensor)]
    direct = {n for n, ts in produced.items() if any(t is leaf for t in ts for leaf in leaves)}
    if direct:
        return direct, "its output is a model output"
    if order:
        return {order[-1]}, "the last Conv/Linear to run"
    return fallback


def tensor_leaves(out: Any) -> list[Any]:
    import torch
    from torch.utils._pytree import tree_leaves

    return [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]


def effective_params(module: Any) -> list[Any]:
    """Every parameter as the forward sees it: a parametrized weight through its masks."""
    from torch.nn.utils import parametrize

    out = []
    for sub in module.modules():
        out.extend(sub.parameters(recurse=False))
        if parametrize.is_parametrized(sub):
            for tname in sub.parametrizations.keys():
                out.append(getattr(sub, tname).detach())
    # the originals of parametrized tensors live in ParametrizationList modules: drop them
    originals = {
        id(plist.original)
        for sub in module.modules()
        if parametrize.is_parametrized(sub)
        for plist in sub.parametrizations.values()
        if hasattr(plist, "original")
    }
    return [p for p in out if id(p) not in originals]


def torch_in_axes(m: Any) -> tuple[int, ...]:
    from torch import nn

    nd = m.weight.dim()
    if isinstance(m, nn.modules.conv._ConvTransposeNd):  # (in, out/groups, *kernel)
        return (0, *range(2, nd))
    return tuple(range(1, nd))  # Linear (out, in); Conv (out, in/groups, *kernel)


def weight_np(m: Any) -> np.ndarray:
    return m.weight.detach().float().cpu().numpy()


def torch_sparsity_metrics(layers: list[tuple[str, Any]], selected: set[str]) -> dict[str, Any]:
    tot = zero = sel_tot = sel_zero = 0
    for name, m in layers:
        w = m.weight.detach()
        n, z = int(w.numel()), int(w.numel() - w.count_nonzero().item())
        tot, zero = tot + n, zero + z
        if name in selected:
            sel_tot, sel_zero = sel_tot + n, sel_zero + z
    return {
        "selected_weights_total": sel_tot,
        "selected_weights_zero": sel_zero,
        "selected_sparsity": round(sel_zero / sel_tot, 6) if sel_tot else 0.0,
        "weights_total": tot,
        "weights_zero": zero,
        "sparsity": round(zero / tot, 6) if tot else 0.0,
    }


def torch_metrics(
    cfg: PruneConfig, module: Any, pruned: set[str],
    shapes: dict[str, tuple[int, ...]], params_before: int, extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The pass's metrics for a pruned torch module: per-layer entries, sparsity, parameters."""
    layers = torch_layers(module)
    entries = []
    for n, m in layers:
        if n in pruned:
            w = m.weight.detach()
            zeros = int(w.numel() - w.count_nonzero().item())
            entry = layer_entry(n, shapes[n], tuple(w.shape), zeros, int(w.numel()))
            if extra and n in extra:
                entry.update(extra[n])
            entries.append(entry)
    params_after = sum(p.numel() for p in module.parameters())
    metrics: dict[str, Any] = {"method": cfg.method, "target_sparsity": cfg.sparsity}
    if cfg.method == "magnitude":
        metrics["scope"] = cfg.scope
    if cfg.method == "nm":
        metrics["pattern"] = f"{cfg.n}:{cfg.m}"
    metrics.update(torch_sparsity_metrics(layers, pruned))
    metrics.update(
        params_before=int(params_before),
        params_after=int(params_after),
        params_nonzero_after=int(sum(int(p.count_nonzero().item()) for p in effective_params(module))),
        layers_pruned=len(entries),
        layers=entries,
    )
    return metrics
