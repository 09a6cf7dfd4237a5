"""Structured pruning of transformer blocks: attention heads and FFN neurons.

Torch-Pruning's dependency graph does the pruning (FFN neurons as ordinary Linear groups; whole
heads through each attention module's group, chosen by passes/prune/heads.py). This module
supplies what the library leaves to its user (../shared/field-notes.md, "Structured pruning of
transformer encoders"):

- `nn.MultiheadAttention` keeps q/k/v in one packed `in_proj_weight` and requires
  `num_heads * head_dim == embed_dim`, so a head-pruned MHA cannot exist. `convert_attention`
  swaps each self-attention MHA for `SplitHeadAttention` — the same computation with separate
  q/k/v Linear layers whose width may shrink below the model width — with identical weights
  (outputs equal to float rounding; a test checks it).
- `find_attention` finds attention modules written by hand (q/k/v Linear children and a head-count
  attribute, as in BERT-style code), so their heads can be pruned too.
- `residual_writers` lists the layers whose output channels are coupled to a LayerNorm or an
  embedding (the residual stream): pruning them would shrink the hidden size. They are ignored, so
  only heads and FFN neurons are removed.
- `update_head_counts` writes the new head counts into the attention modules' attributes after
  pruning (Torch-Pruning only resizes the tensors).

Imports torch at module level: it is only imported from inside `PrunePass.run`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

_Q = ("q_proj", "query", "q", "q_lin", "wq")
_K = ("k_proj", "key", "k", "k_lin", "wk")
_V = ("v_proj", "value", "v", "v_lin", "wv")
_HEAD_ATTRS = ("num_heads", "num_attention_heads", "n_heads", "n_head", "heads")
_WIDTH_ATTRS = ("all_head_size", "inner_dim")


class SplitHeadAttention(nn.Module):
    """Multi-head self/cross attention with separate q/k/v projections whose width
    (`num_heads * head_dim`) may differ from the model width. Call signature and outputs follow
    `nn.MultiheadAttention` (returns `(output, None)`; attention weights are not returned).

    `in_proj_weight`/`in_proj_bias` are None and `_qkv_same_embed_dim` is False, so torch's fused
    transformer fast path (which needs the packed MHA) is skipped.
    """

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        inner = num_heads * head_dim
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, head_dim
        self.batch_first, self.dropout = batch_first, dropout
        self.q_proj = nn.Linear(embed_dim, inner, bias=bias)
        self.k_proj = nn.Linear(embed_dim, inner, bias=bias)
        self.v_proj = nn.Linear(embed_dim, inner, bias=bias)
        self.out_proj = nn.Linear(inner, embed_dim, bias=bias)
        self.in_proj_weight = None
        self.in_proj_bias = None
        self._qkv_same_embed_dim = False

    @classmethod
    def from_mha(cls, mha: nn.MultiheadAttention) -> SplitHeadAttention:
        e, h = mha.embed_dim, mha.num_heads
        bias = mha.in_proj_bias is not None
        new = cls(e, h, e // h, bias=bias, batch_first=mha.batch_first, dropout=mha.dropout)
        new.to(device=mha.out_proj.weight.device, dtype=mha.out_proj.weight.dtype)
        with torch.no_grad():
            for i, lin in enumerate((new.q_proj, new.k_proj, new.v_proj)):
                lin.weight.copy_(mha.in_proj_weight[i * e : (i + 1) * e])
                if bias:
                    lin.bias.copy_(mha.in_proj_bias[i * e : (i + 1) * e])
            new.out_proj.weight.copy_(mha.out_proj.weight)
            if mha.out_proj.bias is not None and new.out_proj.bias is not None:
                new.out_proj.bias.copy_(mha.out_proj.bias)
        return new

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, None]:
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        b, lq, _ = query.shape
        lk = key.shape[1]
        h = self.q_proj.out_features // self.head_dim  # the live head count, after any pruning
        q = self.q_proj(query).view(b, lq, h, self.head_dim).transpose(1, 2)
        k = self.k_proj(key).view(b, lk, h, self.head_dim).transpose(1, 2)
        v = self.v_proj(value).view(b, lk, h, self.head_dim).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(self.head_dim)
        if attn_mask is not None:
            m = attn_mask if attn_mask.dim() == 2 else attn_mask.view(b, -1, lq, lk)
            scores = scores.masked_fill(m, float("-inf")) if m.dtype == torch.bool else scores + m
        elif is_causal:
            causal = torch.ones(lq, lk, dtype=torch.bool, device=scores.device).triu(1)
            scores = scores.masked_fill(causal, float("-inf"))
        if key_padding_mask is not None:
            kpm = key_padding_mask.view(b, 1, 1, lk)
            scores = scores.masked_fill(kpm, float("-inf")) if kpm.dtype == torch.bool else scores + kpm
        attn = F.dropout(torch.softmax(scores, dim=-1), p=self.dropout, training=self.training)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(b, lq, h * self.head_dim)
        out = self.out_proj(out)
        if not self.batch_first:
            out = out.transpose(0, 1)
        return out, None


@dataclass
class Attention:
    name: str
    module: nn.Module
    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    heads: int
    head_dim: int
    attrs: list[str] = field(default_factory=list)  # head-count attributes to update


def convert_attention(model: nn.Module) -> list[str]:
    """Replace every `nn.MultiheadAttention` (same q/k/v width) by an equivalent
    `SplitHeadAttention`; returns the names replaced."""
    replaced = []
    for name, mod in list(model.named_modules()):
        if isinstance(mod, nn.MultiheadAttention) and mod._qkv_same_embed_dim:
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, SplitHeadAttention.from_mha(mod).train(mod.training))
            replaced.append(name)
    return replaced


def _child(mod: nn.Module, names: tuple[str, ...]) -> nn.Linear | None:
    for n in names:
        c = getattr(mod, n, None)
        if isinstance(c, nn.Linear):
            return c
    return None


def find_attention(model: nn.Module) -> list[Attention]:
    """Attention modules with separate q/k/v Linear children and an integer head count."""
    found = []
    for name, mod in model.named_modules():
        q, k, v = _child(mod, _Q), _child(mod, _K), _child(mod, _V)
        if q is None or k is None or v is None:
            continue
        attrs = [a for a in _HEAD_ATTRS if isinstance(getattr(mod, a, None), int) and not isinstance(getattr(mod, a), bool)]
        if not attrs:
            continue
        heads = int(getattr(mod, attrs[0]))
        if heads <= 0 or q.out_features % heads or k.out_features != q.out_features or v.out_features != q.out_features:
            continue  # grouped-query / unusual layouts: pruned as plain Linear layers, not by head
        found.append(Attention(name, mod, q, k, v, heads, q.out_features // heads, attrs))
    return found


def has_heads(model: nn.Module) -> bool:
    """Whether head pruning has anything to remove: an nn.MultiheadAttention or an attention module
    `find_attention` recognises."""
    return any(isinstance(m, nn.MultiheadAttention) for m in model.modules()) or bool(find_attention(model))


def residual_writers(model: nn.Module, args: tuple[Any, ...], layers: list[tuple[str, nn.Module]]) -> list[str]:
    """Names of the layers whose output channels share a dependency group with a LayerNorm or an
    embedding: the writers of the residual stream, whose pruning would change the hidden size."""
    import torch_pruning as tp

    dg = tp.DependencyGraph().build_dependency(model, example_inputs=args)
    coupled = (nn.LayerNorm, nn.Embedding)
    out = []
    for name, m in layers:
        if not isinstance(m, nn.Linear):
            continue
        try:
            group = dg.get_pruning_group(m, tp.prune_linear_out_channels, idxs=[0])
        except Exception:  # a layer the graph did not reach (unused)
            continue
        if any(isinstance(dep.target.module, coupled) for dep, _ in group):
            out.append(name)
    return out


def update_head_counts(attn: list[Attention]) -> list[dict[str, Any]]:
    """Write the head counts implied by the pruned q widths into each module's attributes.
    Returns one entry per module: name, heads before and after."""
    out = []
    for a in attn:
        new = a.q.out_features // a.head_dim
        for attr in a.attrs:
            setattr(a.module, attr, new)
        for attr in _WIDTH_ATTRS:
            if isinstance(getattr(a.module, attr, None), int):
                setattr(a.module, attr, new * a.head_dim)
        out.append({"name": a.name, "heads_before": a.heads, "heads_after": new})
    return out
