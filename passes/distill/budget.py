"""`budget_minutes`: train at most about this long, by training fewer epochs rather than by stopping
part-way through the schedule (a cosine schedule cut short leaves the learning rate high and the
student mid-step). The pace is measured once a fifth of the first epoch has run, and again after
every epoch: the first epoch pays for warm-up and, without text_variants, for the teacher's forward
passes that later epochs read from the cache, so after two epochs the pace is that of the epochs
after the first. The learning-rate schedule is re-planned over the epochs that fit each time (fewer,
or more again up to `epochs` while a whole epoch of the schedule is left: one ending would restart
the learning rate high), so a machine twice as slow trains about half the epochs in the same time
instead of running over a CI job's limit. The time left after the last whole epoch that fits goes
to the first steps of one more (its batches are in random order): on a slow CPU where two epochs fit
in 15 minutes with 3 minutes to spare, those minutes train instead of idling. The epoch in progress
is never cut. The variant rounds of `text_variants` are shared out over the planned `epochs`: those
of epochs past a cut go untrained.
"""

from __future__ import annotations

import math

FIRST_LOOK = 0.2  # of the first epoch's steps: when the pace is first measured


def pace_s(done: float, spent_s: float, first_epoch_s: float | None) -> float:
    """Seconds an epoch takes: after the first epoch and one more, the mean of those after it."""
    if done >= 2 and first_epoch_s is not None:
        return (spent_s - first_epoch_s) / (done - 1)
    return spent_s / done


def epochs_that_fit(budget_s: float, spent_s: float, pace: float, done: float, cap: float) -> float:
    """How many epochs to train in all, the last possibly a part of one: as many as end within
    `budget_s` at `pace` seconds each, `done` (a fraction while an epoch runs) having taken `spent_s`;
    at least the epoch in progress (or the last finished), at most `cap`."""
    least = max(1, math.ceil(done - 1e-9))
    if pace <= 0:
        return max(least, cap)
    return max(least, min(cap, (budget_s - spent_s) / pace + done))


def steps_planned(epochs: float, epoch_steps: list[int]) -> int:
    """Steps in `epochs` (whole epochs, then the first steps of a part of one), `epoch_steps` the
    steps of each epoch from the first."""
    whole = int(epochs + 1e-9)
    part = 0
    if whole < len(epoch_steps):
        part = int((epochs - whole) * epoch_steps[whole] + 1e-9)
    return sum(epoch_steps[:whole]) + part


def shown(epochs: float) -> str:
    return f"{epochs:.2f}".rstrip("0").rstrip(".")


def note(budget_minutes: float, planned: int, fit: float, pace: float) -> str:
    return (
        f"distill: budget_minutes {budget_minutes:g} fit {shown(fit)} of the {planned} epochs at {pace:.0f} s "
        f"an epoch on this machine; the learning-rate schedule was re-planned to end with them"
        + ("" if fit < planned else " (it had been planned shorter after the first epoch's slower pace)")
    )
