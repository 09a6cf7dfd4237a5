"""Training checkpoints of the distill loop (safetensors, `optimize/train_checkpoint.py`): where
they go, the fingerprint that ties one to its run, saving, finding the latest, clearing stale ones."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from passes.distill.config import DistillConfig


def checkpoint_dir(cfg: DistillConfig, ctx: Any) -> Path | None:
    if not cfg.checkpoint_every:
        return None
    if cfg.checkpoint_dir:
        p = Path(cfg.checkpoint_dir)
        return p if p.is_absolute() else Path(ctx.base_dir) / p
    return Path(ctx.base_dir) / "optimize-checkpoints" / f"step{ctx.step_index:02d}-distill"


def fingerprint(cfg: DistillConfig, trainable: Any, n: int, batch_size: int, world: int, seed: int) -> str:
    dumped = cfg.model_dump(mode="json", exclude={"checkpoint_every", "checkpoint_dir", "num_workers", "budget_minutes"})
    shapes = [(k, list(v.shape)) for k, v in trainable.state_dict().items()]
    blob = json.dumps({"cfg": dumped, "shapes": shapes, "n": n, "batch": batch_size, "world": world, "seed": seed}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def save_checkpoint(directory: Path, trainable: Any, opt: Any, state: dict[str, Any], fingerprint: str, best: Any) -> None:
    from optimize import train_checkpoint

    meta = {"fingerprint": fingerprint, "state": state}
    train_checkpoint.save(directory, state["step"], trainable.state_dict(), opt, meta, best)


def latest(ckpt_dir: Path | None, fingerprint: str, key: str) -> tuple[Path | None, dict[str, Any] | None]:
    """(path, loaded checkpoint) of the newest checkpoint of this run, or (None, None)."""
    from optimize import train_checkpoint

    found = train_checkpoint.latest(ckpt_dir) if ckpt_dir else None
    if found is None:
        return None, None
    return found, train_checkpoint.load(found, fingerprint, key)


def clear_stale(ckpt_dir: Path) -> int:
    """Remove the checkpoints an earlier run left in `ckpt_dir`; returns how many."""
    from optimize import train_checkpoint

    stale = [p for p in ckpt_dir.iterdir() if train_checkpoint.PATTERN.match(p.name)]
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)
