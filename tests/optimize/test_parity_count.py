"""The final parity reads every data.eval sample the user gave, within an input-element budget."""

from types import SimpleNamespace

import numpy as np

from optimize.measure import _parity_count
from optimize.probes import PROBE_ELEMENTS


class _Data:
    def __init__(self, n: int, shape: tuple[int, ...]) -> None:
        self.inputs = {"x": np.zeros((n, *shape), np.float32)}

    def __len__(self) -> int:
        return len(self.inputs["x"])


def _ctx(n: int | None, shape: tuple[int, ...], parity_samples: int = 64):
    data = None if n is None else _Data(n, shape)
    cfg = SimpleNamespace(measure=SimpleNamespace(parity_samples=parity_samples),
                          data=SimpleNamespace(eval=None if n is None else "eval.npz"))
    return SimpleNamespace(config=cfg, data=lambda role: data)


def test_all_of_a_small_eval_set_is_judged():
    assert _parity_count(_ctx(129, (76, 32, 1))) == 129  # openwakeword's 129 speech windows, not the first 64


def test_no_eval_data_or_less_than_parity_samples_keeps_parity_samples():
    assert _parity_count(_ctx(None, (4,))) == 64
    assert _parity_count(_ctx(20, (4,))) == 64  # take() then gives the 20 there are


def test_large_samples_stop_at_the_element_budget_but_never_under_parity_samples():
    per = 3 * 736 * 1088
    assert _parity_count(_ctx(100, (3, 736, 1088), parity_samples=8)) == PROBE_ELEMENTS // per  # 27
    assert _parity_count(_ctx(100, (3, 736, 1088), parity_samples=40)) == 40
