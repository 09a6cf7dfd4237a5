"""Where training runs: the device and rank (torchrun or one process), autocast, channels-last
inputs, and the zero weights held at zero."""

from __future__ import annotations

import contextlib
from typing import Any

from passes.distill.config import fail


def placement(ctx: Any) -> tuple[Any, int, int]:
    """(device, rank, world size) for this process."""
    import os

    import torch

    dist = torch.distributed
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    rank = dist.get_rank() if world > 1 else 0
    want = str(ctx.device or "cpu")
    if want.startswith("cuda"):
        if not torch.cuda.is_available():
            fail("device is cuda but CUDA is not available")
        if want == "cuda":
            index = int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())) if world > 1 else torch.cuda.current_device()
            return torch.device("cuda", index), rank, world
    return torch.device(want), rank, world


def is_main(rank: int) -> bool:
    return rank == 0


def module_device(module: Any) -> Any:
    import torch

    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def amp_context(device: Any, use_amp: bool, amp_dtype: Any) -> Any:
    import torch

    return torch.autocast(device.type, dtype=amp_dtype) if use_amp else contextlib.nullcontext()


def channels_last_copy(x: Any) -> Any:
    """`x` with channels-last strides. Not `x.contiguous(memory_format=...)`: with one channel that
    returns `x` unchanged (its strides already qualify), and torch then keeps activations NCHW."""
    import torch

    return torch.empty_like(x, memory_format=torch.channels_last).copy_(x)


def use_channels_last(mode: Any, student: Any, source: Any, device: Any) -> bool:
    """Whether 4-D inputs go in channels-last (`mode` auto: Conv2d models whose probe forward works)."""
    import torch

    if mode is False or not any(a.dim() == 4 and a.is_floating_point() for a in source.arrays):
        return False
    if mode is True:
        return True
    if not any(isinstance(m, torch.nn.Conv2d) for m in student.modules()):
        return False
    probe, _, _ = source[list(range(min(2, len(source))))]
    probe = [channels_last_copy(x.to(device)) if x.dim() == 4 else x.to(device) for x in probe]
    was = student.training
    student.eval()
    try:
        with torch.no_grad():
            student(*probe)
    except Exception:  # e.g. .view() on an activation that is no longer contiguous
        return False
    finally:
        student.train(was)
    return True


def zero_masks(student: Any) -> list[tuple[Any, Any]]:
    """(parameter, keep-mask) for weights with exact zeros that no parametrization owns."""
    out = []
    for name, p in student.named_parameters():
        if not p.requires_grad or not p.is_floating_point() or p.dim() < 2:
            continue
        if ".parametrizations." in f".{name}":
            continue  # the parametrization (mask, fake quant) owns this weight
        keep = p.detach() != 0
        if not bool(keep.all()):
            out.append((p, keep.to(p.dtype)))
    return out
