"""Queries and keys at a lower rank per head (passes/prune/lowrank_qk.py) on a tiny BERT built in code."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from optimize.errors import ConfigError  # noqa: E402
from passes.prune import lowrank_qk as L  # noqa: E402
from passes.prune.config import PruneConfig  # noqa: E402


def tiny_bert(layers: int = 2):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=40, hidden_size=32, num_attention_heads=4, intermediate_size=64,
                                  num_hidden_layers=layers, max_position_embeddings=32)
    return transformers.BertModel(cfg).eval()


def inputs(n: int = 3, width: int = 10):
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 40, (n, width), generator=gen)
    mask = torch.ones(n, width, dtype=torch.long)
    mask[0, 6:] = 0  # one padded sentence
    return ids, mask


def tokens(n: int = 400, d: int = 32):
    """Tokens with a few large directions, like a LayerNorm's output in a trained transformer."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    x[:, :3] *= 12.0
    return x


@torch.no_grad()
def scores(m, x):
    """Each head's query-key scores over the token pairs of `x`, from `m`'s projections."""
    q, k = m.query(x.float()).double(), m.key(x.float()).double()
    size = q.shape[-1] // m.num_attention_heads
    return torch.stack([q[:, h * size:(h + 1) * size] @ k[:, h * size:(h + 1) * size].T for h in range(m.num_attention_heads)])


def moment(x):
    xa = torch.cat([x, torch.ones(len(x), 1, dtype=torch.float64)], 1)
    return xa.T @ xa / len(x)


def test_full_rank_factors_give_the_same_scores():
    m = tiny_bert().encoder.layer[0].attention.self
    x = tokens()
    before = scores(m, x)
    L.install(m, 8, *L.factors(m, moment(x), 8))
    assert m.query.out_features == m.key.out_features == 32 and m.value.out_features == 32
    assert torch.allclose(scores(m, x), before, atol=1e-4 * float(before.abs().max()))


def test_data_weighted_factors_fit_the_tokens_better_than_a_plain_svd():
    m = tiny_bert().encoder.layer[0].attention.self
    x = tokens()
    exact = scores(m, x)
    plain = copy.deepcopy(m)  # the plain SVD is the data-weighted one with uncorrelated unit tokens
    L.install(plain, 2, *L.factors(plain, torch.eye(33, dtype=torch.float64), 2))
    L.install(m, 2, *L.factors(m, moment(x), 2))
    assert m.query.out_features == 8 and m.key.out_features == 8 and m.value.out_features == 32
    err_weighted = float(((scores(m, x) - exact) ** 2).mean())
    err_plain = float(((scores(plain, x) - exact) ** 2).mean())
    assert err_weighted < 0.5 * err_plain


def test_a_bert_runs_with_low_rank_attention_and_keeps_its_softmax_scale():
    model = tiny_bert()
    ids, mask = inputs()
    with torch.no_grad():
        before = model(ids, mask).last_hidden_state
    found = L.targets(model)
    assert [n for n, _ in found] == ["encoder.layer.0.attention.self", "encoder.layer.1.attention.self"]
    L.check_forward(model, found, (ids, mask))
    assert type(found[0][1]) is transformers.models.bert.modeling_bert.BertSelfAttention  # put back after the check
    assert not hasattr(found[0][1], "qk_size")
    for _, m in found:  # full rank with the data-free moment: the same model
        L.install(m, 8, *L.factors(m, torch.eye(33, dtype=torch.float64), 8))
    with torch.no_grad():
        assert torch.allclose(model(ids, mask).last_hidden_state, before, atol=1e-4)
    moments = L.input_moments(model, found, _Data(ids, mask), ["input_ids", "attention_mask"])
    assert moments[0].shape == (33, 33) and float(moments[0][-1, -1]) == pytest.approx(1.0)
    for (_, m), mom in zip(found, moments, strict=True):
        L.install(m, 3, *L.factors(m, mom, 3))
    copied = copy.deepcopy(model)
    with torch.no_grad():
        after = copied(ids, mask).last_hidden_state
    assert isinstance(copied.encoder.layer[1].attention.self, L.LowRankQK) and copied.encoder.layer[1].attention.self.query.out_features == 12
    assert after.shape == before.shape and not torch.allclose(after, before)
    assert float(torch.nn.functional.cosine_similarity(after.flatten(1), before.flatten(1)).min()) > 0.5


def test_moments_count_only_the_real_tokens():
    model = tiny_bert()
    ids, mask = inputs()
    found = L.targets(model)
    padded = L.input_moments(model, found, _Data(ids, mask), ["input_ids", "attention_mask"])
    trimmed = L.input_moments(model, found, _Data(ids[:1, :6], mask[:1, :6]), ["input_ids", "attention_mask"])
    alone = L.input_moments(model, found, _Data(ids[:1], mask[:1]), ["input_ids", "attention_mask"])
    assert torch.allclose(alone[0], trimmed[0], atol=1e-6)  # the padding positions of sentence 0 left out
    assert not torch.allclose(padded[0], trimmed[0])


class OddSelfAttention(transformers.models.bert.modeling_bert.BertSelfAttention):
    """Attention that computes something else (a stand-in for relative positions)."""

    def forward(self, hidden_states, *args, **kwargs):
        out, weights = super().forward(hidden_states, *args, **kwargs)
        return out * 2.0, weights


def test_attention_computed_otherwise_is_refused():
    model = tiny_bert()
    for layer in model.encoder.layer:
        layer.attention.self.__class__ = OddSelfAttention
    with pytest.raises(ConfigError, match="computes attention otherwise than BERT-family self-attention"):
        L.check_forward(model, L.targets(model), inputs())
    assert all(type(layer.attention.self) is OddSelfAttention for layer in model.encoder.layer)


def test_modules_without_bert_attributes_are_refused():
    class SelfAttn(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.query, self.key, self.value = (torch.nn.Linear(8, 8) for _ in range(3))
            self.num_heads = 2

    with pytest.raises(ConfigError, match="qk_rank: attention 0: SelfAttn lacks attention_head_size"):
        L.targets(torch.nn.Sequential(SelfAttn()))
    with pytest.raises(ConfigError, match="qk_rank needs a transformer"):
        L.targets(torch.nn.Sequential(torch.nn.Linear(4, 4)))


def test_qk_rank_settings():
    assert PruneConfig(method="structured", qk_rank=16).qk_rank == 16
    with pytest.raises(ValueError, match="qk_rank applies to method: structured"):
        PruneConfig(method="magnitude", qk_rank=16)
    with pytest.raises(ValueError):
        PruneConfig(method="structured", qk_rank=-1)


class _Data:
    """The slice of optimize.data.Dataset that `input_moments` reads."""

    def __init__(self, ids, mask):
        self.inputs = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}

    def __len__(self):
        return len(self.inputs["input_ids"])
