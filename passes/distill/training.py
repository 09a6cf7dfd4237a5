"""The distillation training loop, as a plain function: `train_student(student, teacher, setup,
ctx, cfg)` trains `student` (in place) to match `teacher` and returns its metrics and notes. The
distill pass calls it after building the student; prune's gradual fine-tuning calls it between
steps (passes/prune/finetune.py).

One epoch: shuffled batches of this rank's shard, the teacher forward under no_grad, the student
forward (with feature hooks), the loss, a step (warm-up + schedule, optional clipping and loss
scaling), zero weights put back to zero, a checkpoint every N steps; after the epoch, the loss sums
are reduced across ranks and the eval score decides early stopping and the best weights.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from passes.distill.batches import Batches, EpochPlan, attention_mask_index, labels_usable, loader
from passes.distill.budget import FIRST_LOOK
from passes.distill.checkpoints import (
    checkpoint_dir,
    clear_stale,
    fingerprint,
    latest,
    save_checkpoint,
)
from passes.distill.config import DistillConfig, fail
from passes.distill.devices import (
    amp_context,
    channels_last_copy,
    is_main,
    module_device,
    use_channels_last,
    zero_masks,
)
from passes.distill.evaluation import (
    evaluate,
    score,
    score_of,
)
from passes.distill.loss import distill_loss
from passes.distill.optim import lr_at, make_optimizer
from passes.distill.setup import Setup
from passes.distill.summary import summarize
from passes.distill.teacher_cache import TeacherCache


@dataclass
class Trained:
    student: Any
    metrics: dict[str, Any]
    notes: list[str]


def _fresh_state() -> dict[str, Any]:
    """What a checkpoint carries besides the weights: counters, sums, histories, selection."""
    return {
        "step": 0, "epoch": 0, "batch": 0, "history": [], "kd_history": [], "feat_history": [],
        "sums": [0.0] * 5, "acc_known": True, "best_score": None, "best_epoch": None, "bad_epochs": 0,
        "eval_scores": [], "clipped": 0, "samples": 0, "stopped_early": False, "seconds": 0.0,
        # budget_minutes: epochs planned, wall seconds of the epochs (and the first alone); the amp choice
        "epochs": None, "wall": 0.0, "first_epoch_s": None, "replans": 0, "amp": None,
        "eager_attention": False,
    }


@dataclass
class _Loop:
    """One training run's moving parts, filled in by `_build`."""

    cfg: DistillConfig
    ctx: Any
    key: str
    setup: Setup
    student: Any
    teacher: Any
    metrics: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    recorders: list[Any] = field(default_factory=list)
    progress_open: bool = False
    zero_masks: list[tuple[Any, Any]] = field(default_factory=list)
    labels_ok: bool = False
    plan: Any = None
    source: Any = None
    use_cl: bool = False
    s_rec: Any = None
    t_rec: Any = None
    trainable: Any = None
    train_module: Any = None
    params: list[Any] = field(default_factory=list)
    opt: Any = None
    scaler: Any = None
    before: dict[str, Any] = field(default_factory=dict)
    ckpt_dir: Path | None = None
    fingerprint: str = ""
    state: dict[str, Any] = field(default_factory=_fresh_state)
    best_state: Any = None
    resumed_from: str | None = None
    total_steps: int = 0
    select: bool = False
    t0: float = 0.0
    w0: float = 0.0  # wall clock at the epoch's start (or its last checkpoint): budget_minutes
    epoch_steps: int = 0
    t_cache: TeacherCache | None = None
    frozen: list[Any] = field(default_factory=list)
    attention: Any = None  # cpu_autocast.attention_switch, turned on for training under autocast


def train_student(student: Any, teacher: Any, setup: Setup, ctx: Any, cfg: DistillConfig, key: str = "distill") -> Trained:
    """Train `student` to match `teacher` (run forward only, in eval mode; its device, mode and
    the thread count are restored afterwards). The student ends on the CPU in eval mode."""
    import torch

    loop = _Loop(cfg, ctx, key, setup, student, teacher)
    teacher_was_training = teacher.training
    teacher_device = module_device(teacher)
    prev_threads = torch.get_num_threads()
    if ctx.threads:
        torch.set_num_threads(max(1, int(ctx.threads)))
    try:
        _build(loop)
        _train(loop)
        after = _after(loop)
    finally:
        for p in loop.frozen:
            p.requires_grad_(True)
        for rec in loop.recorders:
            rec.remove()
        if loop.progress_open and sys.exc_info()[0] is not None:
            ctx.progress.finish("distill", "failed")
        if loop.attention is not None:
            loop.attention(False)
        teacher.to(teacher_device)
        teacher.train(teacher_was_training)
        torch.set_num_threads(prev_threads)
    student.to("cpu")
    student.eval()
    summarize(loop, after)
    return Trained(student, loop.metrics, loop.notes)


# ---------------------------------------------------------------- before the first step


def _build(loop: _Loop) -> None:
    import torch

    cfg, s = loop.cfg, loop.setup
    loop.teacher.eval()
    loop.teacher.to(s.device)
    loop.student.to(s.device)
    loop.zero_masks = zero_masks(loop.student) if cfg.keep_zeros else []
    loop.labels_ok = labels_usable(s.train, s.task)
    if s.train.labels is not None and not loop.labels_ok and s.task == "classification":
        loop.notes.append("distill: training labels are not 1-D integer class ids; trained with pure KD")
    loop.source = Batches([s.train.inputs[k] for k in s.names], s.train.labels if loop.labels_ok else None,
                          mask=attention_mask_index(s.names, s.train.inputs))
    loop.plan = EpochPlan(len(s.train), s.batch_size, s.world, s.rank, loop.ctx.seed, lengths=loop.source.lengths(),
                          rounds=getattr(s.train, "rounds", None), epochs=cfg.epochs)
    loop.total_steps = _steps_for(loop, cfg.epochs)
    loop.t_cache = TeacherCache.for_run(cfg, len(s.train), loop.metrics)
    loop.use_cl = use_channels_last(cfg.channels_last, loop.student, loop.source, s.device)
    loop.metrics["channels_last"] = loop.use_cl
    own_hooks = any(m._forward_hooks or m._forward_pre_hooks for m in loop.student.modules())
    _wrap(loop, _feature_hooks(loop))
    loop.before = evaluate(loop.student, loop.teacher, s.eval_ds, s.names, s.batch_size, s.device, s.task, with_teacher=True)
    loop.opt = make_optimizer(cfg, loop.params)
    loop.scaler = torch.amp.GradScaler("cuda") if s.use_amp and s.amp_dtype == torch.float16 else None
    _restore(loop)
    if s.amp_probe:
        _choose_cpu_autocast(loop, own_hooks)


def _feature_hooks(loop: _Loop) -> Any:
    """Feature distillation: hooks on both models, and projections sized by a probe forward."""
    import torch

    cfg, s = loop.cfg, loop.setup
    if not cfg.features:
        return None
    from passes.distill.features import Recorder, make_projections

    loop.s_rec = Recorder(loop.student, [p.student for p in cfg.features])
    loop.t_rec = Recorder(loop.teacher, [p.teacher for p in cfg.features])
    loop.recorders = [loop.s_rec, loop.t_rec]
    probe, _, _ = loop.source[list(range(min(2, len(s.train))))]
    probe = [x.to(s.device) for x in probe]
    was = loop.student.training
    loop.student.eval()
    with torch.no_grad():
        loop.student(*probe)
        loop.teacher(*probe)
    loop.student.train(was)
    projections = make_projections(cfg.features, loop.s_rec.take(), loop.t_rec.take(), loop.key).to(s.device)
    loop.metrics["feature_pairs"] = [f"{p.teacher} <- {p.student}" for p in cfg.features]
    loop.metrics["feature_projections"] = [type(p).__name__ for p in projections]
    return projections


def _wrap(loop: _Loop, projections: Any) -> None:
    """The trained module: student + projections, in DistributedDataParallel under torchrun."""
    import torch

    from passes.distill.features import Trainable

    s = loop.setup
    _freeze(loop)
    loop.trainable = Trainable.wrap(loop.student, loop.s_rec, projections if projections is not None else torch.nn.ModuleList())
    loop.params = [p for p in loop.trainable.parameters() if p.requires_grad]
    if not any(p.requires_grad for p in loop.student.parameters()):
        fail("the student has no trainable parameters" + (" (freeze matches them all)" if loop.frozen else ""))
    loop.train_module = loop.trainable
    if s.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ids = [s.device.index] if s.device.type == "cuda" else None
        loop.train_module = DistributedDataParallel(loop.trainable, device_ids=ids)


def _freeze(loop: _Loop) -> None:
    """`freeze`: the matching student parameters stop requiring gradients for this run (restored after)."""
    from fnmatch import fnmatchcase

    patterns = loop.cfg.freeze
    if not patterns:
        return
    named = list(loop.student.named_parameters())
    if not named:
        fail("freeze: the student has no parameters")
    unmatched = [pat for pat in patterns if not any(fnmatchcase(n, pat) for n, _ in named)]
    if unmatched:
        fail(f"freeze: {', '.join(unmatched)} matches no parameter of the student (names look like {named[0][0]!r})")
    frozen = [p for n, p in named if p.requires_grad and any(fnmatchcase(n, pat) for pat in patterns)]
    for p in frozen:
        p.requires_grad_(False)
    loop.frozen = frozen
    total = sum(p.numel() for _, p in named)
    loop.metrics["frozen_params"] = sum(p.numel() for p in frozen)
    loop.metrics["frozen_fraction"] = round(loop.metrics["frozen_params"] / total, 4) if total else 0.0


def _choose_cpu_autocast(loop: _Loop, own_hooks: bool) -> None:
    """amp auto on the CPU: bf16 autocast where a middle batch of the first epoch trains measurably
    faster under it, with transformers' eager attention where that is faster still (the probe leaves
    the weights, buffers and random state as they were). A resumed run keeps its checkpoint's
    choice; a student with forward hooks of its own (quantization-aware training's observers keep
    their ranges outside any buffer) trains in fp32, unprobed."""
    from passes.distill.cpu_autocast import attention_switch, decide, native_bf16

    s, state = loop.setup, loop.state
    switch = attention_switch(loop.student, loop.teacher)
    eager = False
    if state["amp"] is not None and (not state["amp"] or native_bf16()):
        s.use_amp, eager, why = state["amp"], state["eager_attention"] and state["amp"], "kept from the checkpoint resumed"
    elif own_hooks:
        s.use_amp, why = False, "fp32: the student has forward hooks of its own (e.g. quantization-aware training), not probed"
    else:
        batches = loop.plan.batches(0)
        xs, y, idx = loop.source[batches[len(batches) // 2]]
        xs, y = _on_device(loop, xs, y)
        was = loop.train_module.training
        loop.train_module.train(loop.cfg.train_mode)
        cache, loop.t_cache = loop.t_cache, None  # the probe's teacher outputs are not kept

        def step(use_amp: bool) -> None:
            s.use_amp = use_amp
            _forward(loop, xs, y, idx)[0].backward()

        try:
            s.use_amp, eager, why = decide(step, loop.trainable, switch)
        finally:
            loop.t_cache = cache
            loop.train_module.train(was)
    if eager and switch is not None:
        loop.attention = switch
        switch(True)
    state["amp"], state["eager_attention"] = s.use_amp, loop.attention is not None
    loop.metrics["amp_choice"] = why


def _restore(loop: _Loop) -> None:
    """With --resume: continue from the latest checkpoint; else clear an earlier run's ones."""
    import torch

    cfg, ctx, s = loop.cfg, loop.ctx, loop.setup
    loop.ckpt_dir = checkpoint_dir(cfg, ctx)
    loop.fingerprint = fingerprint(cfg, loop.trainable, len(s.train), s.batch_size, s.world, ctx.seed)
    if getattr(ctx, "resume", False):
        found, ck = latest(loop.ckpt_dir, loop.fingerprint, loop.key)
        if ck is None:
            loop.notes.append(f"distill: --resume, but no checkpoint in {loop.ckpt_dir}; trained from the start")
            return
        loop.trainable.load_state_dict({k: v.to(s.device) for k, v in ck["model"].items()})
        loop.opt.load_state_dict(ck["optim"])
        torch.set_rng_state(ck["rng"])
        loop.state.update(ck["meta"]["state"])
        loop.best_state = ck["best"]
        loop.resumed_from = str(found)
        loop.total_steps = _steps_for(loop, loop.state["epochs"] or cfg.epochs)
        loop.notes.append(f"distill: resumed from {found} (step {loop.state['step']} of {loop.total_steps})")
    elif loop.ckpt_dir is not None and loop.ckpt_dir.is_dir() and is_main(s.rank):
        removed = clear_stale(loop.ckpt_dir)
        if removed:
            loop.notes.append(
                f"distill: removed {removed} checkpoint(s) of an earlier run in {loop.ckpt_dir} (use --resume to continue one)"
            )


# ---------------------------------------------------------------- epochs and steps


def _steps_for(loop: _Loop, epochs: float) -> int:
    """Steps in `epochs`: whole epochs, then the first steps of a part of one (budget_minutes)."""
    from passes.distill.budget import steps_planned

    return steps_planned(epochs, [len(loop.plan.batches(e)) for e in range(math.ceil(epochs - 1e-9))])


def _planned_part(loop: _Loop, fit: float) -> float:
    """`fit` epochs as they can run: the part of the last one rounded down to whole steps."""
    whole = int(fit + 1e-9)
    if fit - whole < 1e-9:
        return float(whole)
    steps = len(loop.plan.batches(whole))
    return whole + int((fit - whole) * steps + 1e-9) / steps


def _train(loop: _Loop) -> None:
    cfg, ctx, state = loop.cfg, loop.ctx, loop.state
    loop.select = loop.setup.eval_ds is not None and (cfg.keep_best or cfg.early_stopping_patience is not None)
    if loop.select and cfg.keep_best and state["best_score"] is None and state["step"] == 0:
        _start_as_candidate(loop)
    # a resumed run keeps its budget's plan; one resumed without a budget trains every epoch
    state["epochs"] = (state["epochs"] or cfg.epochs) if cfg.budget_minutes is not None else cfg.epochs
    loop.total_steps = _steps_for(loop, state["epochs"])
    epochs_label = f"{state['epochs']} epochs" + (f", resumed at step {state['step']}" if loop.resumed_from else "")
    ctx.progress.start("distill", f"distill ({epochs_label}, {loop.setup.data_desc})", cfg.epochs)
    loop.progress_open = True
    if state["epoch"]:
        ctx.progress.advance("distill", state["epoch"], "resumed")
    loop.train_module.train(loop.cfg.train_mode)
    while state["epoch"] < state["epochs"] and not state["stopped_early"]:
        _epoch(loop)
        if cfg.budget_minutes is not None:
            _fit_budget(loop)


def _fit_budget(loop: _Loop) -> None:
    """budget_minutes: plan the epochs that fit at the pace so far (passes/distill/budget.py; rank 0
    decides for all) and re-plan the schedule over them."""
    from passes.distill.budget import epochs_that_fit, pace_s, shown

    cfg, state = loop.cfg, loop.state
    if state["epoch"] >= state["epochs"]:  # the schedule has ended (its last epoch maybe a part)
        return
    done = state["epoch"] + state["batch"] / max(1, loop.epoch_steps)
    spent = state["wall"] + (time.perf_counter() - loop.w0 if state["batch"] else 0.0)
    pace = pace_s(done, spent, state["first_epoch_s"])
    # grows back only while a whole epoch of its schedule is left: one ending would restart the
    # learning rate high
    cap = cfg.epochs if done < int(state["epochs"] + 1e-9) else state["epochs"]
    fit = _planned_part(loop, _rank0(loop, epochs_that_fit(cfg.budget_minutes * 60, spent, pace, done, cap)))
    if abs(fit - state["epochs"]) > 1e-9:
        state["epochs"] = fit
        state["replans"] += 1
        loop.total_steps = _steps_for(loop, fit)
        info = f"budget: {shown(fit)} of {cfg.epochs} epochs at {pace:.0f} s each"
        loop.ctx.progress.advance("distill", 0, info)
        loop.ctx.log.info("distill: %s (after %.2f epochs, %.0f s)", info, done, spent)


def _rank0(loop: _Loop, value: float) -> float:
    """Rank 0's eval score on every rank (one process: the value itself), so all ranks decide alike."""
    import torch

    s = loop.setup
    if s.world == 1:
        return value
    box = torch.tensor([value], dtype=torch.float64, device=s.device)
    torch.distributed.broadcast(box, 0)
    return float(box.item())


def _start_as_candidate(loop: _Loop) -> None:
    """keep_best: the weights training starts from are the first candidate (epoch 0, scored from the
    evaluation before training: no second pass), so a run that only moves the student away from its
    teacher on data.eval (a lightly pruned model, a high lr) hands back what it was given."""
    state = loop.state
    state["best_score"] = state["eval_start"] = _rank0(loop, score_of(loop.cfg, loop.setup.task, loop.before, loop.before))
    state["best_epoch"] = 0
    loop.best_state = {k: v.detach().clone() for k, v in loop.trainable.state_dict().items()}


def _epoch(loop: _Loop) -> None:
    state = loop.state
    epoch = state["epoch"]
    batches = loop.plan.batches(epoch)
    loop.epoch_steps = len(batches)
    if state["epochs"] is not None and epoch == int(state["epochs"] + 1e-9):  # a part of one (budget)
        batches = batches[: round((state["epochs"] - epoch) * len(batches))]
    batches = batches[state["batch"]:]
    sums = list(state["sums"])  # loss, kd, feature, correct, count (float64 sums)
    loop.t0 = loop.w0 = time.perf_counter()
    for xs, y, idx in loader(loop.source, batches, loop.cfg.num_workers):
        _step(loop, xs, y, idx, sums, epoch)
    state["seconds"] += time.perf_counter() - loop.t0
    info = _record_epoch(loop, _reduced(loop, sums))
    if loop.select:
        info += _select(loop, epoch)
    elapsed = state["seconds"]
    info += f" {state['samples'] * loop.setup.world / elapsed:.0f} samples/s" if elapsed > 0 else ""
    state["epoch"] += 1
    state["batch"] = 0
    state["sums"] = [0.0] * 5
    state["wall"] += time.perf_counter() - loop.w0
    if epoch == 0:
        state["first_epoch_s"] = state["wall"]
    loop.ctx.progress.advance("distill", 1, info)


def _step(loop: _Loop, xs: list[Any], y: Any, idx: Any, sums: list[float], epoch: int) -> None:
    cfg, s, state = loop.cfg, loop.setup, loop.state
    xs, y = _on_device(loop, xs, y)
    loss, kd, correct, feat = _forward(loop, xs, y, idx)
    step = state["step"]
    loss_value = loss.item()
    if not math.isfinite(loss_value):
        fail(
            f"the loss became {loss_value} at epoch {epoch + 1}, step {step + 1}; "
            f"lower lr (now {cfg.lr}) or check the data"
        )
    _update(loop, loss, lr_at(cfg, step, loop.total_steps))
    bs = len(xs[0])
    state["acc_known"] = state["acc_known"] and correct is not None
    kd_value = loss_value if kd is loss else kd.item()
    for i, v in enumerate(
        (loss_value * bs, kd_value * bs, (feat.item() if feat is not None else 0.0) * bs, float(correct or 0), bs)
    ):
        sums[i] += v
    state["step"] += 1
    state["batch"] += 1
    state["samples"] += bs
    if cfg.budget_minutes is not None and epoch == 0 and state["batch"] == max(1, int(FIRST_LOOK * loop.epoch_steps)):
        _fit_budget(loop)
    if cfg.checkpoint_every and loop.ckpt_dir is not None and state["step"] % cfg.checkpoint_every == 0:
        now = time.perf_counter()
        state["seconds"] += now - loop.t0
        state["wall"] += now - loop.w0
        loop.t0 = loop.w0 = now
        state["sums"] = list(sums)
        if is_main(s.rank):
            save_checkpoint(loop.ckpt_dir, loop.trainable, loop.opt, state, loop.fingerprint, loop.best_state)


def _on_device(loop: _Loop, xs: list[Any], y: Any) -> tuple[list[Any], Any]:
    device = loop.setup.device
    xs = [x.to(device, non_blocking=True) for x in xs]
    if loop.use_cl:
        xs = [channels_last_copy(x) if x.dim() == 4 else x for x in xs]
    return xs, (y.to(device, non_blocking=True) if y is not None else None)


def _forward(loop: _Loop, xs: list[Any], y: Any, idx: Any) -> tuple[Any, Any, int | None, Any]:
    """(loss, KD part, correct top-1 count, feature loss) of one batch."""
    import torch

    cfg, s = loop.cfg, loop.setup
    t_out = loop.t_cache.get(idx, s.device) if loop.t_cache is not None else None
    if t_out is None:
        with torch.no_grad(), amp_context(s.device, s.use_amp, s.amp_dtype):
            t_out = loop.teacher(*xs)
        if loop.t_cache is not None:
            loop.t_cache.put(idx, t_out, loop.metrics)
    t_feats = loop.t_rec.take() if loop.t_rec is not None else []
    with amp_context(s.device, s.use_amp, s.amp_dtype):
        s_out, s_feats = loop.train_module(*xs)
    loss, kd, correct = distill_loss(cfg, s_out, t_out, y, s.task)
    feat = None
    if cfg.features:
        from passes.distill.features import feature_loss

        mask = xs[s.names.index("attention_mask")] if "attention_mask" in s.names else None
        feat = feature_loss(cfg.features, s_feats, t_feats, cfg.feature_loss, mask)
        loss = loss + feat
    return loss, kd, correct, feat


def _update(loop: _Loop, loss: Any, lr: float) -> None:
    """One optimizer step at `lr` (loss scaling, clipping), then zero weights back to zero."""
    import torch

    cfg, opt, scaler = loop.cfg, loop.opt, loop.scaler
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        if cfg.grad_clip is not None:
            scaler.unscale_(opt)
    else:
        loss.backward()
    if cfg.grad_clip is not None:
        norm = torch.nn.utils.clip_grad_norm_(loop.params, cfg.grad_clip)
        loop.state["clipped"] += int(float(norm) > cfg.grad_clip)
    if scaler is not None:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()
    if loop.zero_masks:
        with torch.no_grad():
            for p, keep in loop.zero_masks:
                p.mul_(keep)


def _reduced(loop: _Loop, sums: list[float]) -> list[float]:
    """The epoch's sums over every rank."""
    if loop.setup.world <= 1:
        return sums
    import torch

    reduced = torch.tensor(sums, dtype=torch.float64, device=loop.setup.device)
    torch.distributed.all_reduce(reduced)
    return reduced.cpu().tolist()


def _record_epoch(loop: _Loop, sums: list[float]) -> str:
    state = loop.state
    loss_sum, kd_sum, feat_sum, correct_sum, count = sums
    state["history"].append(loss_sum / count)
    state["kd_history"].append(kd_sum / count)
    state["feat_history"].append(feat_sum / count)
    train_acc = 100.0 * correct_sum / count if state["acc_known"] else None
    state["train_acc"] = train_acc
    return f"loss {state['history'][-1]:.3f}" + (f" acc {train_acc:.1f}%" if train_acc is not None else "")


def _select(loop: _Loop, epoch: int) -> str:
    """Score the epoch on data.eval: keep the best weights, count epochs without improvement."""
    cfg, s, state = loop.cfg, loop.setup, loop.state
    value = _rank0(loop, score(cfg, loop.student, loop.teacher, s.eval_ds, s.names, s.batch_size, s.device, s.task, loop.before))
    state["eval_scores"].append(value)
    info = f" eval {value:.{4 if s.task != 'classification' else 1}f}"
    if state["best_score"] is None or value > state["best_score"] + cfg.min_delta:
        state["best_score"], state["best_epoch"], state["bad_epochs"] = value, epoch + 1, 0
        if cfg.keep_best:
            loop.best_state = {k: v.detach().clone() for k, v in loop.trainable.state_dict().items()}
    else:
        state["bad_epochs"] += 1
        if cfg.early_stopping_patience and state["bad_epochs"] >= cfg.early_stopping_patience:
            state["stopped_early"] = True
    loop.train_module.train(loop.cfg.train_mode)
    return info


# ---------------------------------------------------------------- after the last step


def _after(loop: _Loop) -> dict[str, Any]:
    """The best weights back (keep_best), and the evaluation after training."""
    s = loop.setup
    if loop.cfg.keep_best and loop.best_state is not None:
        loop.trainable.load_state_dict(loop.best_state)
    return evaluate(
        loop.student, loop.teacher, s.eval_ds, s.names, s.batch_size, s.device, s.task,
        with_teacher=s.task != "classification", teacher_preds=loop.before.get("teacher_preds"),
    )
