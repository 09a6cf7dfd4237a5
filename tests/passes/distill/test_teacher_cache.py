"""distill: the teacher's targets computed once per sample and reused across epochs."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from passes.distill.teacher_cache import TeacherCache


def test_cache_answers_only_for_batches_it_has_fully_seen():
    metrics: dict = {}
    cache = TeacherCache.for_run(SimpleNamespace(features=[]), 6, metrics)
    assert cache is not None and "reused across epochs" in metrics["teacher_targets"]
    out = torch.arange(8, dtype=torch.float32).reshape(2, 4)
    idx = torch.tensor([4, 1])
    assert cache.get(idx, "cpu") is None
    cache.put(idx, out, metrics)
    assert torch.equal(cache.get(torch.tensor([1, 4]), "cpu"), out[[1, 0]])
    assert cache.get(torch.tensor([1, 2]), "cpu") is None  # sample 2 not seen yet


def test_feature_distillation_and_per_token_outputs_are_not_cached():
    metrics: dict = {}
    assert TeacherCache.for_run(SimpleNamespace(features=["x"]), 4, metrics) is None
    assert "hidden states" in metrics["teacher_targets"]
    cache = TeacherCache.for_run(SimpleNamespace(features=[]), 4, metrics)
    cache.put(torch.tensor([0, 1]), torch.zeros(2, 5, 3), metrics)  # (batch, tokens, hidden)
    assert cache.get(torch.tensor([0, 1]), "cpu") is None
    assert metrics["teacher_targets"].startswith("computed every step")
