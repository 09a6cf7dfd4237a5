"""distill: text batches cut to their own longest example, length buckets, and the sample indices
each batch carries (for the teacher-target cache)."""

from __future__ import annotations

import numpy as np
import torch

from passes.distill.batches import Batches, EpochPlan, attention_mask_index


def padded_text(lengths: list[int], width: int = 32) -> dict[str, np.ndarray]:
    ids = np.zeros((len(lengths), width), np.int64)
    mask = np.zeros((len(lengths), width), np.int64)
    for i, n in enumerate(lengths):
        ids[i, :n] = np.arange(1, n + 1)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask}


def test_a_batch_is_cut_to_its_longest_example_and_carries_its_indices():
    data = padded_text([3, 7, 5, 20])
    names = ["input_ids", "attention_mask"]
    source = Batches([data[k] for k in names], None, mask=attention_mask_index(names, data))
    xs, y, idx = source[[0, 2]]
    assert [x.shape for x in xs] == [(2, 5), (2, 5)] and y is None and idx.tolist() == [0, 2]
    assert torch.equal(xs[0], torch.from_numpy(data["input_ids"][[0, 2], :5]))
    xs, _, _ = source[[1, 3]]
    assert xs[0].shape == (2, 20)
    assert source.lengths().tolist() == [3, 7, 5, 20]


def test_no_mask_no_cut():
    data = padded_text([3, 7])
    assert attention_mask_index(["input_ids"], data) is None
    source = Batches([data["input_ids"]], None)
    assert source[[0, 1]][0][0].shape == (2, 32) and source.lengths() is None


def test_buckets_group_like_lengths_cover_every_sample_once_and_repeat_per_seed():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 128, 1000)
    plan = EpochPlan(1000, 16, 1, 0, seed=3, lengths=lengths)
    batches = plan.batches(0)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    spread = np.mean([lengths[b].max() - lengths[b].min() for b in batches])
    plain = EpochPlan(1000, 16, 1, 0, seed=3).batches(0)
    assert spread < 0.2 * np.mean([lengths[b].max() - lengths[b].min() for b in plain])
    assert plan.batches(0) == batches and plan.batches(1) != batches  # resumable, reshuffled per epoch
