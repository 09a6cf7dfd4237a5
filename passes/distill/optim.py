"""The optimizer and the learning-rate schedule (linear warm-up, then cosine / linear / constant)."""

from __future__ import annotations

import math
from typing import Any

from passes.distill.config import DistillConfig


def make_optimizer(cfg: DistillConfig, params: list[Any]) -> Any:
    import torch

    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)


def lr_at(cfg: DistillConfig, step: int, total_steps: int) -> float:
    """The learning rate of (0-based) `step`: linear warm-up to cfg.lr, then the schedule to the end."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return cfg.lr
    span = max(1, total_steps - cfg.warmup_steps)
    p = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.lr * (0.5 * (1.0 + math.cos(math.pi * p)) if cfg.lr_schedule == "cosine" else 1.0 - p)
