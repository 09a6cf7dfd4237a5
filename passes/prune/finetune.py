"""Fine-tuning between gradual pruning steps: the distill package's training loop, called as a
plain function (teacher: the pipeline's input model), so masks and the loss are exactly those of
`distill`. This module imports only the loop, never the distill pass or its students (which derive
width students through prune), so there is no import circle."""

from __future__ import annotations

from typing import Any

FINETUNE_METRICS = ("train_loss", "student_accuracy", "teacher_accuracy", "train_seconds")


def finetune(module: Any, model: Any, ctx: Any, epochs: int, lr: float) -> tuple[Any, dict[str, Any]]:
    """Train a copy of `module` for `epochs` (teacher: the pipeline's input model, else `model`,
    the prune pass's input). Returns (trained module, some distill metrics)."""
    import torch

    from optimize.export import copy_module
    from passes.distill.config import DistillConfig
    from passes.distill.setup import prepare
    from passes.distill.training import train_student

    teacher = getattr(ctx, "input_model", None)
    if teacher is None or teacher.form != "torch" or teacher.module is None:
        teacher = model
    cfg = DistillConfig(epochs=epochs, lr=lr)
    setup = prepare(model.replace(module=module), ctx, cfg, probe_cpu=False)
    torch.manual_seed(ctx.seed)
    trained = train_student(copy_module(module), teacher.module, setup, ctx, cfg)
    return trained.student, {k: trained.metrics.get(k) for k in FINETUNE_METRICS}
