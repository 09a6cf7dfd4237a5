"""A stand-in for a dropped attention sublayer (`drop_attention` with `attention_stand_in: mean`).

A post-LN attention sublayer computes y = LayerNorm(x + z), z its attention's change to each token.
Taken out (passes/prune/sublayers.py), y = x: every token loses what the attention mixed into it.
The stand-in keeps the sublayer's LayerNorm and replaces z by one linear map of the mean of the
sequence's real tokens, y = LayerNorm(x + W·mean(x) + c): the same change for every token of a
sequence, as if each attended uniformly. W and c are fitted by least squares on data so that the
stand-in's pre-norm sum x + W·mean(x) + c matches the input model's own (its x' + z') token by
token; the input model's x' differs from the pruned model's x when other units went before, and
the fit takes up the part of that drift a per-sequence shift can.

Why: on the real all-MiniLM-L6-v2 (block 2's attention out, nothing else pruned, untrained;
cosine mean / min against the input model, held-out docstrings and everyday sentences), the
identity left 0.946 / 0.865 and 0.958 / 0.882; the mean stand-in 0.980 / 0.936 and 0.985 / 0.933
(docs/distill.md). After distillation the gain was gone (trained, the identity's student ends at
the same cosine), and its int8 model ran 1.252x the int8-only model where the identity's ran 1.307x:
its map is one d×d product per sequence, but its masked mean, add and LayerNorm run over every token,
and the FFN after it may take per-token input scales. For pruning without distillation.

The mean counts the tokens the sublayer's attention mask lets a query attend (all of them when the
model passes no mask), so a sentence reads the same padded or alone.

Written by hand: no pruning library replaces a sublayer by a fitted cheaper one.

Imports torch at module level: it is only imported from inside `PrunePass.run`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

RIDGE = 1e-4  # relative to the mean diagonal of the normal equations: sequences whose means barely vary


def attended(attention_mask: torch.Tensor | None, hidden: torch.Tensor) -> torch.Tensor:
    """(batch, tokens, 1) weights, 1 for a token the mask lets queries attend, else 0. Masks come
    boolean (True: attend; SDPA), additive (0 or a large negative; eager) or 2-D (1: a token), with
    a query axis or none; a token counts when no query is kept from it (padded query rows may be
    left all open)."""
    b, t = hidden.shape[0], hidden.shape[1]
    if attention_mask is None:
        return hidden.new_ones(b, t, 1)
    m = attention_mask
    if m.dtype == torch.bool:
        keep = m
    elif m.dim() == 2:
        keep = m > 0
    else:
        keep = m > -1.0  # additive: 0 kept, the dtype's minimum (or -inf / -10000) masked
    if keep.dim() == 4:  # (batch, heads or 1, queries or 1, keys)
        keep = keep.all(dim=2)[:, 0]
    elif keep.dim() == 3:  # (batch, queries or 1, keys)
        keep = keep.all(dim=1)
    return keep[:, -t:].to(hidden.dtype).unsqueeze(-1).expand(b, t, 1)


class MeanStandIn(nn.Module):
    """y = norm(x + mix(mean of the attended tokens of x)); returns y in the replaced sublayer's
    output form (`extra` Nones after it when that returned a tuple; -1: a bare tensor)."""

    def __init__(self, norm: nn.LayerNorm, width: int, extra: int) -> None:
        super().__init__()
        self.mix = nn.Linear(width, width)
        nn.init.zeros_(self.mix.weight)
        nn.init.zeros_(self.mix.bias)
        self.norm = norm
        self.extra = extra
        self.tap: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None  # the fit's

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                *args: Any, **kwargs: Any) -> Any:
        w = attended(attention_mask, hidden_states)
        mean = (hidden_states * w).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp_min(1.0)
        if self.tap is not None:
            self.tap(hidden_states, mean, w)
        out = self.norm(hidden_states + self.mix(mean))
        return out if self.extra < 0 else (out, *([None] * self.extra))


def make(sublayer: nn.Module, extra: int) -> MeanStandIn:
    """A stand-in (fitted later) for `sublayer`, holding a copy of its last LayerNorm."""
    norm = [m for m in sublayer.modules() if isinstance(m, nn.LayerNorm)][-1]
    return MeanStandIn(copy.deepcopy(norm), norm.normalized_shape[0], extra)


def fit(student: nn.Module, stand_in: MeanStandIn, reference: nn.Module, target_norm: nn.LayerNorm,
        batches: Callable[[], Any]) -> dict[str, float]:
    """Fit `stand_in`'s mix so that its pre-norm sum matches `target_norm`'s input in `reference`
    (the input model's sublayer it replaces), over the attended tokens of `batches()` (each a list
    of the models' positional inputs). Returns the fit's R² on the change it had to make."""
    width = stand_in.mix.in_features
    gram = torch.zeros(width + 1, width + 1, dtype=torch.float64)
    cross = torch.zeros(width + 1, width, dtype=torch.float64)
    moments = {"n": 0.0, "sum": torch.zeros(width, dtype=torch.float64), "sq": 0.0}
    seen: dict[str, torch.Tensor] = {}

    def tap(x: torch.Tensor, mean: torch.Tensor, w: torch.Tensor) -> None:
        seen["x"], seen["mean"], seen["w"] = x.detach(), mean.detach(), w.detach()

    grab = target_norm.register_forward_pre_hook(lambda _m, a: seen.__setitem__("target", a[0].detach()))
    stand_in.tap = tap
    models = (student, reference)
    modes = [m.training for m in models]
    try:
        for m in models:
            m.eval()
        with torch.no_grad():
            for xs in batches():
                student(*xs)
                reference(*xs)
                keep = seen["w"][..., 0].reshape(-1) > 0
                x = seen["x"].double().reshape(-1, width)[keep].cpu()
                need = seen["target"].double().reshape(-1, width)[keep].cpu() - x
                feats = seen["mean"].double().expand_as(seen["x"]).reshape(-1, width)[keep].cpu()
                feats = torch.cat([feats, torch.ones(len(feats), 1, dtype=torch.float64)], 1)
                gram += feats.T @ feats
                cross += feats.T @ need
                moments["n"] += len(need)
                moments["sum"] += need.sum(0)
                moments["sq"] += float((need ** 2).sum())
    finally:
        grab.remove()
        stand_in.tap = None
        for m, mode in zip(models, modes, strict=True):
            m.train(mode)
    ridge = RIDGE * float(torch.diagonal(gram).mean())
    sol = torch.linalg.solve(gram + ridge * torch.eye(width + 1, dtype=torch.float64), cross)
    with torch.no_grad():
        stand_in.mix.weight.copy_(sol[:width].T.to(stand_in.mix.weight))
        stand_in.mix.bias.copy_(sol[width].to(stand_in.mix.bias))
    n = max(moments["n"], 1.0)
    total = moments["sq"] - float((moments["sum"] ** 2).sum()) / n
    residual = moments["sq"] - 2 * float((sol * cross).sum()) + float((sol * (gram @ sol)).sum())
    return {"r2": round(1 - residual / total, 4) if total > 0 else None, "tokens": int(n)}


def _slots(module: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute, child) of every sublayer taken out (NoAttention) or stood in for, in order."""
    from passes.prune.sublayers import NoAttention

    return [(parent, attr, child) for _, parent in module.named_modules()
            for attr, child in parent.named_children() if isinstance(child, (NoAttention, MeanStandIn))]


def stand_in_all(cfg: Any, name: str, model: Any, original: Any, removed: list[int], ctx: Any,
                 measure: bool = True) -> dict[str, Any]:
    """Put a mean stand-in where each attention sublayer went (in `model`, in place; `removed`: their
    blocks' indices in `original`, ascending) and fit each in block order on importance_samples of
    data.calibration (or data.train) against `original`; refits stand-ins already there (after other
    units went). Returns the step's metrics (`measure`: with the output cosine on data.eval)."""
    from passes.prune import util as U
    from passes.prune.blocks import block_list
    from passes.prune.fisher import fit_data, text_batches
    from passes.prune.sublayers import NoAttention, sublayer_names

    slots = _slots(model.module)
    where = block_list(original.module, "drop_attention")
    if where is None or len(slots) != len(removed):
        raise RuntimeError(f"attention_stand_in: {len(slots)} sublayers taken out, {len(removed)} expected")
    blocks = where[2]
    names = sublayer_names(blocks)
    if names is None:
        raise RuntimeError("attention_stand_in: the input model's attention sublayers are no longer found")
    ds, keys = fit_data(cfg, name, model, ctx, "attention_stand_in fits")
    inputs = [s.name for s in model.inputs]
    dev = next((p.device for p in model.module.parameters()), torch.device("cpu"))
    fits = []
    for (parent, attr, child), b in zip(slots, removed, strict=True):
        sub = getattr(blocks[b], names[b])
        if isinstance(child, NoAttention):
            child = make(sub, child.extra).to(dev)
            setattr(parent, attr, child)
        norm = [m for m in sub.modules() if isinstance(m, nn.LayerNorm)][-1]
        fits.append(fit(model.module, child, original.module, norm, lambda: text_batches(ds, keys, dev)))
    ctx.log.info("prune: mean stand-ins fitted for the attention of blocks %s (R² %s)", removed, [f["r2"] for f in fits])
    out = {"form": "mean", "blocks": list(removed), "fit_r2": [f["r2"] for f in fits],
           "tokens": fits[0]["tokens"] if fits else 0, "samples": len(ds)}
    if measure:
        eval_ds, eval_desc = U.eval_inputs(ctx, model.inputs)
        quality = U.quality(model.module, eval_ds, inputs, U.torch_outputs(original.module, eval_ds, inputs))
        out["quality_after"] = {**quality, "on": eval_desc}
    return out
