"""Least-squares refit after structured pruning: each Linear layer whose inputs were removed (an
FFN's second layer, an attention output projection) gets new weights and bias so that, on data
samples and on the pruned model's own inputs, its outputs match the unpruned model's same layer.

One ridge regression per layer, solved in closed form ((XᵀX + λI)⁻¹XᵀY, float64, λ a small
fraction of the mean diagonal), layer by layer in module order so each layer sees the corrections
before it. This is the layer-wise reconstruction of post-training pruning (Kwon et al. 2022, "A
Fast Post-Training Pruning Framework for Transformers"; Frantar & Alistarh 2023, SparseGPT): the
kept channels take over what the removed ones did, as far as a linear map can, before any
distillation — on a pretrained sentence encoder it brings the pruned embeddings much closer to the
original's than pruning alone (docs/distill.md has the numbers).

Rows are tokens: with an `attention_mask` input, padding positions are left out. A layer the
unpruned model never calls through its forward is skipped. A layer whose outputs were pruned as
well (a CNN's first classifier layer, an MLP's middle layer) is solved against the unpruned layer's
outputs it kept (`kept_outputs`, recorded as Torch-Pruning removes channels). The unpruned model is
compared in the pruned one's form (nn.MultiheadAttention split into q/k/v projections), so layer names
match.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

BATCH = 32
DAMP = 1e-2


def _rows(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is not None and x.dim() == 3 and tuple(x.shape[:2]) == tuple(mask.shape):
        return x[mask.bool()]
    return x.reshape(-1, x.shape[-1])


class _Capture:
    """A forward hook keeping a layer's inputs or outputs, as 2-D rows, over several batches."""

    def __init__(self, layer: nn.Module, want: str) -> None:
        self.rows: list[torch.Tensor] = []
        self.mask: torch.Tensor | None = None
        self.want = want
        self.handle = layer.register_forward_hook(self._hook)

    def _hook(self, _m: Any, args: tuple[Any, ...], out: Any) -> None:
        x = args[0] if self.want == "in" else out
        self.rows.append(_rows(x.detach(), self.mask).float())  # float64 only while solving one layer

    def take(self) -> torch.Tensor | None:
        self.handle.remove()
        return torch.cat(self.rows) if self.rows else None


def _run(module: nn.Module, capture: _Capture, batches: list[tuple[list[torch.Tensor], torch.Tensor | None]]) -> torch.Tensor | None:
    with torch.no_grad():
        for xs, mask in batches:
            capture.mask = mask
            module(*xs)
    return capture.take()


def _targets(original: nn.Module, names: list[str], batches: list[Any]) -> dict[str, torch.Tensor | None]:
    """Every layer's outputs in the unpruned model, from one pass over the batches."""
    caps = {n: _Capture(original.get_submodule(n), "out") for n in names}
    with torch.no_grad():
        for xs, mask in batches:
            for c in caps.values():
                c.mask = mask
            original(*xs)
    return {n: c.take() for n, c in caps.items()}


def _batches(ds: Any, keys: list[str], dev: Any) -> list[tuple[list[torch.Tensor], torch.Tensor | None]]:
    from passes.prune.fisher import text_batches

    out = []
    mask_at = keys.index("attention_mask") if "attention_mask" in keys else None
    for xs in text_batches(ds, keys, dev):
        out.append((xs, xs[mask_at] if mask_at is not None and xs[mask_at].dim() == 2 else None))
    return out


def _solve(x: torch.Tensor, y: torch.Tensor, bias: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    if bias:
        x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype, device=x.device)], 1)
    g = x.T @ x
    g += DAMP * g.diagonal().mean().clamp(min=1e-12) * torch.eye(len(g), dtype=g.dtype, device=g.device)
    w = torch.linalg.solve(g, x.T @ y)
    return (w[:-1].T, w[-1]) if bias else (w.T, None)


def refit(student: nn.Module, original: nn.Module, names: list[str], ds: Any, keys: list[str],
          kept_outputs: dict[str, list[int]] | None = None) -> list[dict[str, Any]]:
    """Refit the Linear layers `names` of `student` (in module order) against the same layers of
    `original`. `kept_outputs`: for a layer whose outputs were pruned too, which of the original
    layer's outputs it still has (in order). Returns one row per layer: name, rows used, relative
    output error before/after, or `skipped` with the reason."""
    kept_outputs = kept_outputs or {}
    report, todo = [], []
    for name in names:
        why = _cannot_refit(student, original, name, kept_outputs.get(name))
        if why:
            report.append({"name": name, "skipped": why})
        else:
            todo.append(name)
    if not todo:
        return report
    dev = next((p.device for p in student.parameters()), torch.device("cpu"))
    batches = _batches(ds, keys, dev)
    was = student.training, original.training
    student.eval()
    original.eval()
    try:
        targets = _targets(original, todo, batches)
        for name in todo:
            report.append(_refit_layer(student, name, targets.pop(name), kept_outputs.get(name), batches))
    finally:
        student.train(was[0])
        original.train(was[1])
    return report


def _cannot_refit(student: nn.Module, original: nn.Module, name: str, kept: list[int] | None) -> str | None:
    """Why layer `name` cannot be refit (before any forward pass), else None."""
    try:
        ref = original.get_submodule(name)
    except AttributeError:
        return "the unpruned model has no layer of this name"
    width = len(kept) if kept is not None else getattr(ref, "out_features", None)
    if width != student.get_submodule(name).out_features:
        return "its outputs were pruned and which of the unpruned layer's outputs it kept is not known"
    return None


def _refit_layer(student: nn.Module, name: str, y: torch.Tensor | None, kept: list[int] | None,
                 batches: list[Any]) -> dict[str, Any]:
    layer = student.get_submodule(name)
    x = _run(student, _Capture(layer, "in"), batches)
    if x is None or y is None or len(x) != len(y):
        return {"name": name, "skipped": "the unpruned model does not call this layer in its forward"}
    if kept is not None:
        y = y[:, kept]
    x, y = x.double(), y.double()
    before = _rel_error(layer, x, y)
    w, b = _solve(x, y, layer.bias is not None)
    with torch.no_grad():
        layer.weight.copy_(w.to(layer.weight.dtype))
        if b is not None:
            layer.bias.copy_(b.to(layer.bias.dtype))
    return {"name": name, "rows": len(x), "rel_error_before": before, "rel_error_after": _rel_error(layer, x, y)}


def _rel_error(layer: nn.Linear, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        pred = x @ layer.weight.double().T + (layer.bias.double() if layer.bias is not None else 0.0)
    return round(float((pred - y).norm() / y.norm().clamp(min=1e-12)), 6)


def input_pruned_layers(module: nn.Module, shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """Linear layers of `module`, in module order, whose input width shrank against `shapes`
    (the weight shapes before pruning)."""
    return [
        n for n, m in module.named_modules()
        if isinstance(m, nn.Linear) and n in shapes and len(shapes[n]) == 2 and m.in_features < shapes[n][1]
    ]

