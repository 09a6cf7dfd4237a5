"""The distillation loss: KL on temperature-softened logits × T² blended with the hard-label loss
(classification), or MSE / 1 − cosine against the teacher's outputs (regression, embedding)."""

from __future__ import annotations

from typing import Any

from passes.distill.config import DistillConfig, fail


def tensors(out: Any) -> list[Any]:
    """The tensor outputs of a forward call, in order (tensor, tuple/list, dict, ModelOutput)."""
    import torch

    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        flat: list[Any] = []
        for item in out:
            flat.extend(tensors(item))
        return flat
    return []


def distill_loss(cfg: DistillConfig, s_out: Any, t_out: Any, y: Any, task: str) -> tuple[Any, Any, int | None]:
    """(total loss, KD/teacher-matching part, correct top-1 count or None)."""
    s_all, t_all = tensors(s_out), tensors(t_out)
    if not s_all or len(s_all) != len(t_all):
        fail(f"student gives {len(s_all)} tensor outputs, teacher gives {len(t_all)}")
    for s, t in zip(s_all, t_all, strict=True):
        if s.shape != t.shape:
            fail(f"student output shape {tuple(s.shape)} differs from the teacher's {tuple(t.shape)}")
    if task == "classification":
        return _classification_loss(cfg, s_all[0].float(), t_all[0].float(), y)
    return _matching_loss(cfg, s_all, t_all, y)


def _classification_loss(cfg: DistillConfig, s: Any, t: Any, y: Any) -> tuple[Any, Any, int | None]:
    import torch.nn.functional as F

    classes = s.shape[-1]
    temp = cfg.temperature
    kd = F.kl_div(
        F.log_softmax(s.reshape(-1, classes) / temp, dim=-1),
        F.log_softmax(t.reshape(-1, classes) / temp, dim=-1),
        reduction="batchmean",
        log_target=True,
    ) * (temp * temp)
    if y is None or s.dim() != 2 or cfg.alpha >= 1.0:
        return kd, kd, None if y is None or s.dim() != 2 else int((s.argmax(-1) == y).sum())
    if int(y.max()) >= classes:
        fail(f"label {int(y.max())} is out of range for {classes} output classes")
    ce = F.cross_entropy(s, y)
    correct = int((s.argmax(-1) == y).sum())
    return cfg.alpha * kd + (1.0 - cfg.alpha) * ce, kd, correct


def _matching_loss(cfg: DistillConfig, s_all: list[Any], t_all: list[Any], y: Any) -> tuple[Any, Any, None]:
    """Regression / embedding: match every floating output of the teacher."""
    import torch
    import torch.nn.functional as F

    s = s_all[0].float()
    if cfg.output_loss == "cosine":
        parts = [
            (1.0 - F.cosine_similarity(a.float().reshape(len(a), -1), b.float().reshape(len(b), -1), dim=1, eps=1e-8)).mean()
            for a, b in zip(s_all, t_all, strict=True)
            if b.is_floating_point()
        ]
    else:
        parts = [F.mse_loss(a.float(), b.float()) for a, b in zip(s_all, t_all, strict=True) if b.is_floating_point()]
    match = torch.stack(parts).mean() if parts else s.sum() * 0.0
    if y is not None and cfg.alpha < 1.0 and y.numel() == s.numel():
        return cfg.alpha * match + (1.0 - cfg.alpha) * F.mse_loss(s, y.float().reshape(s.shape)), match, None
    return match, match, None


def loss_text(cfg: DistillConfig, task: str, with_labels: bool) -> str:
    if task != "classification":
        return "1 - cosine(student, teacher)" if cfg.output_loss == "cosine" else "MSE(student, teacher)"
    kd = f"KL(softmax(t/T) || softmax(s/T)) * T^2, T={cfg.temperature:g}"
    if with_labels and cfg.alpha < 1.0:
        return f"{cfg.alpha:g} * {kd} + {1 - cfg.alpha:g} * cross_entropy(s, labels)"
    return kd
