"""The mean stand-in for a dropped attention sublayer (passes/prune/stand_in.py) on small torch models."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from passes.prune import stand_in as S  # noqa: E402
from passes.prune.config import PruneConfig  # noqa: E402


def test_attended_reads_every_mask_form_and_padded_query_rows_left_open():
    hidden = torch.zeros(2, 4, 3)
    keys = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    want = keys.float().unsqueeze(-1)
    boolean = keys[:, None, None, :].expand(2, 1, 4, 4).clone()
    boolean[1, 0, 2:] = True  # padded queries attend everything (as SDPA leaves them): keys still padded
    additive = torch.where(keys, 0.0, torch.finfo(torch.float32).min)[:, None, None, :]
    for mask in (boolean, additive, keys.long(), additive.expand(2, 1, 4, 4), boolean[:, 0], additive[:, 0]):
        assert torch.equal(S.attended(mask, hidden), want)
    assert torch.equal(S.attended(None, hidden), torch.ones(2, 4, 1))


def _stand_in(width: int = 6) -> S.MeanStandIn:
    torch.manual_seed(0)
    m = S.MeanStandIn(nn.LayerNorm(width), width, extra=1)
    nn.init.normal_(m.mix.weight)
    return m.eval()


def test_a_sentence_reads_the_same_padded_or_alone():
    m, x = _stand_in(), torch.randn(1, 5, 6)
    padded = torch.cat([x, torch.randn(1, 3, 6)], 1)  # three padding tokens of any value
    mask = torch.tensor([[True] * 5 + [False] * 3])[:, None, None, :]
    with torch.no_grad():
        alone, _ = m(x, None)
        both, none = m(padded, mask)
    assert none is None and torch.allclose(both[:, :5], alone, atol=1e-6)
    with torch.no_grad():  # the padding counted would move every token
        assert not torch.allclose(m(padded, None)[0][:, :5], alone, atol=1e-3)


class _Reference(nn.Module):
    """A sublayer whose pre-norm sum is exactly x + A·mean(x) + c: the fit must find A and c."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.a, self.c, self.norm = torch.randn(width, width) * 0.5, torch.randn(width), nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        w = mask.float().unsqueeze(-1)
        mean = (x * w).sum(1, keepdim=True) / w.sum(1, keepdim=True)
        return self.norm(x + mean @ self.a.T + self.c)


class _Student(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.inner(x, mask[:, None, None, :].bool())[0]


def test_the_fit_recovers_an_exact_mean_map_on_the_attended_tokens():
    torch.manual_seed(1)
    ref = _Reference(6)
    m = S.make(ref, extra=1)
    assert torch.equal(m.mix.weight, torch.zeros(6, 6))  # before the fit: no change to the tokens
    student = _Student(m)
    data = []
    for _ in range(4):
        x = torch.randn(8, 7, 6)
        mask = (torch.arange(7)[None] < torch.randint(2, 8, (8, 1))).long()
        data.append([x, mask])
    how = S.fit(student, m, ref, ref.norm, lambda: iter(data))
    assert how["r2"] > 0.999 and how["tokens"] == sum(int(d[1].sum()) for d in data)
    assert torch.allclose(m.mix.weight, ref.a, atol=1e-3) and torch.allclose(m.mix.bias, ref.c, atol=1e-3)
    x, mask = data[0]
    with torch.no_grad():
        keep = mask.bool()
        assert torch.allclose(student(x, mask)[keep], ref(x, mask)[keep], atol=1e-3)
    assert m.tap is None and student.training  # the fit leaves no hook behind, and the mode it found


def test_a_stand_in_without_attention_taken_out_is_refused():
    with pytest.raises(ValueError, match="attention_stand_in stands in for the attention sublayers drop_attention"):
        PruneConfig(method="structured", attention_stand_in="mean")
    assert PruneConfig(method="structured", drop_attention=[1], attention_stand_in="mean").attention_stand_in == "mean"
