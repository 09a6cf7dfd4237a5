"""A distillation run's metrics and notes, once training is over (passes/distill/training.py's loop
hands over its state): loss histories, throughput, the options in use and what they did."""

from __future__ import annotations

from typing import Any

from passes.distill.budget import note, pace_s
from passes.distill.evaluation import accuracy_metrics, rounded, score_name
from passes.distill.loss import loss_text


def summarize(loop: Any, after: dict[str, Any]) -> None:
    """The run's metrics and notes, once training is over; the progress line finished."""
    cfg, s, state, metrics = loop.cfg, loop.setup, loop.state, loop.metrics
    seconds = state["seconds"]
    history, kd_history = state["history"], state["kd_history"]
    metrics.update({
        "epochs": cfg.epochs,
        "epochs_run": len(history),
        "epochs_in_budget": round(state["epochs"], 3) if cfg.budget_minutes is not None else None,
        "steps": state["step"],
        "batch_size": s.batch_size,
        "samples_per_s": round(state["samples"] * s.world / seconds, 1) if seconds > 0 else None,
        "train_seconds": round(seconds, 3),
        "train_loss": rounded(history[-1]) if history else None,
        "train_loss_first_epoch": rounded(history[0]) if history else None,
        "kd_loss": rounded(kd_history[-1]) if kd_history else None,
        "kd_loss_first_epoch": rounded(kd_history[0]) if kd_history else None,
        "loss_per_epoch": [rounded(v) for v in history[:100]],
        "train_accuracy": rounded(state.get("train_acc")),
        "loss": loss_text(cfg, s.task, loop.labels_ok and s.task == "classification"),
        "data": s.data_desc,
        "device": str(s.device),
        "amp": str(s.amp_dtype).replace("torch.", "") if s.use_amp else None,
        "world_size": s.world,
        "frozen_zero_weights": int(sum(int((keep == 0).sum()) for _, keep in loop.zero_masks)),
        "lr_schedule": cfg.lr_schedule + (f" after {cfg.warmup_steps} warm-up steps" if cfg.warmup_steps else ""),
    })
    _optional_metrics(loop)
    metrics.update(accuracy_metrics(s.task, s.eval_ds, loop.before, after))
    info = (
        f"student {metrics['student_accuracy']:.1f}% (teacher {metrics['teacher_accuracy']:.1f}%)"
        if metrics.get("student_accuracy") is not None and metrics.get("teacher_accuracy") is not None
        else (f"loss {history[-1]:.3f}" if history else "no steps left")
    )
    loop.ctx.progress.finish("distill", info)
    loop.ctx.log.info("distill: %s", info)


def _optional_metrics(loop: Any) -> None:
    """Metrics of the options in use: features, clipping, selection on data.eval, checkpoints."""
    cfg, state, metrics = loop.cfg, loop.state, loop.metrics
    if cfg.features:
        metrics["feature_loss"] = rounded(state["feat_history"][-1]) if state["feat_history"] else None
        metrics["feature_loss_first_epoch"] = rounded(state["feat_history"][0]) if state["feat_history"] else None
    if cfg.grad_clip is not None:
        metrics["clipped_steps"] = state["clipped"]
    if loop.select:
        metrics["eval_metric_per_epoch"] = [rounded(v) for v in state["eval_scores"][:100]]
        if state.get("eval_start") is not None:  # keep_best: the starting weights' score (best_epoch 0)
            metrics["eval_metric_start"] = rounded(state["eval_start"])
        metrics["best_epoch"] = state["best_epoch"]
        metrics["stopped_early"] = state["stopped_early"]
        metrics["eval_metric"] = score_name(cfg, loop.setup.task, loop.setup.eval_ds)
        if cfg.keep_best and state["best_epoch"] == 0:
            loop.notes.append(
                "distill: no epoch beat the starting weights on data.eval (keep_best): they are returned unchanged"
            )
        elif cfg.keep_best:
            loop.notes.append(
                f"distill: keep_best returned the weights of epoch {state['best_epoch']}, chosen on data.eval; "
                "accuracy measured on the same data is optimistic by that choice"
            )
    history = state["history"]
    if cfg.budget_minutes is not None and state.get("replans") and not state["stopped_early"] and history:
        pace = pace_s(min(len(history), state["epochs"]), state["wall"], state["first_epoch_s"])
        loop.notes.append(note(cfg.budget_minutes, cfg.epochs, state["epochs"], pace))
    if cfg.checkpoint_every and loop.ckpt_dir is not None:
        metrics["checkpoint_dir"] = str(loop.ckpt_dir)
    metrics["resumed_from"] = loop.resumed_from

