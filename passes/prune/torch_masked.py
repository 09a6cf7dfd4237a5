"""Magnitude and N:M pruning of torch models, as mask parametrizations (`WeightMask`), in one
step or gradually (a schedule of targets, quality measured and optionally fine-tuned between)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from optimize.pass_api import PassResult
from passes.prune import torch_common as PT
from passes.prune import util as U
from passes.prune.config import PruneConfig
from passes.prune.masks import magnitude_keep, nm_keep


@dataclass
class _Masking:
    cfg: PruneConfig
    ctx: Any
    module: Any
    chosen: list[tuple[str, Any]]
    per_layer: dict[str, float]
    key: str
    notes: list[str]
    pruned: set[str] = field(default_factory=set)


def run_masked(cfg: PruneConfig, model: Any, ctx: Any) -> PassResult:
    from optimize.export import copy_module

    module = copy_module(model.module)  # deepcopy that leaves the input's parametrizations alone
    params_before = sum(p.numel() for p in module.parameters())
    notes: list[str] = []
    chosen = _chosen_layers(cfg, model, module, ctx, notes)
    shapes = {n: tuple(m.weight.shape) for n, m in chosen}
    per_layer = {
        n: r for n, _ in chosen
        if (r := U.layer_ratio([n, f"{n}.weight"], cfg.layer_sparsity, -1.0)) >= 0
    }
    job = _Masking(cfg, ctx, module, chosen, per_layer, f"{getattr(ctx, 'step_index', 0)}-prune", notes)
    step_rows, eval_desc = _prune_all(job, model)
    if not job.chosen:
        notes.append("no layer matched the selection (include/exclude, output layer kept): nothing pruned")
    notes.extend(U.speed_warnings(cfg.method, str(getattr(ctx, "device", "cpu")), False))
    metrics = PT.torch_metrics(cfg, job.module, job.pruned, shapes, params_before)
    if cfg.steps > 1:
        metrics["schedule"] = {"steps": cfg.steps, "kind": cfg.schedule, "quality_on": eval_desc}
        metrics["per_step"] = step_rows
    _macs(metrics, model, job.module, ctx)
    ctx.log.info("prune: %s, %d layer(s), sparsity of selected weights %.3f",
                 cfg.method, len(job.pruned), metrics["selected_sparsity"])
    return PassResult(model.replace(module=job.module), metrics=metrics, notes=notes)


def _chosen_layers(cfg: PruneConfig, model: Any, module: Any, ctx: Any, notes: list[str]) -> list[tuple[str, Any]]:
    """The selected Conv/Linear layers, the output layer left out when asked."""
    layers = PT.torch_layers(module)
    out_layers: set[str] = set()
    if cfg.keep_output_layer:
        out_layers, why = PT.torch_output_layers(module, layers, PT.example_args(model.replace(module=module), ctx))
        if out_layers:
            notes.append(f"output layer kept whole: {PT.short_list(sorted(out_layers))} ({why})")
    return [(n, m) for n, m in layers if n not in out_layers and PT.selected(cfg, [n, f"{n}.weight"])]


def _prune_all(job: _Masking, model: Any) -> tuple[list[dict[str, Any]], str | None]:
    """Every step of the schedule (one without `steps`); returns (per-step rows, quality data)."""
    cfg = job.cfg
    gradual = cfg.steps > 1
    quality_on = None
    if gradual:
        eval_ds, quality_on = U.eval_inputs(job.ctx, model.inputs)
        names = [s.name for s in model.inputs]
        reference = U.torch_outputs(model.module, eval_ds, names)
    step_rows: list[dict[str, Any]] = []
    job.ctx.progress.start(job.key, f"prune ({cfg.method})", len(job.chosen) * cfg.steps)
    try:
        for k, frac in enumerate(U.schedule(1.0, cfg.steps, cfg.schedule)):
            t0 = time.perf_counter()
            _mask_step(job, frac)
            if not gradual:
                break
            row = _step_row(job, model, k, frac, (eval_ds, names, reference))
            row["seconds"] = round(time.perf_counter() - t0, 3)
            step_rows.append(row)
    finally:
        job.ctx.progress.finish(job.key)
    return step_rows, quality_on


def _mask_step(job: _Masking, frac: float) -> None:
    """Mask the chosen layers to `frac` of the target sparsity (magnitude) or to N:M."""
    cfg, ctx = job.cfg, job.ctx
    if cfg.method == "magnitude":
        keeps = magnitude_keep(
            {n: PT.weight_np(m) for n, m in job.chosen}, cfg.sparsity * frac, cfg.scope,
            {n: r * frac for n, r in job.per_layer.items()},
        )
        for n, m in job.chosen:
            PT.apply_mask(m, keeps[n])
            job.pruned.add(n)
            ctx.progress.advance(job.key)
        return
    skipped = []
    for n, m in job.chosen:
        keep = nm_keep(PT.weight_np(m), PT.torch_in_axes(m), cfg.n, cfg.m)
        if keep is None:
            skipped.append(n)
        else:
            PT.apply_mask(m, keep)
            job.pruned.add(n)
        ctx.progress.advance(job.key)
    if skipped:
        job.notes.append(
            f"N:M skipped {len(skipped)} layer(s) whose input dimension is not divisible by "
            f"{cfg.m}: {PT.short_list(skipped)}"
        )


def _step_row(job: _Masking, model: Any, k: int, frac: float, quality_data: tuple[Any, list[str], Any]) -> dict[str, Any]:
    """A gradual step's row: sparsity and quality after pruning, and after fine-tuning if any."""
    from passes.prune.finetune import finetune

    cfg = job.cfg
    eval_ds, names, reference = quality_data
    sel = PT.torch_sparsity_metrics(PT.torch_layers(job.module), job.pruned)
    row: dict[str, Any] = {
        "step": k + 1, "target_sparsity": round(cfg.sparsity * frac, 6),
        "sparsity": sel["selected_sparsity"],
    }
    row.update({f"{q}_after_prune": v for q, v in U.quality(job.module, eval_ds, names, reference).items()})
    if k < cfg.steps - 1 and cfg.finetune_epochs > 0:
        device = next((p.device for p in job.module.parameters()), None)
        job.module, ft = finetune(job.module, model.replace(module=job.module), job.ctx, cfg.finetune_epochs, cfg.finetune_lr)
        if device is not None:
            job.module.to(device)  # training hands the module back on the CPU; the next step scores where this one did
        job.chosen = [(n, job.module.get_submodule(n)) for n, _ in job.chosen]
        row["finetune_epochs"] = cfg.finetune_epochs
        row["finetune_train_loss"] = ft.get("train_loss")
        row.update(
            {f"{q}_after_finetune": v for q, v in U.quality(job.module, eval_ds, names, reference).items()}
        )
    return row


def _macs(metrics: dict[str, Any], model: Any, module: Any, ctx: Any) -> None:
    """MACs before and after. Masks keep every tensor's shape, so a dense runtime does the same
    MACs; both are measured (before: on the input module, after: on the pruned one), never one
    copied to the other, on the masks baked into plain weights: Torch-Pruning's counter misses
    parametrized layers."""
    from optimize.export import finalized_module

    args = PT.example_args(model, ctx)
    metrics["macs_before"] = U.torch_macs(finalized_module(model.module), args)
    metrics["macs_after"] = U.torch_macs(finalized_module(module), args)
