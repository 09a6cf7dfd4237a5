"""Fisher importance for structured pruning: how far removing a channel or head moves the model's
outputs on the user's data, to first order.

Each prunable unit gets a mask m (all ones, so the model is unchanged): one per attention head (on
the value projection's output, which scales the head's context exactly as a mask on the context
would) and one per input channel of every other Linear layer (for an FFN, the input of its second
layer: the FFN's neurons). The score of a unit is Σ (∂L/∂m)² over batches of the data, with

- L = Σ_i v_i · y_i, y_i the output of sample i (L2-normalized for `task: embedding`, flattened)
  and v_i a fresh standard-normal vector each batch: E[(∂L/∂m)²] = Σ_i ‖∂y_i/∂m‖², the squared
  first-order change of every sample's output when the unit goes, from one backward per batch;
- classification: L = Σ_i ε_i · CE(y_i, c_i), c_i drawn from the model's own softmax and ε_i a
  random sign, whose squared gradient estimates the Fisher information Σ_i (∂ log p/∂m)²
  (the expected loss increase of removing the unit, as in Kwon et al. 2022, "A Fast Post-Training
  Pruning Framework for Transformers") without labels.

Weight magnitude ranks units by their weights alone; on a pretrained sentence encoder pruned by a
quarter of its heads and half its FFN neurons these scores kept the embeddings closer before any
training (docs/distill.md has the numbers). Torch-Pruning ranks groups through `FisherImportance`,
which reads the scores computed here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

BATCH = 16


class _Masks:
    """Ones-valued mask tensors applied by hooks: per head on each value projection's output,
    per input channel on every other Linear layer."""

    def __init__(self, module: nn.Module, attention: list[Any]) -> None:
        self.handles: list[Any] = []
        self.heads: dict[nn.Module, torch.Tensor] = {}
        self.inputs: dict[nn.Module, torch.Tensor] = {}
        qkv = {id(m) for a in attention for m in (a.q, a.k, a.v)}
        for a in attention:
            heads = a.v.out_features // a.head_dim
            mask = torch.ones(heads, requires_grad=True, device=a.v.weight.device)
            self.heads[a.v] = mask
            self.handles.append(a.v.register_forward_hook(_head_hook(mask, a.head_dim)))
        for m in module.modules():
            if isinstance(m, nn.Linear) and id(m) not in qkv:
                mask = torch.ones(m.in_features, requires_grad=True, device=m.weight.device)
                self.inputs[m] = mask
                self.handles.append(m.register_forward_pre_hook(_input_hook(mask)))

    def tensors(self) -> list[torch.Tensor]:
        return [*self.heads.values(), *self.inputs.values()]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _head_hook(mask: torch.Tensor, head_dim: int) -> Any:
    def hook(_m: Any, _args: Any, out: torch.Tensor) -> torch.Tensor:
        return out * mask.repeat_interleave(head_dim)

    return hook


def _input_hook(mask: torch.Tensor) -> Any:
    def hook(_m: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (args[0] * mask, *args[1:])

    return hook


def _objective(out: torch.Tensor, task: str, gen: torch.Generator) -> torch.Tensor:
    """The random-projection (or random-sign, sampled-label) objective of one batch."""
    out = out.float()
    if task == "classification" and out.dim() >= 2:
        logits = out.reshape(-1, out.shape[-1])
        with torch.no_grad():
            labels = torch.multinomial(torch.softmax(logits, -1).cpu(), 1, generator=gen).squeeze(1).to(out.device)
            signs = (torch.randint(0, 2, (len(logits),), generator=gen) * 2 - 1).to(out.device, out.dtype)
        return (F.cross_entropy(logits, labels, reduction="none") * signs).sum()
    flat = out.reshape(len(out), -1)
    if task == "embedding":
        flat = F.normalize(flat, dim=-1)
    v = torch.randn(flat.shape, generator=gen).to(flat.device)
    return (flat * v).sum()


def text_batches(ds: Any, keys: list[str], dev: Any) -> Any:
    """Batches of the dataset as tensors, text cut to the batch's longest line (an attention_mask
    input's trailing all-zero columns dropped from every 2-D integer input)."""
    arrays = [ds.inputs[k] for k in keys]
    mask_at = keys.index("attention_mask") if "attention_mask" in keys and arrays[keys.index("attention_mask")].ndim == 2 else None
    for start in range(0, len(ds), BATCH):
        xs = [np.ascontiguousarray(a[start : start + BATCH]) for a in arrays]
        if mask_at is not None:
            width = max(1, int(np.flatnonzero(xs[mask_at].any(axis=0)).max(initial=0)) + 1)
            xs = [x[:, :width] if x.ndim == 2 and x.shape == xs[mask_at].shape else x for x in xs]
        yield [torch.from_numpy(x).to(dev) for x in xs]


def fit_data(cfg: Any, name: str, model: Any, ctx: Any, why: str) -> tuple[Any, list[str]]:
    """importance_samples of data.calibration (or data.train) and the input names to feed, in the
    model's order; PassError (`why`: what fits on it) when there is none."""
    from optimize.errors import PassError

    ds = ctx.data("calibration")
    if ds is None:
        raise PassError(name, f"{why} on data: declare data.calibration or data.train")
    ds = ds.take(cfg.importance_samples)
    names = [s.name for s in model.inputs]
    return ds, names if names and all(k in ds.inputs for k in names) else list(ds.inputs)


def fisher_scores(module: nn.Module, ds: Any, keys: list[str], attention: list[Any], task: str, seed: int = 0) -> dict[str, Any]:
    """{'heads': {v_layer: per-head score}, 'inputs': {linear: per-input-channel score}} over `ds`."""
    from passes.prune.torch_common import tensor_leaves

    dev = next((p.device for p in module.parameters()), torch.device("cpu"))
    gen = torch.Generator().manual_seed(seed)
    was_training = module.training
    module.eval()  # dropout off: the importance of the model as it will run
    masks = _Masks(module, attention)
    tensors = masks.tensors()
    sums = [torch.zeros_like(t) for t in tensors]
    try:
        for xs in text_batches(ds, keys, dev):
            out = tensor_leaves(module(*xs))[0]
            grads = torch.autograd.grad(_objective(out, task, gen), tensors, allow_unused=True)
            for s, g in zip(sums, grads, strict=True):
                if g is not None:
                    s += g.detach() ** 2
    finally:
        masks.remove()
        module.train(was_training)
    n_heads = len(masks.heads)
    layers = list(masks.heads) + list(masks.inputs)
    return {
        "heads": dict(zip(layers[:n_heads], sums[:n_heads], strict=True)),
        "inputs": dict(zip(layers[n_heads:], sums[n_heads:], strict=True)),
    }


def _importance_base() -> Any:
    import torch_pruning as tp

    return tp.importance.Importance


class FisherImportance(_importance_base()):  # type: ignore[misc]
    """Torch-Pruning importance from `fisher_scores`: a group holding a value projection's output
    channels is scored by its heads' scores (repeated over each head's channels, so Torch-Pruning's
    per-head mean is the head's score); otherwise by the summed input-channel scores of the Linear
    layers whose inputs the group removes (an FFN's neurons); groups with neither (convolutions)
    fall back to the L2 weight norm."""

    def __init__(self) -> None:
        import torch_pruning as tp

        self.scores: dict[str, Any] = {"heads": {}, "inputs": {}}
        self.fallback = tp.importance.GroupMagnitudeImportance(p=2)

    @torch.no_grad()
    def __call__(self, group: Any) -> torch.Tensor:
        import torch_pruning as tp

        n = len(group[0].idxs)
        heads, inputs = torch.zeros(n), torch.zeros(n)
        found_heads = found_inputs = False
        for i, (dep, idxs) in enumerate(group):
            root = torch.tensor(group[i].root_idxs)
            layer, fn = dep.layer, dep.pruning_fn
            if fn == tp.prune_linear_out_channels and layer in self.scores["heads"]:
                per_channel = self.scores["heads"][layer].repeat_interleave(layer.out_features // len(self.scores["heads"][layer]))
                heads.scatter_add_(0, root, per_channel.cpu()[idxs])
                found_heads = True
            elif fn == tp.prune_linear_in_channels and layer in self.scores["inputs"]:
                inputs.scatter_add_(0, root, self.scores["inputs"][layer].cpu()[idxs])
                found_inputs = True
        if found_heads:
            return heads
        return inputs if found_inputs else self.fallback(group)
