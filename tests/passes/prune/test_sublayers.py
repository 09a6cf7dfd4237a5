"""Attention sublayers taken out (passes/prune/sublayers.py) on small hand-built torch models."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from optimize.errors import ConfigError  # noqa: E402
from passes.prune import sublayers as S  # noqa: E402
from passes.prune.blocks import block_list  # noqa: E402
from passes.prune.config import PruneConfig  # noqa: E402


class SelfAttn(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.num_heads = 2


class PostLN(nn.Module):
    """BERT's attention sublayer: attention, residual add and LayerNorm inside; a tuple out."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.self, self.norm = SelfAttn(d), nn.LayerNorm(d)

    def forward(self, x, mask=None):
        return self.norm(x + self.self.value(x)), "weights"


class Block(nn.Module):
    def __init__(self, d: int, pre_ln: bool = False) -> None:
        super().__init__()
        self.pre_ln = pre_ln
        if pre_ln:  # the LayerNorm outside the attention child: the identity would not remove it
            self.ln, self.attention = nn.LayerNorm(d), SelfAttn(d)
        else:
            self.attention = PostLN(d)
        self.ffn = nn.Linear(d, d)

    def forward(self, x, mask=None):
        if self.pre_ln:
            x = x + self.attention.value(self.ln(x))
        else:
            x, _ = self.attention(x, mask)
        return x + self.ffn(x)


class Encoder(nn.Module):
    def __init__(self, n: int = 3, pre_ln: bool = False) -> None:
        super().__init__()
        self.layer = nn.ModuleList(Block(8, pre_ln) for _ in range(n))

    def forward(self, x):
        for b in self.layer:
            x = b(x, None)
        return x


def test_the_cut_replaces_the_sublayer_by_the_identity_and_puts_it_back():
    enc, x = Encoder(), torch.randn(2, 5, 8)
    blocks = block_list(enc)[2]
    assert S.sublayer_names(blocks) == ["attention"] * 3
    originals = [b.attention for b in blocks]
    cut = S.attention_cut(enc, blocks, (x,))
    assert (cut.what, cut.count, cut.unit) == ("drop_attention", 3, "attention_sublayers")
    undo = cut.remove((0, 2))
    assert isinstance(blocks[0].attention, S.NoAttention) and blocks[1].attention is originals[1]
    with torch.no_grad():  # block 0 without attention: the FFN on its input, nothing else
        assert torch.equal(blocks[0](x), x + blocks[0].ffn(x))
        assert blocks[0].attention(x, None) == (x, None)  # the sublayer's own tuple form
    undo()
    assert [b.attention for b in blocks] == originals
    cut.commit((1,))
    assert isinstance(blocks[1].attention, S.NoAttention) and blocks[0].attention is originals[0]
    assert enc(x).shape == x.shape


def test_a_sublayer_returning_a_bare_tensor_gets_one_back():
    class Bare(PostLN):
        def forward(self, x, mask=None):
            return self.norm(x + self.self.value(x))

    class BareBlock(Block):
        def forward(self, x, mask=None):
            return self.attention(x, mask)

    enc = Encoder()
    enc.layer = nn.ModuleList(BareBlock(8) for _ in range(2))
    for b in enc.layer:
        b.attention = Bare(8)
    x = torch.randn(1, 3, 8)
    S.attention_cut(enc, enc.layer, (x,)).commit((0,))
    assert torch.equal(enc.layer[0](x), x)


def test_pre_layernorm_blocks_and_missing_inputs_are_refused():
    enc = Encoder(pre_ln=True)
    with pytest.raises(ConfigError, match="drop_attention applies to BERT-style encoders"):
        S.attention_cut(enc, enc.layer, (torch.randn(1, 2, 8),))
    enc = Encoder()
    with pytest.raises(ConfigError, match="needs the model's input shapes"):
        S.attention_cut(enc, enc.layer, None)


@pytest.mark.parametrize("value, message", [(True, "block count"), ([], "one at least"), ([2, 2], "distinct"), (-1, "at least 0")])
def test_drop_attention_values_that_are_refused(value, message):
    with pytest.raises(ValueError, match=message):
        PruneConfig(method="structured", drop_attention=value)
    with pytest.raises(ValueError, match="drop_attention applies to method: structured"):
        PruneConfig(method="magnitude", drop_attention=1)


def test_a_pre_layernorm_sublayer_with_a_layernorm_inside_is_refused():
    class QKNorm(SelfAttn):  # pre-LN attention normalizing its queries: a LayerNorm inside, a change out
        def __init__(self, d: int) -> None:
            super().__init__(d)
            self.q_norm = nn.LayerNorm(d)

        def forward(self, x, mask=None):
            return self.value(x) + self.q_norm(self.query(x)), None

    class PreBlock(Block):
        def forward(self, x, mask=None):
            return x + self.attention(x, mask)[0]

    enc = Encoder()
    enc.layer = nn.ModuleList(PreBlock(8) for _ in range(2))
    for b in enc.layer:
        b.attention = QKNorm(8)
    assert S.sublayer_names(enc.layer) == ["attention", "attention"]  # looks like BERT's by its modules
    with pytest.raises(ConfigError, match="does not return its LayerNorm's output"):
        S.attention_cut(enc, enc.layer, (torch.randn(1, 3, 8),))


def test_a_sublayer_that_does_not_run_is_refused():
    class Early(Encoder):
        def forward(self, x):
            return self.layer[0](x, None)

    enc = Early()
    with pytest.raises(ConfigError, match="block 1 did not run"):
        S.attention_cut(enc, enc.layer, (torch.randn(1, 3, 8),))


def test_every_attention_sublayer_out_is_refused_and_the_report_names_both_cuts():
    from types import SimpleNamespace

    from optimize.prune_report import prune_markdown
    from passes.prune.blocks import _which

    enc = Encoder()
    cut = S.attention_cut(enc, enc.layer, (torch.randn(1, 3, 8),))
    with pytest.raises(ConfigError, match=r"the model has 3 attention sublayers \(after drop_layers\).*one must stay"):
        _which(3, cut, "prune", enc, ["x"], SimpleNamespace(), 8, True)
    assert _which([0, 2], cut, "prune", enc, ["x"], SimpleNamespace(), 8) == ((0, 2), {"selection": "given"})
    quality = {"mean_cosine": 0.9, "min_cosine": 0.8, "on": "data.eval"}
    md = "\n".join(prune_markdown("prune", {
        "compressed_bytes": {}, "drop_layers": {"removed": [1], "blocks_before": 4, "selection": "given", "quality_after_drop": quality},
        "drop_attention": {"removed": [2], "removed_original": [3], "attention_sublayers_before": 3, "selection": "given",
                           "quality_after_drop": quality}}))
    assert "blocks removed [1] of 4 (given)" in md
    assert "attention sublayers removed [2] of 3 (given; blocks [3] of the input model)" in md
