"""Distillation students: a smaller architecture derived from the teacher, or one from a factory.

- `width: 0.5` — a narrower copy of the teacher, initialized from its weights: Torch-Pruning's
  dependency-aware structured pruning (through the `prune` pass, `method: structured`, with the
  channel/neuron ratio 1 − width) removes the lowest-magnitude channels of every layer except the
  output layer, so the kept channels keep the teacher's weights.
- `depth: 0.5` — fewer blocks: in the teacher's largest container of repeated blocks (an
  `nn.ModuleList`, or an `nn.Sequential` whose blocks keep the shape of their input), keep
  `round(depth × n)` blocks, evenly spaced and always including the first and last (the way
  DistilBERT keeps every other layer); the kept blocks keep the teacher's weights. `depth_module`
  names the container when the largest one is not the right one.
- `factory: package.module:callable` — the user's own architecture (called with no arguments),
  optionally with `weights` (.safetensors or a `weights_only` state_dict).

Written here by hand: block dropping (a few lines over `nn.ModuleList` / `nn.Sequential`; no
library does it for arbitrary models). Width uses Torch-Pruning through the prune pass.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from optimize.errors import ConfigError, PassError


def describe_spec(spec: Any) -> str:
    parts = []
    if spec.factory:
        parts.append(f"factory {spec.factory}" + (f" + {spec.weights}" if spec.weights else ""))
    if spec.width is not None:
        parts.append(f"width {spec.width:g}")
    if spec.depth is not None:
        parts.append(f"depth {spec.depth:g}" + (f" of '{spec.depth_module}'" if spec.depth_module else ""))
    return ", ".join(parts)


def build_student(spec: Any, teacher: Any, ctx: Any, key: str) -> tuple[Any, dict[str, Any], list[str]]:
    """A new student module for `spec` (a `StudentConfig`) from the teacher handle.

    Returns (module, metrics, notes). Raises ConfigError for options the model cannot satisfy
    (found before any training), PassError when a derivation fails.
    """
    from optimize.export import copy_module

    notes: list[str] = []
    metrics: dict[str, Any] = {"student": describe_spec(spec)}
    if spec.factory:
        module = load_factory(spec.factory, spec.weights, ctx.base_dir, key)
    else:
        module = copy_module(teacher.module)
        for sub in module.modules():  # the teacher's own training-time hooks do not belong to a student
            if hasattr(sub, "parametrizations"):
                raise ConfigError(
                    "student.width/depth derive the student from the teacher, but the teacher carries "
                    "parametrizations; give a plain model",
                    key=key,
                )
    if spec.depth is not None:
        module, kept = drop_blocks(module, spec.depth, spec.depth_module, teacher.inputs, ctx, key)
        metrics["student_blocks"] = kept
    if spec.width is not None:
        module, width_metrics, width_notes = narrow(module, spec.width, teacher, ctx)
        metrics.update(width_metrics)
        notes.extend(width_notes)
    module.train()
    return module, metrics, notes


def load_factory(spec: str, weights: str | None, base_dir: Path, key: str) -> Any:
    from functools import partial

    import torch

    from optimize.imports import call_reference

    module = call_reference(spec, base_dir, partial(ConfigError, key=key), f"student.factory '{spec}'")
    if not isinstance(module, torch.nn.Module):
        raise ConfigError(f"student.factory '{spec}' returned {type(module).__name__}, not a torch.nn.Module", key=key)
    if weights:
        from optimize.errors import ModelLoadError
        from optimize.loaders import load_weights

        path = Path(weights) if Path(weights).is_absolute() else base_dir / weights
        try:
            load_weights(module, path)
        except ModelLoadError as exc:
            raise ConfigError(f"student.weights: {exc}", key=key) from None
    return module


def _example_args(specs: list[Any], ctx: Any) -> tuple[Any, ...]:
    import numpy as np
    import torch

    rng = np.random.default_rng(getattr(ctx, "seed", 0))
    return tuple(torch.from_numpy(s.random(2, rng)) for s in specs)


def _leaves(out: Any) -> list[Any]:
    import torch
    from torch.utils._pytree import tree_leaves

    return [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]


def block_containers(module: Any) -> list[tuple[str, Any]]:
    """(name, container) for every ModuleList / Sequential holding ≥ 2 blocks of one class."""
    from torch import nn

    found = []
    for name, sub in module.named_modules():
        if isinstance(sub, (nn.ModuleList, nn.Sequential)) and len(sub) >= 2:
            kinds = {type(c) for c in sub}
            if len(kinds) == 1:
                found.append((name, sub))
    return found


def drop_blocks(
    module: Any, depth: float, container_name: str | None, specs: list[Any], ctx: Any, key: str
) -> tuple[Any, list[int]]:
    """Keep `round(depth × n)` evenly spaced blocks (first and last included) of one container."""
    import torch
    from torch import nn

    candidates = block_containers(module)
    if container_name is not None:
        try:
            chosen = module.get_submodule(container_name)
        except AttributeError:
            raise ConfigError(
                f"student.depth_module: no submodule '{container_name}' in the teacher "
                f"(block containers: {', '.join(n or '<root>' for n, _ in candidates) or 'none'})",
                key=key,
            ) from None
        if not isinstance(chosen, (nn.ModuleList, nn.Sequential)) or len(chosen) < 2:
            raise ConfigError(f"student.depth_module: '{container_name}' is not a ModuleList/Sequential of ≥ 2 blocks", key=key)
        name = container_name
    else:
        if not candidates:
            raise ConfigError(
                "student.depth: the teacher has no nn.ModuleList / nn.Sequential of repeated blocks to drop "
                "blocks from; use student.width or student.factory",
                key=key,
            )
        name, chosen = max(candidates, key=lambda c: (len(c[1]), -c[0].count(".")))
    n = len(chosen)
    keep_n = max(1, round(depth * n))
    if keep_n >= n:
        raise ConfigError(f"student.depth {depth:g} keeps all {n} blocks of '{name or '<root>'}'; use a smaller value", key=key)
    if keep_n == 1:
        kept = [0]
    else:
        kept = sorted({round(i * (n - 1) / (keep_n - 1)) for i in range(keep_n)})
    blocks = [chosen[i] for i in kept]
    replacement = nn.ModuleList(blocks) if isinstance(chosen, nn.ModuleList) else nn.Sequential(*blocks)
    if name:
        parent_name, _, attr = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, attr, replacement)
    else:
        module = replacement
    if specs:
        args = _example_args(specs, ctx)
        try:
            with torch.no_grad():
                module.eval()
                module(*args)
        except Exception as exc:
            raise ConfigError(
                f"student.depth: after keeping blocks {kept} of {n} in '{name or '<root>'}' the model no longer runs "
                f"({type(exc).__name__}: {str(exc)[:200]}); the blocks do not all keep their input's shape: "
                "name another container with student.depth_module, or use student.width",
                key=key,
            ) from None
    for attr in ("num_hidden_layers", "num_layers", "n_layer"):  # e.g. a Hugging Face config
        cfg = getattr(module, "config", None)
        if cfg is not None and getattr(cfg, attr, None) == n:
            setattr(cfg, attr, len(kept))
    return module, kept


def narrow(module: Any, width: float, teacher: Any, ctx: Any) -> tuple[Any, dict[str, Any], list[str]]:
    """The module with 1 − width of its channels/neurons removed by the structured prune pass."""
    from passes.prune.config import PruneConfig
    from passes.prune.prune_pass import PrunePass

    prune = PrunePass(PruneConfig(method="structured", sparsity=round(1.0 - width, 6)))
    try:
        result = prune.run(teacher.replace(module=module), ctx)
    except PassError as exc:
        raise PassError("distill", f"student.width: {exc}") from None
    m = result.metrics
    metrics = {"student_width_params_before": m.get("params_before"), "student_width_params_after": m.get("params_after")}
    notes = [f"student.width {width:g}: {n}" for n in result.notes]
    return result.model.module, metrics, notes


def param_count(module: Any) -> int:
    return int(sum(p.numel() for p in module.parameters()))
