"""`sparsity: auto` / `head_sparsity: auto`: the largest pruning ratio on a grid whose briefly
distilled result still meets the quality gate, found within a time budget.

Each probe prunes a copy of the model at one grid point (structured, with the pass's own importance
and options), distills it for one short epoch on the first `search_samples` training samples
(teacher: the pipeline's input model; 1 − cosine on the outputs for embeddings, MSE otherwise), and
measures the output cosine over data.eval against the input model, the MACs and the torch latency.
Quality falls as the ratio grows, so the grid is bisected: about log2(len(grid)) + 1 probes. A probe
passes when its min cosine, after the short distillation or before it (the pruned model alone:
the pipeline's distill pass starts from it and trains longer), reaches the threshold
(`search_min_cosine`, else gates.min_embedding_cosine, else gates.min_parity_cosine; a gate is
raised by what a following quantize pass costs the input model, passes/prune/int8_margin.py). The short distillation recovers less than
the pipeline's own distill pass will, so the choice errs on the safe side. Probes stop when the next
one would overrun `search_budget_minutes` (judged by the longest probe so far); the largest passing
ratio seen so far is chosen, 0 when none passed.

Grid values are FFN-neuron / channel ratios (`sparsity`); with both auto, each probe removes half
that fraction of the heads; with only `head_sparsity: auto`, the grid values are head ratios.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

from optimize.errors import ConfigError
from passes.prune import util as U
from passes.prune.config import PruneConfig
from passes.prune.util import rank as _rank
from passes.prune.util import rank0 as _rank0


@dataclass
class Probe:
    sparsity: float
    head_sparsity: float
    min_cosine: float | None
    mean_cosine: float | None
    min_cosine_before_distill: float | None
    macs_reduction: float | None
    latency_ms: float | None
    params: int
    seconds: float
    meets: bool
    met_by: str | None = None  # "distilled", "pruned only" (the min cosine before the probe's training), None


def threshold(cfg: PruneConfig, ctx: Any) -> tuple[float, str]:
    """The min cosine a probe must reach, and where it came from."""
    if cfg.search_min_cosine is not None:
        return cfg.search_min_cosine, "search_min_cosine"
    gates = getattr(getattr(ctx, "config", None), "gates", None)
    for name in ("min_embedding_cosine", "min_parity_cosine"):
        value = getattr(gates, name, None)
        if value is not None:
            return float(value), f"gates.{name}"
    raise ConfigError(
        "sparsity/head_sparsity auto needs a quality target: set search_min_cosine, gates.min_embedding_cosine or gates.min_parity_cosine",
        key=f"{getattr(ctx, 'key', 'prune')}.search_min_cosine",
    )


def point(cfg: PruneConfig, g: float) -> tuple[float, float]:
    """(sparsity, head_sparsity) of grid value `g`."""
    s_auto, h_auto = cfg.sparsity == "auto", cfg.head_sparsity == "auto"
    sparsity = g if s_auto else float(cfg.sparsity)
    if not h_auto:
        return sparsity, float(cfg.head_sparsity)
    return sparsity, round(g / 2, 6) if s_auto else g


def search(cfg: PruneConfig, name: str, model: Any, ctx: Any, origin: PruneConfig | None = None) -> tuple[PruneConfig, dict[str, Any], list[str]]:
    """(the config with the chosen numbers, the search's metrics, notes). `origin`: the pass's config
    as the pipeline holds it (`cfg` may be an adjusted copy), to find the passes after it."""
    limit, source = threshold(cfg, ctx)
    grid = sorted(set(cfg.search_grid))
    budget = cfg.search_budget_minutes * 60.0
    eval_ds, eval_desc = U.eval_inputs(ctx, model.inputs)
    names = [s.name for s in model.inputs]
    teacher = getattr(ctx, "input_model", None)
    teacher = teacher if teacher is not None and teacher.module is not None else model
    reference = U.torch_outputs(teacher.module, eval_ds, names)
    margin = _rank0(_quantize_margin(origin or cfg, ctx, source, teacher, eval_ds, reference) if _rank() == 0 else {})
    if "margin" in margin:
        limit, source = min(1.0, round(limit + margin["margin"], 6)), f"{source} + the quantize pass's own loss"
    t0 = time.perf_counter()
    probes: dict[float, Probe] = {}
    lo, hi, best, stopped = 0, len(grid) - 1, None, False
    while lo <= hi:
        longest = max((p.seconds for p in probes.values()), default=0.0)
        if _rank0(bool(probes) and time.perf_counter() - t0 + longest > budget):  # torchrun: every rank stops alike
            stopped = True
            break
        mid = (lo + hi) // 2
        probe = _probe(cfg, name, model, ctx, grid[mid], (eval_ds, names, reference, teacher), limit)
        probe.meets = _rank0(probe.meets)
        probes[grid[mid]] = probe
        ctx.log.info("prune search: sparsity %.3f heads %.3f → min cosine %s (%s)", probe.sparsity,
                     probe.head_sparsity, probe.min_cosine, "meets" if probe.meets else "misses")
        if probe.meets:
            best, lo = mid, mid + 1
        else:
            hi = mid - 1
    chosen = point(cfg, grid[best]) if best is not None else (
        0.0 if cfg.sparsity == "auto" else float(cfg.sparsity), 0.0 if cfg.head_sparsity == "auto" else float(cfg.head_sparsity)
    )
    notes = _notes(chosen, best is None, stopped, limit, source, len(probes), budget) + _margin_notes(margin, limit)
    if source.startswith("gates.") and "margin" not in margin and _quantize_follows(ctx, origin or cfg):
        notes.append(f"prune search: the probes are measured before quantization, and a quantize pass follows: it "
                     f"costs its own cosine (all-MiniLM-L6-v2's min on held-out text: 0.984 with dynamic int8 alone), "
                     f"so a ratio that just meets {limit:g} here can miss {source} after it; set search_min_cosine "
                     f"above the gate by the quantization's own loss (a quantize-only run measures it)")
    metrics = {
        "threshold": limit, "threshold_from": source, "quality_on": eval_desc, "grid": grid,
        "searched": [f for f in ("sparsity", "head_sparsity") if getattr(cfg, f) == "auto"],
        "quantize_margin": margin or None,
        "curve": [asdict(probes[g]) for g in sorted(probes)],
        "chosen": {"sparsity": chosen[0], "head_sparsity": chosen[1]},
        "probe_training": f"1 epoch on {cfg.search_samples} data.train samples, lr {cfg.search_lr:g}",
        "budget_minutes": cfg.search_budget_minutes, "stopped_by_budget": stopped,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return cfg.model_copy(update={"sparsity": chosen[0], "head_sparsity": chosen[1]}), metrics, notes


def _quantize_margin(cfg: PruneConfig, ctx: Any, source: str, teacher: Any, eval_ds: Any, reference: Any) -> dict[str, Any]:
    """The following quantize pass's own loss on the input model (passes/prune/int8_margin.py), when
    the target is a gate; {} when it does not apply."""
    from passes.prune.int8_margin import following_quantize, quantize_margin

    qcfg = following_quantize(ctx, cfg) if source.startswith("gates.") else None
    if qcfg is None:
        return {}
    return quantize_margin(ctx, qcfg, teacher, eval_ds, reference)


def _margin_notes(margin: dict[str, Any], limit: float) -> list[str]:
    if "margin" in margin and limit >= 1.0:
        return [f"prune search: the quantize pass after it alone takes the input model's min cosine to "
                f"{margin['min_cosine']:g}, which leaves no room under the gate: no pruning was chosen"]
    if "margin" in margin:
        return [f"prune search: the quantize pass after it takes the input model's min cosine to "
                f"{margin['min_cosine']:g} here, so the probes (measured before quantization) were held to "
                f"the gate + {margin['margin']:g} = {limit:g} (measured before the probes, outside "
                f"search_budget_minutes)"]
    if "reason" in margin:
        return [f"prune search: what the quantize pass costs was not measured ({margin['reason']}); the probes "
                "were held to the gate alone"]
    return []


def _quantize_follows(ctx: Any, cfg: PruneConfig) -> bool:
    """A quantize pass comes after this prune pass."""
    from passes.prune.int8_margin import passes_after

    return any(getattr(p, "type", None) == "quantize" for p in passes_after(ctx, cfg) or [])


def _notes(chosen: tuple[float, float], none: bool, stopped: bool, limit: float, source: str, n: int, budget: float) -> list[str]:
    out = [f"prune search: chose sparsity {chosen[0]:g}, head_sparsity {chosen[1]:g} after {n} probe(s) "
           f"(min cosine ≥ {limit:g} from {source}, each probe briefly distilled)"]
    if none:
        out.append("prune search: no probed ratio met the threshold; nothing chosen above the fixed values")
    if stopped:
        out.append(f"prune search: stopped by search_budget_minutes ({budget / 60:g}); the grid was not fully bisected")
    return out


def _probe(cfg: PruneConfig, name: str, model: Any, ctx: Any, g: float, ref: tuple[Any, ...], limit: float) -> Probe:
    from passes.prune.torch_structured import run_structured

    eval_ds, names, reference, teacher = ref
    t0 = time.perf_counter()
    sparsity, heads = point(cfg, g)
    pcfg = cfg.model_copy(update={"sparsity": sparsity, "head_sparsity": heads, "steps": 1, "finetune_epochs": 0})
    pruned = run_structured(pcfg, name, model, ctx)
    before = U.quality(pruned.model.module, eval_ds, names, reference)
    module = _short_distill(cfg, pruned.model, teacher, ctx)
    q = U.quality(module, eval_ds, names, reference)
    # the pipeline's distill pass starts from the pruned weights and trains far longer than the probe:
    # a ratio whose pruned model already meets the target is feasible even when the probe's few large
    # steps moved it away first (MiniLM at FFN 0.125: min cosine 0.865 before, 0.811 after)
    best = max((x.get("min_cosine") for x in (before, q) if x.get("min_cosine") is not None), default=None)
    met_by = None if best is None or best < limit else ("distilled" if q.get("min_cosine") == best else "pruned only")
    return Probe(
        sparsity=sparsity, head_sparsity=heads, min_cosine=q.get("min_cosine"), mean_cosine=q.get("mean_cosine"),
        min_cosine_before_distill=before.get("min_cosine"), macs_reduction=pruned.metrics.get("macs_reduction"),
        latency_ms=_latency_ms(module, model, ctx), params=int(sum(p.numel() for p in module.parameters())),
        seconds=round(time.perf_counter() - t0, 1), meets=met_by is not None, met_by=met_by,
    )


def _short_distill(cfg: PruneConfig, model: Any, teacher: Any, ctx: Any) -> Any:
    """The probe's student after one epoch on the first `search_samples` training samples."""
    import torch

    from passes.distill.config import DistillConfig
    from passes.distill.setup import prepare
    from passes.distill.training import train_student

    task = getattr(getattr(ctx.config, "model", None), "task", "classification")
    dcfg = DistillConfig(epochs=1, lr=cfg.search_lr, output_loss="cosine" if task == "embedding" else "mse",
                         warmup_steps=cfg.search_warmup_steps)
    setup = prepare(model, ctx, dcfg, probe_cpu=False)
    setup.train = setup.train.take(cfg.search_samples)
    setup.data_desc = f"the first {len(setup.train)} samples of {setup.data_desc}"
    setup.eval_ds = None  # the probe measures quality itself, once
    torch.manual_seed(ctx.seed)
    return train_student(model.module, teacher.module, setup, ctx, dcfg, "prune.search").student


def _latency_ms(module: Any, model: Any, ctx: Any, batch: int = 8, repeat: int = 5) -> float | None:
    """Median torch forward time on random inputs of the declared shapes at `batch` (a relative
    figure for the curve: the exported, quantized model is what the report measures)."""
    import numpy as np
    import torch

    if not model.inputs or os.environ.get("OPTIMIZE_SEARCH_LATENCY") == "off":
        return None
    rng = np.random.default_rng(0)
    try:
        args = tuple(torch.from_numpy(s.random(batch, rng)) for s in model.inputs)
        module.eval()
        times = []
        with torch.no_grad():
            module(*args)
            for _ in range(repeat):
                t = time.perf_counter()
                module(*args)
                times.append(time.perf_counter() - t)
    except Exception:  # a shape the spec cannot make concrete: the curve shows MACs only
        return None
    return round(1000 * statistics.median(times), 3)
