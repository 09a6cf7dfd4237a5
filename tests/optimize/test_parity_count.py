"""Parity reads every data.eval sample the user gave, within an input-element budget; the report and
the quantize pass's choices read the same count (RunContext.parity_count)."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np

from optimize.context import RunContext
from optimize.probes import PROBE_ELEMENTS


class _Data:
    def __init__(self, n: int, shape: tuple[int, ...]) -> None:
        self.inputs = {"x": np.zeros((n, *shape), np.float32)}

    def __len__(self) -> int:
        return len(self.inputs["x"])


def _ctx(n: int | None, shape: tuple[int, ...], parity_samples: int = 64) -> RunContext:
    cfg = SimpleNamespace(measure=SimpleNamespace(parity_samples=parity_samples),
                          data=SimpleNamespace(eval=None if n is None else "eval.npz"))
    ctx = RunContext(config=cfg, work_dir=Path("."))
    ctx._data["eval"] = None if n is None else _Data(n, shape)
    return ctx


def test_all_of_a_small_eval_set_is_judged():
    assert _ctx(129, (76, 32, 1)).parity_count() == 129  # openwakeword's 129 speech windows, not the first 64


def test_no_eval_data_or_less_than_parity_samples_keeps_parity_samples():
    assert _ctx(None, (4,)).parity_count() == 64
    assert _ctx(20, (4,)).parity_count() == 64  # take() then gives the 20 there are


def test_large_samples_stop_at_the_element_budget_but_never_under_parity_samples():
    per = 3 * 736 * 1088
    assert _ctx(100, (3, 736, 1088), parity_samples=8).parity_count() == PROBE_ELEMENTS // per  # 27
    assert _ctx(100, (3, 736, 1088), parity_samples=40).parity_count() == 40
