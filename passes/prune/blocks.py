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

The search and its checks serve any `Cut` (a count of units, a way to take some out for a
measurement and for good): whole blocks here, attention sublayers in `sublayers` (`drop_attention`).

Written by hand: Torch-Pruning removes channels, not blocks; transformers has no public
block-removal API (its `prune_heads` removes heads only).

Imports torch at module level: it is only imported from inside `PrunePass.run`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
from torch import nn

from passes.prune.cut import Cut

MAX_COMBINATIONS = 64


def block_list(module: nn.Module, what: str = "drop_layers") -> tuple[nn.Module, str, nn.ModuleList] | None:
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

        raise ConfigError(f"{what}: {len(tied)} lists of {most} transformer blocks in this model; "
                          "it applies to models with one (BERT-style encoders)")
    return tied[0]


def block_cut(module: nn.Module, where: tuple[nn.Module, str, nn.ModuleList]) -> Cut:
    parent, attr, blocks = where

    def remove(gone: tuple[int, ...]) -> Callable[[], None]:
        setattr(parent, attr, nn.ModuleList([b for i, b in enumerate(blocks) if i not in gone]))
        return lambda: setattr(parent, attr, blocks)

    return Cut("drop_layers", "blocks", "blocks", len(blocks), remove, lambda gone: drop(module, where, gone))


def _score(module: nn.Module, cut: Cut, gone: tuple[int, ...], ds: Any, names: list[str], reference: np.ndarray) -> float:
    """Mean per-sample output cosine against `reference` (the run's parity measure; -inf when an
    output is not finite) with the units `gone` taken out (put back after)."""
    from optimize.runtime import parity
    from passes.prune.util import torch_outputs

    undo = cut.remove(gone)
    try:
        out = torch_outputs(module, ds, names)
    finally:
        undo()
    mean = parity([reference], out)["mean_cosine"]
    return float("-inf") if mean is None else float(mean)


def choose(module: nn.Module, cut: Cut, n: int, ds: Any, names: list[str]) -> tuple[tuple[int, ...], dict[str, Any]]:
    """The `n` units whose removal keeps the outputs closest, and how they were chosen."""
    from passes.prune.util import torch_outputs

    reference = torch_outputs(module, ds, names)[0]
    count = cut.count
    if math.comb(count, n) <= MAX_COMBINATIONS:
        scores = {c: _score(module, cut, c, ds, names, reference) for c in itertools.combinations(range(count), n)}
        best = max(scores, key=lambda c: scores[c])
        ranked = sorted(scores.items(), key=lambda kv: -kv[1])[:5]
        return best, {"selection": f"every combination ({len(scores)})",
                      "best_candidates": [{"removed": list(c), "mean_cosine": round(s, 6)} for c, s in ranked]}
    gone: tuple[int, ...] = ()
    steps = []
    for _ in range(n):
        scores = {i: _score(module, cut, (*gone, i), ds, names, reference) for i in range(count) if i not in gone}
        pick = max(scores, key=lambda i: scores[i])
        gone = tuple(sorted((*gone, pick)))
        steps.append({"removed": list(gone), "mean_cosine": round(scores[pick], 6)})
    return gone, {"selection": f"greedy, one of the {cut.noun} at a time", "steps": steps}


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


def _check_runs(module: nn.Module, args: Any, shapes: list[Any], kept: list[int], what: str = "drop_layers",
                noun: str = "blocks") -> None:
    """ConfigError when the model no longer runs, or gives other output shapes, without the units."""
    from optimize.errors import ConfigError

    try:
        now = _shapes(module, args)
    except Exception as exc:  # noqa: BLE001 — any failure means the units were not interchangeable
        raise ConfigError(f"{what}: keeping {noun} {kept} the model no longer runs ({type(exc).__name__}: "
                          f"{str(exc)[:200]}); its {noun} do not all keep their input's shape") from None
    if now != shapes:
        raise ConfigError(f"{what}: keeping {noun} {kept} changes the output shapes {shapes} → {now}")


def _which(value: int | list[int], cut: Cut, name: str, module: nn.Module, names: list[str], ctx: Any,
           samples: int, cfg_has_blocks_cut: bool = False) -> tuple[tuple[int, ...], dict[str, Any]]:
    """The units `value` takes out (given, or chosen on data) and how they were chosen."""
    from optimize.errors import ConfigError, PassError

    given = value if isinstance(value, list) else None
    n = len(given) if given is not None else int(value)
    if n >= cut.count or (given and max(given) >= cut.count):
        after = " (after drop_layers)" if cut.what == "drop_attention" and cfg_has_blocks_cut else ""
        raise ConfigError(f"{cut.what} {value}: the model has {cut.count} {cut.noun}{after} (indices 0–{cut.count - 1}); "
                          "one must stay at least")
    if given is not None:
        return tuple(sorted(given)), {"selection": "given"}
    ds = ctx.data("calibration")
    if ds is None:
        raise PassError(name, f"{cut.what} chooses {cut.noun} on data: declare data.calibration or data.train")
    ds = ds.take(samples)
    gone, how = choose(module, cut, n, ds, names)
    return gone, {**how, "samples": len(ds)}


def run_cut(cfg: Any, name: str, model: Any, ctx: Any, what: str, original: Any = None,
            block_ids: list[int] | None = None) -> tuple[Any, dict[str, Any]]:
    """The model with `cfg.<what>` (drop_layers: whole blocks; drop_attention: attention sublayers)
    taken out (a copy), and the step's metrics. `original`: the model the output cosine is measured
    against (default `model`); `block_ids`: each block's index in it, when blocks went before."""
    from optimize.errors import ConfigError
    from optimize.export import copy_module
    from passes.prune import util as U
    from passes.prune.torch_common import example_args

    module = copy_module(model.module)
    args = example_args(model, ctx)
    where = block_list(module, what)
    if where is None:
        raise ConfigError(f"{what} needs a transformer whose blocks sit in one list (BERT-style "
                          "encoder.layer); none found in this model")
    if what == "drop_layers":
        cut = block_cut(module, where)
    else:
        from passes.prune.sublayers import attention_cut

        cut = attention_cut(module, where[2], args)
    names = [s.name for s in model.inputs]
    gone, how = _which(getattr(cfg, what), cut, name, module, names, ctx, cfg.importance_samples, block_ids is not None)
    kept = [i for i in range(cut.count) if i not in gone]
    shapes = _shapes(module, args) if args is not None else None
    params_before, macs_before = sum(p.numel() for p in module.parameters()), U.torch_macs(module, args)
    cut.commit(gone)
    if args is not None:
        _check_runs(module, args, shapes, kept, what, cut.noun)
    eval_ds, eval_desc = U.eval_inputs(ctx, model.inputs)
    quality = U.quality(module, eval_ds, names, U.torch_outputs((original or model).module, eval_ds, names))
    if block_ids is not None:  # the blocks' indices in the input model, beside those counted after drop_layers
        how = {**how, "removed_original": [block_ids[i] for i in gone]}
    ctx.log.info("prune: %d of %d %s removed (%s)", len(gone), cut.count, cut.noun, list(gone))
    return model.replace(module=module), {
        f"{cut.unit}_before": cut.count, "removed": list(gone), "kept": kept, f"{cut.unit}_after": len(kept),
        "params_before": int(params_before), "params_after": int(sum(p.numel() for p in module.parameters())),
        "macs_before": macs_before, "macs_after": U.torch_macs(module, args),
        "macs_batch": int(args[0].shape[0]) if args else None,
        "quality_after_drop": {**quality, "on": eval_desc}, **how,
    }
