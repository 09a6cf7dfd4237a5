"""Feature distillation for the distill pass: match the outputs of named teacher/student layers.

For each pair `{teacher: NAME, student: NAME, weight: W}` a forward hook records the layer's
output (its first tensor) in both models; the loss adds W · MSE (or 1 − cosine) between the
student's feature, passed through a learned projection when the widths differ, and the teacher's.
The width is the channel axis (axis 1) of 4-D/5-D features (convolutions) and the last axis
otherwise (linear layers, token sequences); a 1×1 convolution or a linear layer maps student width
to teacher width, is trained with the student, and is discarded after training (FitNets,
Romero et al. 2015). Every other axis must match.

Written by hand: forward hooks and a projection per pair are a few lines; the distillation
libraries that do this (e.g. torchdistill) own the whole training loop and model construction.
"""

from __future__ import annotations

from typing import Any

from optimize.errors import ConfigError


def module_names(module: Any) -> set[str]:
    return {name for name, _ in module.named_modules() if name}


def missing_layer_error(which: str, name: str, module: Any, key: str) -> ConfigError:
    import difflib

    names = sorted(module_names(module))
    hint = difflib.get_close_matches(name, names, n=1)
    more = f" (did you mean '{hint[0]}'?)" if hint else f" (layers: {', '.join(names[:12])}{' …' if len(names) > 12 else ''})"
    return ConfigError(f"no layer '{name}' in the {which}{more}", key=key)


def check_names(pairs: list[Any], teacher: Any, student: Any | None, key: str) -> None:
    """ConfigError naming the first pair whose layer is missing (student None: not checked)."""
    t_names = module_names(teacher)
    s_names = module_names(student) if student is not None else None
    for i, pair in enumerate(pairs):
        if pair.teacher not in t_names:
            raise missing_layer_error("teacher", pair.teacher, teacher, f"{key}.features[{i}].teacher")
        if s_names is not None and pair.student not in s_names:
            raise missing_layer_error("student", pair.student, student, f"{key}.features[{i}].student")


def _first_tensor(out: Any) -> Any:
    import torch
    from torch.utils._pytree import tree_leaves

    for t in tree_leaves(out):
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            return t
    return None


class Recorder:
    """Forward hooks that keep the latest output of each named layer."""

    def __init__(self, module: Any, names: list[str]) -> None:
        self.values: list[Any] = [None] * len(names)
        self.handles = []
        for i, name in enumerate(names):
            self.handles.append(module.get_submodule(name).register_forward_hook(self._hook(i)))

    def _hook(self, i: int) -> Any:
        def hook(_m: Any, _args: Any, out: Any) -> None:
            self.values[i] = _first_tensor(out)

        return hook

    def take(self) -> list[Any]:
        vals, self.values = self.values, [None] * len(self.values)
        return vals

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


def width_axis(t: Any) -> int:
    return 1 if t.dim() in (4, 5) else t.dim() - 1


def make_projections(pairs: list[Any], s_feats: list[Any], t_feats: list[Any], key: str) -> Any:
    """One projection per pair (identity when widths match), from a probe forward's features."""
    from torch import nn

    projs = []
    for i, (pair, s, t) in enumerate(zip(pairs, s_feats, t_feats, strict=True)):
        where = f"{key}.features[{i}]"
        if s is None or t is None:
            which = "student" if s is None else "teacher"
            name = pair.student if s is None else pair.teacher
            raise ConfigError(f"the {which} layer '{name}' gave no floating-point tensor output (did it run?)", key=where)
        if s.dim() != t.dim():
            raise ConfigError(
                f"feature shapes differ in rank: student '{pair.student}' {tuple(s.shape)} vs teacher '{pair.teacher}' {tuple(t.shape)}",
                key=where,
            )
        ax = width_axis(t)
        other_s = [d for j, d in enumerate(s.shape) if j != ax]
        other_t = [d for j, d in enumerate(t.shape) if j != ax]
        if other_s != other_t:
            raise ConfigError(
                f"feature shapes differ outside the width axis {ax}: student '{pair.student}' {tuple(s.shape)} vs "
                f"teacher '{pair.teacher}' {tuple(t.shape)} (only the width may differ; a projection maps it)",
                key=where,
            )
        cs, ct = s.shape[ax], t.shape[ax]
        if cs == ct:
            projs.append(nn.Identity())
        elif t.dim() == 4:
            projs.append(nn.Conv2d(cs, ct, kernel_size=1, bias=False))
        elif t.dim() == 5:
            projs.append(nn.Conv3d(cs, ct, kernel_size=1, bias=False))
        else:
            projs.append(nn.Linear(cs, ct, bias=False))
    return nn.ModuleList(projs)


def feature_loss(pairs: list[Any], projected: list[Any], t_feats: list[Any], kind: str, mask: Any = None) -> Any:
    """Σ weight × loss per pair. `mask` (batch, tokens), a text batch's attention mask: a
    (batch, tokens, width) feature is averaged over real tokens only (padding positions hold hidden
    states of no token; the batch is padded to its longest line)."""
    import torch.nn.functional as F

    total = None
    for pair, s, t in zip(pairs, projected, t_feats, strict=True):
        s, t = s.float(), t.float().detach()
        if kind == "cosine":
            per = 1.0 - F.cosine_similarity(s, t, dim=width_axis(t), eps=1e-8)
        else:
            per = (s - t) ** 2
        tokens = mask is not None and s.dim() == 3 and tuple(s.shape[:2]) == tuple(mask.shape)
        if tokens:
            w = mask.to(per.dtype)
            w = w if per.dim() == 2 else w.unsqueeze(-1).expand_as(per)
            part = (per * w).sum() / w.sum().clamp(min=1.0)
        else:
            part = per.mean()
        part = pair.weight * part
        total = part if total is None else total + part
    return total


class Trainable:
    """Builds the module trained under DDP: the student plus the projections, one forward."""

    @staticmethod
    def wrap(student: Any, recorder: Recorder | None, projections: Any) -> Any:
        from torch import nn

        class StudentWithProjections(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.student = student
                self.projections = projections

            def forward(self, *xs: Any) -> Any:
                out = self.student(*xs)
                if recorder is None:
                    return out, []
                feats = recorder.take()
                return out, [p(f) for p, f in zip(self.projections, feats, strict=True)]

        return StudentWithProjections()
