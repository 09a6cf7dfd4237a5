"""Whole transformer blocks removed (passes/prune/blocks.py) on small hand-built torch models."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from optimize.errors import ConfigError  # noqa: E402
from passes.prune import blocks as B  # noqa: E402
from passes.prune.config import PruneConfig  # noqa: E402


class Attn(nn.Module):
    def __init__(self, d: int, idx: int) -> None:
        super().__init__()
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.num_heads = 2
        self.layer_idx = idx


class Block(nn.Module):
    def __init__(self, d_in: int, d_out: int, idx: int) -> None:
        super().__init__()
        self.attn = Attn(d_in, idx)
        self.ff = nn.Linear(d_in, d_out)

    def forward(self, x):
        return self.ff(x + self.attn.value(x))


class Encoder(nn.Module):
    def __init__(self, dims=(8, 8, 8, 8, 8), twin: bool = False) -> None:
        super().__init__()
        self.layers = nn.ModuleList(Block(a, b, i) for i, (a, b) in enumerate(zip(dims, dims[1:], strict=False)))
        if twin:
            self.other = nn.ModuleList(Block(8, 8, i) for i in range(len(self.layers)))
        self.config = SimpleNamespace(num_hidden_layers=len(self.layers), layer_types=list("abcd"[: len(self.layers)]))

    def forward(self, x):
        for b in self.layers:
            x = b(x)
        return x


def test_drop_renumbers_layer_indices_and_shrinks_the_config():
    enc = Encoder()
    where = B.block_list(enc)
    assert where is not None and where[1] == "layers" and len(where[2]) == 4
    old = list(enc.layers)
    B.drop(enc, where, (1, 2))
    assert list(enc.layers) == [old[0], old[3]]
    assert [b.attn.layer_idx for b in enc.layers] == [0, 1]
    assert enc.config.num_hidden_layers == 2 and enc.config.layer_types == ["a", "d"]
    assert enc(torch.randn(3, 8)).shape == (3, 8)


def test_two_lists_of_blocks_of_one_length_are_refused():
    with pytest.raises(ConfigError, match="2 lists of 4 transformer blocks"):
        B.block_list(Encoder(twin=True))


def test_blocks_that_change_the_shape_cannot_go():
    enc = Encoder(dims=(8, 16, 16, 16, 16))
    args = (torch.randn(2, 8),)
    shapes = B._shapes(enc, args)
    B.drop(enc, B.block_list(enc), (0,))
    with pytest.raises(ConfigError, match=r"keeping blocks \[1, 2, 3\] the model no longer runs"):
        B._check_runs(enc, args, shapes, [1, 2, 3])


@pytest.mark.parametrize("value, message", [(True, "block count"), ([True], "block count"), ([], "one at least"), ([1, 1], "distinct"),
                                            ([-1], "at least 0"), (-2, "at least 0")])
def test_drop_layers_values_that_are_refused(value, message):
    with pytest.raises(ValueError, match=message):
        PruneConfig(method="structured", drop_layers=value)
    with pytest.raises(ValueError, match="applies to method: structured"):
        PruneConfig(method="magnitude", drop_layers=1)
