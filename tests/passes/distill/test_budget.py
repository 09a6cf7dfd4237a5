"""distill `budget_minutes`: the epochs are planned to what fits at the pace measured (a fifth into
the first epoch, then after every epoch), and the learning-rate schedule is re-planned over them."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import StopAfterEpochs, distill_ctx, torch_handle

from optimize.config import load_config_text
from optimize.handle import TensorSpec
from passes.distill import DistillPass, training
from passes.distill.budget import epochs_that_fit, pace_s, steps_planned

SPEC = [TensorSpec("x", ("batch", 6))]
REAL_LR_AT, REAL_UPDATE = training.lr_at, training._update  # before any test wraps them


def test_epochs_that_fit_follow_the_pace() -> None:
    assert epochs_that_fit(100.0, spent_s=30.0, pace=30.0, done=1, cap=10) == pytest.approx(1 + 70 / 30)  # a part of the last
    assert epochs_that_fit(100.0, spent_s=20.0, pace=10.0, done=2, cap=6) == 6  # all fit
    assert epochs_that_fit(10.0, spent_s=50.0, pace=25.0, done=2, cap=6) == 2  # never fewer than done
    assert epochs_that_fit(10.0, spent_s=9.0, pace=45.0, done=0.2, cap=6) == 1  # the epoch in progress ends
    assert steps_planned(3.5, [4, 4, 4, 6]) == 15  # three epochs of 4 steps, half the fourth's 6
    assert steps_planned(2.2, [4, 4, 4]) == 8  # 0.8 of a step: none
    assert steps_planned(2.0, [4, 4]) == 8
    assert pace_s(1, 40.0, 40.0) == 40.0
    assert pace_s(3, 60.0, 40.0) == 10.0  # after the first epoch: the epochs after it


def run(tmp_path: Path, monkeypatch, budget: str, first_step_s: float = 6.0, step_s: float = 3.0, **ctx_fields):
    """A distillation of 6 epochs of 4 steps, on a clock that moves only with the steps."""
    now = [0.0]
    monkeypatch.setattr(training, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    schedule: list[tuple[int, int]] = []

    def lr_at(cfg, step, total):
        schedule.append((step, total))
        return REAL_LR_AT(cfg, step, total)

    def update(loop, loss, lr):
        REAL_UPDATE(loop, loss, lr)
        now[0] += first_step_s if loop.state["epoch"] == 0 else step_s

    monkeypatch.setattr(training, "lr_at", lr_at)
    monkeypatch.setattr(training, "_update", update)
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 5)).eval()
    student = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 5))
    body = f"passes: [{{type: distill, epochs: 6, random_samples: 64, batch_size: 16, amp: false{budget}}}]\n"
    ctx = distill_ctx(tmp_path, torch_handle(teacher, SPEC), body, base_dir=tmp_path, **ctx_fields)
    return DistillPass(ctx.config.passes[0]).run(torch_handle(student, SPEC), ctx), schedule


def test_a_budget_cuts_the_epochs_early_and_lets_them_grow_back_at_the_later_pace(tmp_path: Path, monkeypatch) -> None:
    # epoch 1 at 24 s (a fifth in: 3 epochs fit in 75 s), later epochs at 12 s: 5 and the first
    # step of a sixth fit (75 s, the whole budget)
    result, schedule = run(tmp_path, monkeypatch, ", budget_minutes: 1.25")
    m = result.metrics
    assert m["epochs"] == 6 and m["epochs_run"] == 6 and m["epochs_in_budget"] == 5.25 and m["steps"] == 21
    totals = [total for _, total in schedule]
    assert totals == [24] + [12] * 7 + [21] * 13  # planned for 6, re-planned for 3, then for 5.25
    assert any("fit 5.25 of the 6 epochs at 12 s an epoch" in n for n in result.notes)


def test_a_finished_schedule_is_not_restarted(tmp_path: Path, monkeypatch) -> None:
    # a fifth in, 2.5 epochs fit at epoch 1's pace; after two the faster pace would fit 4, but less
    # than an epoch of the schedule is left, the learning rate nearly down: training ends with it
    result, schedule = run(tmp_path, monkeypatch, ", budget_minutes: 1")
    m = result.metrics
    assert m["epochs_run"] == 3 and m["epochs_in_budget"] == 2.5 and [t for _, t in schedule] == [24] + [10] * 9


def test_when_one_epoch_fits_its_schedule_ends_with_it(tmp_path: Path, monkeypatch) -> None:
    result, schedule = run(tmp_path, monkeypatch, ", budget_minutes: 0.3", first_step_s=4.0)  # 18 s
    assert result.metrics["epochs_run"] == 1 and [t for _, t in schedule] == [24, 4, 4, 4]


@pytest.mark.parametrize("budget", ["", ", budget_minutes: 60"])
def test_every_epoch_runs_without_a_budget_or_within_it(tmp_path: Path, monkeypatch, budget: str) -> None:
    result, schedule = run(tmp_path, monkeypatch, budget)
    assert result.metrics["epochs_run"] == 6 and {total for _, total in schedule} == {24}
    assert result.metrics["epochs_in_budget"] == (6 if budget else None)
    assert not any("budget_minutes" in n for n in result.notes)


def test_a_resumed_run_keeps_the_budgets_plan_and_the_time_already_spent(tmp_path: Path, monkeypatch) -> None:
    budget = ", budget_minutes: 1.25, checkpoint_every: 6, checkpoint_dir: ck, lr: 0.05"
    full, full_schedule = run(tmp_path / "a", monkeypatch, budget)
    # interrupted after the second epoch; its last checkpoint is step 6, in the middle of that epoch
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", monkeypatch, budget, progress=StopAfterEpochs(2))
    resumed, schedule = run(tmp_path / "b", monkeypatch, budget, resume=True)
    assert resumed.metrics["resumed_from"].endswith("step-00000006.safetensors")
    assert resumed.metrics["epochs_run"] == full.metrics["epochs_run"] == 6
    assert schedule == full_schedule[6:]  # the same re-planned schedule from step 6 on
    a, b = full.model.module.state_dict(), resumed.model.module.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_resumed_without_its_budget_trains_every_epoch(tmp_path: Path, monkeypatch) -> None:
    budget = ", budget_minutes: 1.25, checkpoint_every: 6, checkpoint_dir: ck"
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, monkeypatch, budget, progress=StopAfterEpochs(2))  # planned 3 epochs by then
    resumed, schedule = run(tmp_path, monkeypatch, ", checkpoint_every: 6, checkpoint_dir: ck", resume=True)
    assert resumed.metrics["epochs_run"] == 6 and resumed.metrics["epochs_in_budget"] is None
    assert {t for _, t in schedule} == {24}


def test_an_infinite_budget_is_refused() -> None:
    from optimize.errors import ConfigError

    with pytest.raises(ConfigError, match="budget_minutes"):
        load_config_text("schema_version: 1\npasses: [{type: distill, budget_minutes: .inf}]\n")


def test_no_budget_note_when_early_stopping_ended_the_run(tmp_path: Path, monkeypatch) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "eval.npz", x=rng.uniform(-1, 1, (32, 6)).astype(np.float32))
    budget = (f", budget_minutes: 1, early_stopping_patience: 1, min_delta: 100.0}}]\n"
              f"data: {{eval: {{source: {str(tmp_path / 'eval.npz')!r}}}}}\n#")
    result, _ = run(tmp_path, monkeypatch, budget)
    assert result.metrics["stopped_early"] is True and result.metrics["epochs_run"] == 2
    assert not any("budget_minutes" in n for n in result.notes)
