"""Depth pruning: whole transformer blocks removed (`drop_layers`).

A transformer's blocks sit in one `nn.ModuleList` (BERT's `encoder.layer`, DistilBERT's
`transformer.layer`); each adds its output to the residual stream, so the stream runs on when one
is taken out and the blocks around it still fit together. Which blocks: those whose removal moves
the model's outputs least on data samples (mean output cosine against the unpruned model), over
every combination when there are at most MAX_COMBINATIONS, else greedily one block at a time; or
the indices the config names.

Removing a block takes its attention with it (the score matmuls too, which head and FFN pruning
leave), so for the MACs it saves it keeps more of the model than narrowing every block: on the real
all-MiniLM-L6-v2, one block of six out left held-out docstring embeddings at cosine 0.929 (mean)
before training, half of every FFN 0.787; after distillation one block out and a fifth of the other
FFNs beat half of every FFN on held-out text at about the same speed (docs/distill.md).

Written by hand: Torch-Pruning removes channels, not blocks; transformers has no public
block-removal API (its `prune_heads` removes heads only).

Imports torch at module level: it is only imported from inside `PrunePass.run`.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
from torch import nn

MAX_COMBINATIONS = 64


def block_list(module: nn.Module) -> tuple[nn.Module, str, nn.ModuleList] | None:
    """(parent, attribute, list) of the model's transformer blocks: the ModuleList with the most
    children of one class that each hold an attention module with q/k/v projections."""
    from passes.prune.transformer import find_attention

    found = []
    for _, parent in module.named_modules():
        for attr, child in parent.named_children():
            if isinstance(child, nn.ModuleList) and len(child) >= 2 and len({type(b) for b in child}) == 1 \
                    and all(find_attention(b) for b in child):
                found.append((parent, attr, child))
    if not found:
        return None
    most = max(len(f[2]) for f in found)
    tied = [f for f in found if len(f[2]) == most]
    if len(tied) > 1:  # e.g. an encoder and a decoder, or two towers: which one is meant is not ours to guess
        from optimize.errors import ConfigError

        raise ConfigError(f"drop_layers: {len(tied)} lists of {most} transformer blocks in this model; "
                          "it applies to models with one (BERT-style encoders)")
    return tied[0]


def _score(module: nn.Module, where: tuple[nn.Module, str, nn.ModuleList], gone: tuple[int, ...],
           ds: Any, names: list[str], reference: np.ndarray) -> float:
    """Mean per-sample output cosine against `reference` (the run's parity measure; -inf when an
    output is not finite) with the blocks `gone` taken out (put back after)."""
    from optimize.runtime import parity
    from passes.prune.util import torch_outputs

    parent, attr, blocks = where
    setattr(parent, attr, nn.ModuleList([b for i, b in enumerate(blocks) if i not in gone]))
    try:
        out = torch_outputs(module, ds, names)
    finally:
        setattr(parent, attr, blocks)
    mean = parity([reference], out)["mean_cosine"]
    return float("-inf") if mean is None else float(mean)


def choose(module: nn.Module, where: tuple[nn.Module, str, nn.ModuleList], n: int, ds: Any,
           names: list[str]) -> tuple[tuple[int, ...], dict[str, Any]]:
    """The `n` blocks whose removal keeps the outputs closest, and how they were chosen."""
    from passes.prune.util import torch_outputs

    reference = torch_outputs(module, ds, names)[0]
    count = len(where[2])
    if math.comb(count, n) <= MAX_COMBINATIONS:
        scores = {c: _score(module, where, c, ds, names, reference) for c in itertools.combinations(range(count), n)}
        best = max(scores, key=lambda c: scores[c])
        ranked = sorted(scores.items(), key=lambda kv: -kv[1])[:5]
        return best, {"selection": f"every combination ({len(scores)})",
                      "best_candidates": [{"removed": list(c), "mean_cosine": round(s, 6)} for c, s in ranked]}
    gone: tuple[int, ...] = ()
    steps = []
    for _ in range(n):
        scores = {i: _score(module, where, (*gone, i), ds, names, reference) for i in range(count) if i not in gone}
        pick = max(scores, key=lambda i: scores[i])
        gone = tuple(sorted((*gone, pick)))
        steps.append({"removed": list(gone), "mean_cosine": round(scores[pick], 6)})
    return gone, {"selection": "greedy, one block at a time", "steps": steps}


def drop(module: nn.Module, where: tuple[nn.Module, str, nn.ModuleList], gone: tuple[int, ...]) -> None:
    """Take the blocks out; renumber the `layer_idx` the kept blocks' modules carry (transformers
    indexes its key/value cache by it) and shrink a Hugging Face config's layer count and per-layer
    lists to match."""
    parent, attr, blocks = where
    kept = [i for i in range(len(blocks)) if i not in gone]
    for new_i, old_i in enumerate(kept):
        for m in blocks[old_i].modules():
            if getattr(m, "layer_idx", None) == old_i:
                m.layer_idx = new_i
    setattr(parent, attr, nn.ModuleList([blocks[i] for i in kept]))
    for m in module.modules():
        cfg = getattr(m, "config", None)
        if getattr(cfg, "num_hidden_layers", None) != len(blocks):
            continue
        cfg.num_hidden_layers = len(kept)
        if isinstance(getattr(cfg, "layer_types", None), list) and len(cfg.layer_types) == len(blocks):
            cfg.layer_types = [cfg.layer_types[i] for i in kept]  # one attention kind per block


def _shapes(module: nn.Module, args: Any) -> list[tuple[int, ...]]:
    import torch

    from passes.prune.torch_common import tensor_leaves

    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            return [tuple(t.shape) for t in tensor_leaves(module(*args))]
    finally:
        module.train(was_training)


def _check_runs(module: nn.Module, args: Any, shapes: list[Any], kept: list[int]) -> None:
    """ConfigError when the model no longer runs, or gives other output shapes, without the blocks."""
    from optimize.errors import ConfigError

    try:
        now = _shapes(module, args)
    except Exception as exc:  # noqa: BLE001 — any failure means the blocks were not interchangeable
        raise ConfigError(f"drop_layers: keeping blocks {kept} the model no longer runs ({type(exc).__name__}: "
                          f"{str(exc)[:200]}); its blocks do not all keep their input's shape") from None
    if now != shapes:
        raise ConfigError(f"drop_layers: keeping blocks {kept} changes the output shapes {shapes} → {now}")


def _which(cfg: Any, name: str, module: nn.Module, where: tuple[nn.Module, str, nn.ModuleList],
           names: list[str], ctx: Any) -> tuple[tuple[int, ...], dict[str, Any]]:
    """The blocks `cfg.drop_layers` takes out (given, or chosen on data) and how they were chosen."""
    from optimize.errors import ConfigError, PassError

    count = len(where[2])
    given = cfg.drop_layers if isinstance(cfg.drop_layers, list) else None
    n = len(given) if given is not None else int(cfg.drop_layers)
    if n >= count or (given and max(given) >= count):
        raise ConfigError(f"drop_layers {cfg.drop_layers}: the model has {count} blocks "
                          f"(indices 0–{count - 1}); one must stay at least")
    if given is not None:
        return tuple(sorted(given)), {"selection": "given"}
    ds = ctx.data("calibration")
    if ds is None:
        raise PassError(name, "drop_layers chooses blocks on data: declare data.calibration or data.train")
    ds = ds.take(cfg.importance_samples)
    gone, how = choose(module, where, n, ds, names)
    return gone, {**how, "samples": len(ds)}


def run_drop(cfg: Any, name: str, model: Any, ctx: Any) -> tuple[Any, dict[str, Any]]:
    """The model with `cfg.drop_layers` blocks taken out (a copy), and the step's metrics."""
    from optimize.errors import ConfigError
    from optimize.export import copy_module
    from passes.prune import util as U
    from passes.prune.torch_common import example_args

    module = copy_module(model.module)
    where = block_list(module)
    if where is None:
        raise ConfigError("drop_layers needs a transformer whose blocks sit in one list (BERT-style "
                          "encoder.layer); none found in this model")
    names = [s.name for s in model.inputs]
    gone, how = _which(cfg, name, module, where, names, ctx)
    count = len(where[2])
    kept = [i for i in range(count) if i not in gone]
    args = example_args(model, ctx)
    shapes = _shapes(module, args) if args is not None else None
    params_before, macs_before = sum(p.numel() for p in module.parameters()), U.torch_macs(module, args)
    drop(module, where, gone)
    if args is not None:
        _check_runs(module, args, shapes, kept)
    eval_ds, eval_desc = U.eval_inputs(ctx, model.inputs)
    quality = U.quality(module, eval_ds, names, U.torch_outputs(model.module, eval_ds, names))
    ctx.log.info("prune: %d of %d transformer blocks removed (%s)", len(gone), count, list(gone))
    return model.replace(module=module), {
        "blocks_before": count, "removed": list(gone), "kept": kept, "blocks_after": len(kept),
        "params_before": int(params_before), "params_after": int(sum(p.numel() for p in module.parameters())),
        "macs_before": macs_before, "macs_after": U.torch_macs(module, args),
        "macs_batch": int(args[0].shape[0]) if args else None,
        "quality_after_drop": {**quality, "on": eval_desc}, **how,
    }
