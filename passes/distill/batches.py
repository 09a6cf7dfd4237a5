"""Training batches: the arrays as torch tensors, one item per batch, and each epoch's shuffled
index lists from a DistributedSampler (one process: one replica), so one process and torchrun
share one code path.

Text pays for padding: a tokenized source is padded to its longest example, so a batch of short
lines ran at the length of the longest line in the whole file. Each batch is cut to its own
longest example (the trailing columns where the attention mask is zero in every row: with right
padding and masked attention, an exact no-op for the outputs), and batches are drawn from
length buckets (each epoch's shuffled order sorted by length within windows of
BUCKET_WINDOW batches, the batches then shuffled), so lines of like length share a batch."""

from __future__ import annotations

from typing import Any

from passes.distill.config import fail

BUCKET_WINDOW = 50  # batches per length-sorting window: wide enough to group lengths, narrow enough to mix


class Batches:
    """Map-style dataset for a DataLoader whose sampler yields index lists: one item = one batch
    (inputs, labels, the sample indices). `mask` (an input's position, or None) names the attention
    mask whose all-zero trailing columns are cut from every token array of a batch."""

    def __init__(self, arrays: list[Any], labels: Any, mask: int | None = None) -> None:
        import numpy as np
        import torch

        # torch tensors sharing the arrays' memory; batches are gathered by torch (index_select),
        # whose outputs are allocated (aligned) by torch like any other activation
        self.arrays = [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]
        self.labels = None if labels is None else torch.from_numpy(np.ascontiguousarray(labels))
        self.mask = mask
        width = self.arrays[mask].shape[1] if mask is not None else None
        self.token_arrays = [i for i, a in enumerate(self.arrays) if a.dim() == 2 and a.shape[1] == width]

    def __getitem__(self, idx: Any) -> tuple[list[Any], Any, Any]:
        import torch

        index = torch.as_tensor(idx, dtype=torch.long)
        xs = [a.index_select(0, index) for a in self.arrays]
        y = None if self.labels is None else self.labels.index_select(0, index)
        if self.mask is not None:
            xs = self._trimmed(xs)
        return xs, y, index

    def _trimmed(self, xs: list[Any]) -> list[Any]:
        import torch

        live = torch.nonzero(xs[self.mask].ne(0).any(dim=0))
        width = int(live.max()) + 1 if len(live) else 1
        return [x[:, :width] if i in self.token_arrays else x for i, x in enumerate(xs)]

    def lengths(self) -> Any:
        """Tokens per sample (the attention mask's extent), or None without a mask."""
        import torch

        if self.mask is None:
            return None
        m = self.arrays[self.mask].ne(0)
        cols = torch.arange(m.shape[1]).expand_as(m)
        return torch.where(m, cols + 1, 0).max(dim=1).values.numpy()

    def __len__(self) -> int:
        return len(self.arrays[0])


def as_batch(item: Any) -> Any:
    return item


class EpochPlan:
    """Each epoch's batches of sample indices for this rank. `rounds` (data.train.text_variants):
    each sample's round, -1 for samples of every epoch. With R rounds over `epochs` E, epoch e trains
    on those and rounds e, e + E, e + 2E, … (R ≥ E), or round e mod R (R < E, cycled)."""

    def __init__(self, n: int, batch_size: int, world: int, rank: int, seed: int, lengths: Any = None,
                 rounds: Any = None, epochs: int = 1) -> None:
        import numpy as np

        self.batch_size, self.lengths, self.seed = batch_size, lengths, seed
        self.world, self.rank, self.epochs = world, rank, max(1, epochs)
        self.rounds = rounds if rounds is not None and int(np.max(rounds, initial=-1)) >= 0 else None
        self.n = n
        smallest = min(len(self._subset(e)) for e in range(self.epochs)) if self.rounds is not None else n
        if smallest < world:
            fail(f"{smallest} training samples cannot be shared by {world} ranks")

    def _subset(self, epoch: int) -> Any:
        """The sample indices epoch `epoch` trains on (None: every sample)."""
        import numpy as np

        if self.rounds is None:
            return None
        count = int(self.rounds.max()) + 1
        if count >= self.epochs:
            mine = np.arange(epoch % self.epochs, count, self.epochs)
        else:
            mine = np.array([epoch % count])
        return np.flatnonzero((self.rounds < 0) | np.isin(self.rounds, mine))

    def batches(self, epoch: int) -> list[list[int]]:
        from torch.utils.data import BatchSampler, DistributedSampler

        subset = self._subset(epoch)
        size = self.n if subset is None else len(subset)
        sampler = DistributedSampler(range(size), num_replicas=self.world, rank=self.rank, shuffle=True,
                                     seed=self.seed, drop_last=False)
        sampler.set_epoch(epoch)
        order = list(sampler)
        if subset is not None:  # positions in this epoch's subset → sample indices
            order = [int(subset[i]) for i in order]
        if self.lengths is None:
            batches = list(BatchSampler(order, self.batch_size, drop_last=False))
        else:
            batches = self._bucketed(order, epoch)
        # a lone trailing sample is skipped (batch norm cannot train on one sample), unless every
        # batch is one sample (batch_size 1: skipping them would leave no step at all)
        return [b for b in batches if len(b) > 1 or self.batch_size == 1 or len(sampler) == 1]

    def _bucketed(self, order: list[int], epoch: int) -> list[list[int]]:
        """Batches of like length: the shuffled order sorted by length within windows, the
        batches shuffled again (same seed and epoch → same batches, so a resumed run matches)."""
        import numpy as np

        window = self.batch_size * BUCKET_WINDOW
        batches: list[list[int]] = []
        for start in range(0, len(order), window):
            chunk = sorted(order[start:start + window], key=lambda i: int(self.lengths[i]))
            batches += [chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        rng = np.random.default_rng([self.seed, epoch])
        return [batches[i] for i in rng.permutation(len(batches))]


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


def attention_mask_index(names: list[str], inputs: dict[str, Any]) -> int | None:
    """The position of a 2-D integer `attention_mask` among the inputs (None: no text batches)."""
    import numpy as np

    if "attention_mask" not in names:
        return None
    arr = inputs["attention_mask"]
    return names.index("attention_mask") if arr.ndim == 2 and np.issubdtype(arr.dtype, np.integer) else None


def labels_usable(data: Any, task: str) -> bool:
    import numpy as np

    y = data.labels
    if y is None:
        return False
    if task == "classification":
        return y.ndim == 1 and np.issubdtype(y.dtype, np.integer) and len(y) > 0 and int(y.min()) >= 0
    return np.issubdtype(y.dtype, np.floating)
