"""Queries and keys at a lower rank per head (`qk_rank`).

A head's attention scores are a bilinear form of its input tokens: score(i, j) = x̃_iᵀ A x̃_j with
x̃ = [x; 1] and A = [W_q b_q]ᵀ [W_k b_k], of rank head_dim. Its best rank-r approximation in the
norm the tokens see (A weighted on both sides by the second moments C = E[x̃ x̃ᵀ] of the attention's
input tokens, measured on data) comes from one SVD of Lᵀ A L (C = L Lᵀ); its factors are the new
query and key projections, r outputs per head instead of head_dim. The values, the softmax's scale
and everything after stay as they were. The query/key projections and the score matmul shrink by
r / head_dim.

Why: on the real all-MiniLM-L6-v2, rank 16 of 32 in every head left held-out docstring embeddings at
cosine 0.983 / 0.905 (mean / min) before any training, where the same rank from a plain SVD of A gave
0.886 / 0.711 and halving each head's value/output path 0.885 / 0.764. At the speed of a third of the
FFN neurons, queries and keys at rank 16 plus a fifth of the FFN neurons trained to better embeddings
(docs/distill.md).

The module keeps its class's code for everything but the projections' head size: its class is
swapped for a subclass whose forward is transformers' BERT-family self-attention with the query/key
head size `qk_size`. That forward is checked once at full rank against the module's own on the
model's example inputs; a module that computes anything else (relative positions, rotary
embeddings, a cache) is refused.

Written by hand: Torch-Pruning removes whole heads or head dims of q, k and v alike, and low-rank
libraries factor a single weight, not the product of two, weighted by data.

Imports torch at module level: it is only imported from inside `PrunePass.run`.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch import nn

_NEEDED = ("query", "key", "value", "attention_head_size", "num_attention_heads", "config")


class LowRankQK:
    """Mixin: the BERT-family self-attention forward with queries and keys of `qk_size` dims per
    head (values keep `attention_head_size`); the softmax's scale is the module's, unchanged."""

    qk_size: int
    _attention_home: str  # the module of the class it extends: its transformers attention functions

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                cache: Any = None, **kwargs: Any) -> tuple[torch.Tensor, Any]:
        if cache is not None or kwargs.get("encoder_hidden_states") is not None:
            raise RuntimeError("qk_rank: attention with a key/value cache or cross-attention inputs is not supported")
        shape = hidden_states.shape[:-1]
        q = self.query(hidden_states).view(*shape, -1, self.qk_size).transpose(1, 2)
        k = self.key(hidden_states).view(*shape, -1, self.qk_size).transpose(1, 2)
        v = self.value(hidden_states).view(*shape, -1, self.attention_head_size).transpose(1, 2)
        home = sys.modules[self._attention_home]
        attend = home.ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, home.eager_attention_forward)
        out, weights = attend(self, q, k, v, attention_mask, dropout=self.dropout.p if self.training else 0.0,
                              scaling=_scaling(self), **kwargs)
        return out.reshape(*shape, -1).contiguous(), weights


_CLASSES: dict[type, type] = {}


def _scaling(m: Any) -> float:
    scaling = getattr(m, "scaling", None)
    return float(scaling) if isinstance(scaling, (int, float)) else m.attention_head_size ** -0.5


def _low_rank_class(cls: type) -> type:
    if issubclass(cls, LowRankQK):
        return cls
    if cls not in _CLASSES:
        _CLASSES[cls] = type(f"LowRankQK{cls.__name__}", (LowRankQK, cls), {"_attention_home": _home(cls)})
    return _CLASSES[cls]


def _home(cls: type) -> str | None:
    """The module of the first class in `cls`'s line that has transformers' attention functions."""
    for c in cls.__mro__:
        home = sys.modules.get(c.__module__)
        if all(hasattr(home, f) for f in ("ALL_ATTENTION_FUNCTIONS", "eager_attention_forward")):
            return c.__module__
    return None


def why_not(m: nn.Module) -> str | None:
    """Why `m` cannot take low-rank queries and keys (None: it can, subject to the full-rank check)."""
    missing = [a for a in _NEEDED if not hasattr(m, a)]
    if missing:
        return f"{type(m).__name__} lacks {', '.join(missing)} (transformers' BERT-family self-attention has them)"
    if _home(type(m)) is None:
        return f"{type(m).__name__}'s module has no transformers attention functions"
    if not (m.query.out_features == m.key.out_features == m.value.out_features == m.num_attention_heads * m.attention_head_size):
        return f"{type(m).__name__}'s query, key and value widths differ"
    return None


def targets(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every self-attention module, in order; ConfigError when one cannot take
    low-rank queries and keys, or there is none."""
    from optimize.errors import ConfigError
    from passes.prune.transformer import find_attention

    found = [(a.name, a.module) for a in find_attention(module)]
    if not found:
        raise ConfigError("qk_rank needs a transformer with query / key / value projections; none found in this model")
    for name, m in found:
        reason = why_not(m)
        if reason:
            raise ConfigError(f"qk_rank: attention {name}: {reason}")
    return found


def check_forward(module: nn.Module, found: list[tuple[str, nn.Module]], args: Any) -> None:
    """ConfigError unless the low-rank forward at full rank gives the model's own outputs."""
    from optimize.errors import ConfigError
    from passes.prune.torch_common import tensor_leaves

    was_training = module.training
    module.eval()
    classes = [type(m) for _, m in found]
    try:
        with torch.no_grad():
            before = tensor_leaves(module(*args))
            for _, m in found:
                m.qk_size = m.attention_head_size
                m.__class__ = _low_rank_class(type(m))
            after = tensor_leaves(module(*args))
    except Exception as exc:  # noqa: BLE001 — any failure means the forward is not the BERT family's
        raise ConfigError(f"qk_rank: the attention modules ({classes[0].__name__}) do not run as BERT-family "
                          f"self-attention ({type(exc).__name__}: {str(exc)[:160]})") from None
    finally:
        for (_, m), cls in zip(found, classes, strict=True):
            m.__class__ = cls
            m.__dict__.pop("qk_size", None)  # the model is left as it came
        module.train(was_training)
    scale = max(float(b.abs().max()) for b in before) or 1.0
    if len(before) != len(after) or any(a.shape != b.shape or float((a - b).abs().max()) > 1e-4 * scale
                                        for a, b in zip(after, before, strict=True)):
        raise ConfigError(f"qk_rank: {classes[0].__name__} computes attention otherwise than BERT-family "
                          "self-attention (e.g. relative positions): its outputs changed at full rank")


def input_moments(module: nn.Module, found: list[tuple[str, nn.Module]], ds: Any, keys: list[str]) -> list[torch.Tensor]:
    """Per attention module, E[x̃ x̃ᵀ] (float64, x̃ = [x; 1]) over the real tokens (attention_mask 1,
    when the model takes one) of its input on `ds`."""
    from passes.prune.fisher import text_batches

    dev = next((p.device for p in module.parameters()), torch.device("cpu"))
    sums = [torch.zeros(m.query.in_features + 1, m.query.in_features + 1, dtype=torch.float64) for _, m in found]
    counts = [0] * len(found)
    state: dict[str, Any] = {}

    def hook(i: int) -> Any:
        def grab(_m: Any, args: tuple[Any, ...]) -> None:
            x = args[0].detach().double().cpu()
            tokens = x.reshape(-1, x.shape[-1])
            mask = state.get("mask")
            if mask is not None and tuple(mask.shape) == tuple(x.shape[:-1]):
                tokens = tokens[mask.reshape(-1).cpu() > 0]
            tokens = torch.cat([tokens, torch.ones(len(tokens), 1, dtype=torch.float64)], 1)
            sums[i].add_(tokens.T @ tokens)
            counts[i] += len(tokens)
        return grab

    handles = [m.query.register_forward_pre_hook(hook(i)) for i, (_, m) in enumerate(found)]
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            for xs in text_batches(ds, keys, dev):
                state["mask"] = xs[keys.index("attention_mask")] if "attention_mask" in keys else None
                module(*xs)
    finally:
        for h in handles:
            h.remove()
        module.train(was_training)
    return [s / max(c, 1) for s, c in zip(sums, counts, strict=True)]


def factors(m: nn.Module, moment: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The new query and key weights, bias in the last column: (heads · rank, d + 1) each."""
    heads = m.num_attention_heads
    hd = m.query.out_features // heads  # the current query/key size per head
    wq = torch.cat([m.query.weight, _bias(m.query)[:, None]], 1).detach().double().cpu()
    wk = torch.cat([m.key.weight, _bias(m.key)[:, None]], 1).detach().double().cpu()
    ridge = 1e-6 * float(torch.diagonal(moment).mean())  # tokens that never vary along a direction
    chol = torch.linalg.cholesky(moment + ridge * torch.eye(len(moment), dtype=torch.float64))
    eye = torch.eye(len(moment), dtype=torch.float64)
    chol_inv = torch.linalg.solve_triangular(chol, eye, upper=False)
    new_q, new_k = [], []
    for h in range(heads):
        rows = slice(h * hd, (h + 1) * hd)
        u, s, vh = torch.linalg.svd(chol.T @ (wq[rows].T @ wk[rows]) @ chol)
        root = s[:rank].sqrt()[:, None]
        new_q.append(root * u[:, :rank].T @ chol_inv)
        new_k.append(root * vh[:rank] @ chol_inv)
    return torch.cat(new_q), torch.cat(new_k)


def _bias(lin: nn.Linear) -> torch.Tensor:
    return lin.bias if lin.bias is not None else torch.zeros(lin.out_features, device=lin.weight.device)


def install(m: nn.Module, rank: int, new_q: torch.Tensor, new_k: torch.Tensor) -> None:
    """Swap `m`'s query and key projections for the rank-`rank` ones, and its class for the low-rank one."""
    like = m.query.weight
    for attr, w in (("query", new_q), ("key", new_k)):
        lin = nn.Linear(w.shape[1] - 1, w.shape[0], bias=True).to(device=like.device, dtype=like.dtype)
        with torch.no_grad():
            lin.weight.copy_(w[:, :-1].to(like.dtype))
            lin.bias.copy_(w[:, -1].to(like.dtype))
        setattr(m, attr, lin)
    m.qk_size = rank
    m.__class__ = _low_rank_class(type(m))


def moments_on_data(cfg: Any, name: str, model: Any, ctx: Any) -> tuple[list[torch.Tensor], int]:
    """The second moments of every attention module's input tokens on importance_samples of
    data.calibration (or data.train), and the number of samples; checks the modules first."""
    from optimize.errors import ConfigError
    from passes.prune.fisher import fit_data
    from passes.prune.torch_common import example_args

    found = targets(model.module)
    for n, m in found:
        if cfg.qk_rank >= m.attention_head_size:
            raise ConfigError(f"qk_rank {cfg.qk_rank}: attention {n} has {m.attention_head_size} dims per head; "
                              "give fewer")
    args = example_args(model, ctx)
    if args is None:
        raise ConfigError("qk_rank needs the model's input shapes (model.inputs) to check its attention once")
    check_forward(model.module, found, args)
    ds, keys = fit_data(cfg, name, model, ctx, "qk_rank fits queries and keys")
    return input_moments(model.module, found, ds, keys), len(ds)


def apply(cfg: Any, model: Any, moments: list[torch.Tensor], samples: int, original: Any, ctx: Any) -> dict[str, Any]:
    """Install rank-`cfg.qk_rank` queries and keys in `model` (in place) from `moments` (measured on
    the model before its heads / FFN neurons went: their count and order are the same), and the
    step's metrics."""
    from passes.prune import util as U

    found = targets(model.module)
    if len(found) != len(moments):
        raise RuntimeError(f"qk_rank: {len(moments)} attention modules measured, {len(found)} now")
    head_dims = sorted({int(m.attention_head_size) for _, m in found})
    for (_, m), moment in zip(found, moments, strict=True):
        install(m, cfg.qk_rank, *factors(m, moment, cfg.qk_rank))
    names = [s.name for s in model.inputs]
    eval_ds, eval_desc = U.eval_inputs(ctx, model.inputs)
    quality = U.quality(model.module, eval_ds, names, U.torch_outputs(original.module, eval_ds, names))
    ctx.log.info("prune: queries and keys at rank %d per head in %d attention modules", cfg.qk_rank, len(found))
    return {"rank": cfg.qk_rank, "head_dims": head_dims, "attention_modules": len(found), "samples": samples,
            "tokens": "attention_mask 1" if any("attention_mask" == s.name for s in model.inputs) else "all",
            "quality_after": {**quality, "on": eval_desc}}
