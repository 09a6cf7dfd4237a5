"""Whole attention heads removed by the prune pass, through Torch-Pruning's dependency graph.

Torch-Pruning removes heads only inside a ranking scope where it also removes channels: with
`sparsity: 0` (heads only) it removed none, and said nothing. So the pass ranks and removes heads
here and leaves Torch-Pruning the other channels (FFN neurons, convolutions):

- score: the pass's importance on each attention module's dependency group (q, k, v outputs and
  the output projection's inputs) averaged over each head's channels, as Torch-Pruning scores heads
  (with `importance: fisher`, the head's own mask score);
- count: `head_sparsity` of each module's heads (`scope: layer`), or of all heads under one
  ranking (`scope: global`: Fisher scores are effects on the same output, so they compare across
  layers; on all-MiniLM-L6-v2 a third of the heads chosen that way moved the embeddings far less
  than the same heads taken evenly from each block, docs/distill.md); after each step of the
  schedule, its fraction of the target; every module keeps at least one head and loses at most
  `max_ratio` of its heads (`drop_attention` takes a whole sublayer out);
- removal: one dependency group per module, pruned at the chosen heads' channels.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any


def head_scores(dg: Any, importance: Any, attention: list[Any]) -> list[Any]:
    """One score per live head of each attention module (higher: more important)."""
    import torch_pruning as tp

    out = []
    for a in attention:
        width = a.q.out_features
        group = dg.get_pruning_group(a.q, tp.prune_linear_out_channels, idxs=list(range(width)))
        imp = importance(group)
        out.append(imp.detach().float().cpu().view(width // a.head_dim, -1).mean(1))
    return out


def _cap(heads_before: int, max_ratio: float) -> int:
    """The most heads one module may lose: max_ratio of them, and never its last."""
    return min(math.floor(heads_before * max_ratio + 1e-9), heads_before - 1)


def plan(scores: list[Any], heads_before: list[int], ratio: float, scope: str, max_ratio: float) -> list[list[int]]:
    """Live-head indices to remove from each module now, so that `ratio` of the heads (of each
    module, or of all) are gone in total."""
    gone = [n0 - len(s) for n0, s in zip(heads_before, scores, strict=True)]
    room = [max(0, _cap(n0, max_ratio) - g) for n0, g in zip(heads_before, gone, strict=True)]
    if scope == "global":
        need = math.floor(sum(heads_before) * ratio + 0.5) - sum(gone)
        ranked = sorted((float(v), m, h) for m, s in enumerate(scores) for h, v in enumerate(s.tolist()))
        out: list[list[int]] = [[] for _ in scores]
        for _, m, h in ranked:
            if need <= 0:
                break
            if len(out[m]) < room[m]:
                out[m].append(h)
                need -= 1
        return [sorted(o) for o in out]
    out = []
    for s, n0, g, r in zip(scores, heads_before, gone, room, strict=True):
        k = min(max(0, math.floor(n0 * ratio + 0.5) - g), r)
        out.append(sorted(int(i) for i in s.argsort()[:k]))
    return out


def remove(dg: Any, attention: list[Any], chosen: list[list[int]], before_prune: Callable[[Any], None]) -> None:
    """Prune the chosen heads' channels of each module's group (`before_prune` sees each group first)."""
    import torch_pruning as tp

    for a, heads in zip(attention, chosen, strict=True):
        if heads:
            channels = [h * a.head_dim + j for h in heads for j in range(a.head_dim)]
            group = dg.get_pruning_group(a.q, tp.prune_linear_out_channels, idxs=channels)
            before_prune(group)
            group.prune()
