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


def test_variant_rounds_train_the_lines_every_epoch_and_one_round_per_epoch():
    # 6 lines (round -1) and 2 rounds of 4 variants over 4 epochs: each epoch the lines + one round, cycled
    rounds = np.array([-1] * 6 + [0] * 4 + [1] * 4)
    lengths = np.arange(1, len(rounds) + 1)
    plan = EpochPlan(len(rounds), 2, world=1, rank=0, seed=5, lengths=lengths, rounds=rounds, epochs=4)
    for epoch in range(4):
        got = sorted(i for b in plan.batches(epoch) for i in b)
        assert got == [*range(6), *(range(6, 10) if epoch % 2 == 0 else range(10, 14))], epoch
    plain = EpochPlan(len(rounds), 2, world=1, rank=0, seed=5, lengths=lengths, rounds=np.full(len(rounds), -1))
    assert sorted(i for b in plain.batches(1) for i in b) == list(range(len(rounds)))  # no rounds: every sample


def test_more_rounds_than_epochs_share_them_out():
    # 5 rounds of 2 variants over 2 epochs: epoch 0 takes rounds 0, 2, 4; epoch 1 rounds 1, 3
    rounds = np.array([-1] * 4 + [r for r in range(5) for _ in range(2)])
    plan = EpochPlan(len(rounds), 2, world=1, rank=0, seed=1, rounds=rounds, epochs=2)
    got = [sorted(i for b in plan.batches(e) for i in b) for e in (0, 1, 2)]
    assert got[0] == [0, 1, 2, 3, 4, 5, 8, 9, 12, 13] and got[1] == [0, 1, 2, 3, 6, 7, 10, 11]
    assert got[2] == got[0]  # a third epoch (not planned for) repeats the first's rounds


def test_variant_rounds_split_between_ranks_without_overlap():
    rounds = np.array([-1] * 8 + [0] * 8 + [1] * 8)
    plans = [EpochPlan(len(rounds), 2, world=2, rank=r, seed=0, rounds=rounds, epochs=2) for r in (0, 1)]
    for epoch in (0, 1):
        parts = [sorted(i for b in p.batches(epoch) for i in b) for p in plans]
        assert not set(parts[0]) & set(parts[1]) and len(parts[0]) == len(parts[1]) == 8
        assert sorted(parts[0] + parts[1]) == [*range(8), *(range(8, 16) if epoch == 0 else range(16, 24))]


def test_batch_size_one_trains_on_every_sample_and_larger_batches_skip_a_lone_trailing_one() -> None:
    from passes.distill.batches import EpochPlan

    ones = EpochPlan(5, 1, 1, 0, seed=0).batches(0)
    assert sorted(b[0] for b in ones) == list(range(5)) and all(len(b) == 1 for b in ones)
    pairs = EpochPlan(5, 2, 1, 0, seed=0).batches(0)
    assert [len(b) for b in pairs] == [2, 2]  # the fifth sample alone is skipped
