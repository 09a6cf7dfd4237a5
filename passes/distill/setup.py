"""What training needs before the student exists: the training data (data.train, or random inputs
from the input spec with the teacher's outputs as targets), the input order, the batch size, and
where it runs (device, rank, world size, autocast)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from passes.distill.config import DistillConfig, fail
from passes.distill.devices import placement


@dataclass
class Setup:
    task: str
    train: Any  # optimize.data.Dataset
    data_desc: str
    names: list[str]
    eval_ds: Any
    batch_size: int
    device: Any
    rank: int
    world: int
    use_amp: bool
    amp_dtype: Any
    notes: list[str] = field(default_factory=list)
    amp_probe: bool = False  # decide use_amp by timing a training step once the student exists


def prepare(model: Any, ctx: Any, cfg: DistillConfig, probe_cpu: bool = True) -> Setup:
    """The training setup for `model` (a ModelHandle; its declared inputs order the data).
    `probe_cpu` false: amp auto on the CPU means fp32, unprobed (prune's short fine-tuning runs and
    search probes, whose results are compared with one another)."""
    import torch

    task = getattr(getattr(ctx.config, "model", None), "task", "classification")
    train, data_desc, notes = training_data(model, ctx, cfg)
    names = input_order(model, train)
    eval_ds = ctx.data("eval")
    batch_size = min(cfg.batch_size or ctx.config.data.batch_size, len(train))
    device, rank, world = placement(ctx)
    on_cuda = device.type == "cuda"
    use_amp = cfg.amp is True or (cfg.amp == "auto" and on_cuda)
    amp_dtype = torch.float16 if on_cuda and use_amp and not torch.cuda.is_bf16_supported() else torch.bfloat16
    # amp auto on the CPU is decided by timing the student's own step (passes/distill/cpu_autocast.py)
    amp_probe = probe_cpu and cfg.amp == "auto" and device.type == "cpu" and world == 1
    if cfg.amp is True and device.type == "cpu":
        from passes.distill.cpu_autocast import NATIVE_BF16, native_bf16

        if not native_bf16():
            notes.append(f"distill: amp true on a CPU without {' or '.join(NATIVE_BF16)}: bf16 is emulated there "
                         "and usually slower than fp32 (amp auto measures it)")
    return Setup(task, train, data_desc, names, eval_ds, batch_size, device, rank, world, use_amp, amp_dtype,
                 notes, amp_probe)


def training_data(model: Any, ctx: Any, cfg: DistillConfig) -> tuple[Any, str, list[str]]:
    """(dataset, description, notes): data.train, else random inputs drawn from the input spec."""
    train = ctx.data("train")
    if train is not None:
        labels = "labels" if train.labels is not None else "no labels"
        rounds = getattr(train, "rounds", None)
        if rounds is not None and len(rounds) and int(rounds.max()) >= 0:
            per_round = int((rounds == 0).sum())
            return train, (f"data.train ({int((rounds < 0).sum())} samples + {int(rounds.max()) + 1} rounds of "
                           f"{per_round} variants shared out over the epochs; {labels})"), []
        return train, f"data.train ({len(train)} samples, {labels})", []
    from optimize.data import random_dataset

    specs = ctx.inputs or model.inputs
    train = random_dataset(specs, cfg.random_samples, ctx.seed)
    note = (
        f"distill: no data.train, so the student was trained on {len(train)} random inputs drawn from "
        "the input spec with the teacher's outputs as targets; this is weak (random inputs rarely look "
        "like real data): give data.train for a meaningful result"
    )
    return train, f"{len(train)} random inputs from the input spec", [note]


def input_order(model: Any, data: Any) -> list[str]:
    declared = [s.name for s in model.inputs]
    if declared and all(k in data.inputs for k in declared):
        return declared
    if declared and len(declared) != len(data.inputs):
        fail(f"the data has inputs {sorted(data.inputs)}, the model takes {declared}")
    return list(data.inputs)
