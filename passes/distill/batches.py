"""Training batches: the arrays as torch tensors, one item per batch, and each epoch's shuffled
index lists from a DistributedSampler (one process: one replica), so one process and torchrun
share one code path."""

from __future__ import annotations

from typing import Any

from passes.distill.config import fail


class Batches:
    """Map-style dataset for a DataLoader whose sampler yields index lists: one item = one batch."""

    def __init__(self, arrays: list[Any], labels: Any) -> None:
        import numpy as np
        import torch

        # torch tensors sharing the arrays' memory; batches are gathered by torch (index_select),
        # whose outputs are allocated (aligned) by torch like any other activation
        self.arrays = [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]
        self.labels = None if labels is None else torch.from_numpy(np.ascontiguousarray(labels))

    def __getitem__(self, idx: Any) -> tuple[list[Any], Any]:
        import torch

        index = torch.as_tensor(idx, dtype=torch.long)
        xs = [a.index_select(0, index) for a in self.arrays]
        y = None if self.labels is None else self.labels.index_select(0, index)
        return xs, y

    def __len__(self) -> int:
        return len(self.arrays[0])


def as_batch(item: Any) -> Any:
    return item


class EpochPlan:
    """Each epoch's batches of sample indices for this rank."""

    def __init__(self, n: int, batch_size: int, world: int, rank: int, seed: int) -> None:
        from torch.utils.data import DistributedSampler

        if n < world:
            fail(f"{n} training samples cannot be shared by {world} ranks")
        self.batch_size = batch_size
        self.sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.per_rank = len(self.sampler)

    def batches(self, epoch: int) -> list[list[int]]:
        from torch.utils.data import BatchSampler

        self.sampler.set_epoch(epoch)
        # a lone trailing sample is skipped: batch norm cannot train on one sample
        return [b for b in BatchSampler(self.sampler, self.batch_size, drop_last=False) if len(b) > 1 or self.per_rank == 1]


def loader(source: Batches, batches: list[list[int]], num_workers: int) -> Any:
    """The epoch's (inputs, labels) batches, through worker processes when asked."""
    if num_workers:
        from torch.utils.data import DataLoader

        return DataLoader(
            source, sampler=batches, batch_size=None, num_workers=num_workers, collate_fn=as_batch,
            persistent_workers=False,
        )
    # in-process: the DataLoader machinery would only add per-batch overhead
    return (source[b] for b in batches)


def labels_usable(data: Any, task: str) -> bool:
    import numpy as np

    y = data.labels
    if y is None:
        return False
    if task == "classification":
        return y.ndim == 1 and np.issubdtype(y.dtype, np.integer) and len(y) > 0 and int(y.min()) >= 0
    return np.issubdtype(y.dtype, np.floating)
