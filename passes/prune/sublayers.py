"""Attention sublayers taken out (`drop_attention`), the blocks' FFNs kept.

In a BERT-style (post-LayerNorm) encoder each block's attention sublayer adds its output to the
residual stream and normalizes inside the sublayer (transformers' `BertAttention`: self-attention,
output projection, residual add, LayerNorm), so replacing the whole sublayer by the identity
takes it out and leaves the stream running into the block's FFN. It costs less to remove than a
whole block: on the real all-MiniLM-L6-v2, block 2's attention alone out left held-out embeddings
at cosine 0.946 / 0.865 (mean / min, docstrings) before training, the whole block 0.929 / 0.806.
Trained at the same int8 speed, attention of block 2 out with a third of every FFN removed against
block 2 out with a fifth of the other FFNs (two seeds each): the docstring min +0.02, the worst tenth
of both kinds of text a little better, the everyday mean 0.001 lower (docs/distill.md).

Only sublayers of that shape are taken out: the block's one child holding the q/k/v attention and
a LayerNorm. Pre-LayerNorm blocks (the residual added by the block around a sublayer that returns
a change) or DistilBERT (the LayerNorm outside the attention module) are refused: there the
identity is not the sublayer's removal.

Written by hand: no pruning library removes sublayers (Torch-Pruning removes channels; transformers'
`prune_heads` removes heads and cannot remove all of a layer's).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from passes.prune.cut import Cut


class NoAttention(nn.Module):
    """An attention sublayer taken out: its output is its input, in the sublayer's own output form
    (`extra` Nones after the hidden states when the sublayer returned a tuple; -1: a bare tensor)."""

    def __init__(self, extra: int) -> None:
        super().__init__()
        self.extra = extra

    def forward(self, hidden_states: Any, *args: Any, **kwargs: Any) -> Any:
        return hidden_states if self.extra < 0 else (hidden_states, *([None] * self.extra))


def sublayer_names(blocks: nn.ModuleList) -> list[str] | None:
    """Per block, the name of its one child that is a whole post-LN attention sublayer (it holds the
    q/k/v attention and a LayerNorm); None when any block has none or more than one."""
    from passes.prune.transformer import find_attention

    names = []
    for block in blocks:
        hits = [n for n, c in block.named_children()
                if find_attention(c) and any(isinstance(m, nn.LayerNorm) for m in c.modules())]
        if len(hits) != 1:
            return None
        names.append(hits[0])
    return names


def _output_forms(module: nn.Module, subs: list[nn.Module], args: Any) -> list[int | str]:
    """Each sublayer's output form for NoAttention (tuple length - 1, or -1 for a bare tensor), seen
    on one forward; why not, for a sublayer that did not run or whose output is not its last LayerNorm's
    (a pre-LN sublayer with a LayerNorm inside, e.g. on queries and keys, returns a change to be
    added, so the identity would not remove it)."""
    import torch

    seen: dict[int, Any] = {}
    normed: dict[int, Any] = {}
    hooks = []
    for i, m in enumerate(subs):
        last_norm = [n for n in m.modules() if isinstance(n, nn.LayerNorm)][-1]
        hooks.append(last_norm.register_forward_hook(lambda _m, _a, out, i=i: normed.__setitem__(i, out)))
        hooks.append(m.register_forward_hook(lambda _m, _a, out, i=i: seen.__setitem__(i, out)))
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            module(*args)
    finally:
        module.train(was_training)
        for h in hooks:
            h.remove()
    forms: list[int | str] = []
    for i in range(len(subs)):
        out = seen.get(i)
        first = out[0] if isinstance(out, tuple) and out else out
        if out is None:
            forms.append("did not run on the example inputs")
        elif i not in normed or first is not normed[i]:
            forms.append("does not return its LayerNorm's output (a pre-LN layout: removing it is not the identity)")
        else:
            forms.append(len(out) - 1 if isinstance(out, tuple) else -1)
    return forms


def attention_cut(module: nn.Module, blocks: nn.ModuleList, args: Any) -> Cut:
    """The `Cut` that takes attention sublayers out of `blocks`; ConfigError for blocks whose attention
    is not a whole post-LN sublayer, or without example inputs to learn the sublayers' output form."""
    from optimize.errors import ConfigError

    names = sublayer_names(blocks)
    if names is None:
        raise ConfigError("drop_attention applies to BERT-style encoders whose blocks hold one attention sublayer with its "
                          "own residual add and LayerNorm (transformers' BERT, RoBERTa, XLM-R, ELECTRA, MiniLM encoders); "
                          "not found in this model")
    if args is None:
        raise ConfigError("drop_attention needs the model's input shapes (model.inputs) to run it once")
    subs = [getattr(b, n) for b, n in zip(blocks, names, strict=True)]
    forms = _output_forms(module, subs, args)
    odd = [i for i, f in enumerate(forms) if isinstance(f, str)]
    if odd:
        raise ConfigError(f"drop_attention: the attention sublayer of block {odd[0]} {forms[odd[0]]}")

    def put(gone: tuple[int, ...]) -> None:
        for i in gone:
            setattr(blocks[i], names[i], NoAttention(int(forms[i])))

    def remove(gone: tuple[int, ...]) -> Callable[[], None]:
        put(gone)
        return lambda: [setattr(blocks[i], names[i], subs[i]) for i in gone]

    return Cut("drop_attention", "attention sublayers", "attention_sublayers", len(blocks), remove, put)
