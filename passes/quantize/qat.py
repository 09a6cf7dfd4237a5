"""Quantization-aware training set-up on a torch model: ORT-exact weight fake quantization
(straight-through gradient), activation observers, Conv+BatchNorm folding.

Quantization is only simulated here; the integer model is materialized with ONNX Runtime's
quantizer after export (`QuantizePass.finalize`), because a torch fake-quant export is not fused into
integer kernels by ONNX Runtime. Per-channel axis choices follow ONNX Runtime's quantizer
(per-tensor for dynamic Conv, always symmetric per-channel in QDQ) so the trained weights survive
materialization. Conv + BatchNorm pairs are folded first (ONNX Runtime folds them before quantizing
anyway), so the weights that are fake-quantized are the ones that get exported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from passes.quantize.grid import ort_fake_quantize, scale_zero_point, type_range

if TYPE_CHECKING:
    from optimize.handle import ModelHandle
    from optimize.pass_api import PassResult
    from passes.quantize.config import QuantizeConfig

ACTIVATION_EMA = 0.01  # QAT activation observers: weight of each new batch's min/max


def _weight_fake_quant_class() -> type:
    """The parametrization module, built on first use so importing this file does not import torch."""
    cls = globals().get("_WEIGHT_FAKE_QUANT")
    if cls is not None:
        return cls
    import torch

    class WeightFakeQuant(torch.nn.Module):
        """ORT-exact int8 weight fake quantization with a straight-through gradient."""

        def __init__(self, scheme: dict[str, Any]) -> None:
            super().__init__()
            self.scheme = dict(scheme)

        def forward(self, w: torch.Tensor) -> torch.Tensor:
            return w + (ort_fake_quantize(w, self.scheme) - w).detach()

        def extra_repr(self) -> str:
            s = self.scheme
            kind = "per-channel" if s["per_channel"] else "per-tensor"
            return f"{s['qtype']} {kind} symmetric={s['symmetric']} reduce_range={s['reduce_range']}"

    WeightFakeQuant.__module__ = __name__
    WeightFakeQuant.__qualname__ = "WeightFakeQuant"
    globals()["_WEIGHT_FAKE_QUANT"] = WeightFakeQuant
    return WeightFakeQuant


class ActivationFakeQuant:
    """Forward pre-hook: simulated activation quantization on a layer's first input.

    `static`: a running min/max (exponential moving average, updated in training mode) and
    asymmetric fake quant to the activation type, the way ONNX Runtime's calibrated QuantizeLinear
    will. `dynamic`: the range of the current tensor, as DynamicQuantizeLinear does at run time.
    Removed before export (`training_only`), like every training-time hook.
    """

    training_only = True

    def __init__(self, mode: str, qtype: str, averaging: float = ACTIVATION_EMA) -> None:
        self.mode = mode
        self.qtype = qtype
        self.averaging = averaging
        self.min_val: Any = None
        self.max_val: Any = None

    def __call__(self, module: Any, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        import torch

        if not args or not isinstance(args[0], torch.Tensor) or not args[0].is_floating_point():
            return None
        x = args[0]
        xf = x.detach().float()
        if self.mode == "dynamic":
            rmin, rmax = xf.min(), xf.max()
            qtype = "uint8"  # DynamicQuantizeLinear is always uint8
        else:
            if module.training:
                bmin, bmax = xf.min(), xf.max()
                if self.min_val is None:
                    self.min_val, self.max_val = bmin, bmax
                else:
                    self.min_val = self.min_val.to(x.device)
                    self.max_val = self.max_val.to(x.device)
                    self.min_val = self.min_val + self.averaging * (bmin - self.min_val)
                    self.max_val = self.max_val + self.averaging * (bmax - self.max_val)
            if self.min_val is None:
                return None  # never observed: nothing to simulate yet
            rmin, rmax = self.min_val.to(x.device), self.max_val.to(x.device)
            qtype = self.qtype
        qmin, qmax = type_range(qtype)
        scale, zp = scale_zero_point(rmin, rmax, qmin, qmax, symmetric=False)
        zp = zp.float()
        q = torch.clamp(torch.round(xf / scale) + zp, qmin, qmax)
        xq = ((q - zp) * scale).to(x.dtype)
        return (x + (xq - x).detach(), *args[1:])




def _weight_scheme(cfg: QuantizeConfig, kind: str) -> dict[str, Any]:
    """How ONNX Runtime's quantizer will store the weight of a layer of `kind` (conv/linear/embedding)."""
    qtype = cfg.weight_type
    if kind == "embedding":  # Gather's table is quantized as an activation: per tensor, asymmetric
        act = "uint8" if cfg.mode == "dynamic" else cfg.activation_type
        return {"qtype": act, "per_channel": False, "symmetric": False, "reduce_range": False}
    if cfg.bits == 4:  # int4 QDQ weights, made symmetric (WeightSymmetric) as the quantizer is told
        return {"qtype": "int4", "per_channel": cfg.per_channel, "symmetric": True, "reduce_range": cfg.reduce_range}
    if cfg.mode == "dynamic":
        # ConvInteger weights are per tensor; MatMulInteger's follow per_channel (axis = output).
        per_channel = cfg.per_channel and kind == "linear"
        return {"qtype": qtype, "per_channel": per_channel, "symmetric": qtype == "int8",
                "reduce_range": cfg.reduce_range}
    if cfg.format == "qoperator" and cfg.per_channel and kind == "conv":
        # QLinearConv per-channel weights are int8 (symmetric) whatever weight_type says
        return {"qtype": "int8", "per_channel": True, "symmetric": True, "reduce_range": cfg.reduce_range}
    symmetric = qtype == "int8" or (cfg.format == "qdq" and cfg.per_channel)  # QDQ per-channel: always symmetric
    return {"qtype": qtype, "per_channel": cfg.per_channel, "symmetric": symmetric, "reduce_range": cfg.reduce_range}


def _grid_is_exact(cfg: QuantizeConfig) -> bool:
    """Whether re-quantizing QAT weights reproduces them. Not for QDQ per-channel uint8: ONNX Runtime
    makes it symmetric with zero point 128, a grid of -128..127 steps whose re-quantization changes the
    scale (max |w| = 128 steps gives a new scale 256/255 times the old one)."""
    if cfg.bits in (1, 2):
        return True  # the binary/ternary projection is idempotent: materializing keeps the trained values
    if cfg.bits == 4:
        return False  # int4's symmetric range is -8..7: re-quantizing moves the scale when a weight sits at -8
    return not (cfg.mode == "static" and cfg.format == "qdq" and cfg.per_channel and cfg.weight_type == "uint8")


def _excluded(module_name: str, exclude_nodes: list[str]) -> bool:
    """True when an ONNX node name in `exclude_nodes` belongs to this module (`/a/b/Conv` ~ `a.b`)."""
    for node in exclude_nodes:
        norm = node.strip("/").replace("/", ".")
        if norm == module_name or norm.startswith(module_name + "."):
            return True
    return False


def _conv_bn_pairs(module: Any) -> list[tuple[str, str]]:
    """(conv, batchnorm) submodule names where the BatchNorm consumes the Conv's output alone."""
    import torch
    from torch import nn

    convs = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    bns = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    pairs: list[tuple[str, str]] = []
    try:
        import torch.fx

        gm = torch.fx.symbolic_trace(module)
        mods = dict(gm.named_modules())
        calls: dict[str, int] = {}
        for node in gm.graph.nodes:
            if node.op == "call_module":
                calls[str(node.target)] = calls.get(str(node.target), 0) + 1
        for node in gm.graph.nodes:
            if node.op != "call_module" or not isinstance(mods.get(node.target), bns):
                continue
            src = node.args[0] if node.args else None
            if (
                isinstance(src, torch.fx.Node) and src.op == "call_module"
                and isinstance(mods.get(src.target), convs) and len(src.users) == 1
                and calls[str(src.target)] == 1 and calls[str(node.target)] == 1  # modules used once
            ):
                pairs.append((str(src.target), str(node.target)))
        return pairs
    except Exception:  # untraceable (data-dependent control flow): fall back to Sequential neighbours
        pass
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Sequential):
            children = list(sub.named_children())
            for (a_name, a), (b_name, b) in zip(children, children[1:], strict=False):
                if isinstance(a, convs) and isinstance(b, bns):
                    prefix = f"{name}." if name else ""
                    pairs.append((prefix + a_name, prefix + b_name))
    return pairs


def _fold_batchnorms(module: Any) -> int:
    """Fold each Conv→BatchNorm pair's running statistics into the convolution (in place).

    Parametrizations on the conv weight (pruning masks) are kept: the scale is applied to the stored
    original, so masked weights stay zero. Returns the number of pairs folded.
    """
    import torch
    from torch import nn
    from torch.nn.utils import parametrize

    def stored(conv: Any, name: str) -> Any:
        if parametrize.is_parametrized(conv, name):
            return getattr(conv.parametrizations, name).original
        return getattr(conv, name)

    folded = 0
    for conv_name, bn_name in _conv_bn_pairs(module):
        conv, bn = module.get_submodule(conv_name), module.get_submodule(bn_name)
        if bn.running_mean is None or bn.running_var is None or parametrize.is_parametrized(conv, "bias"):
            continue
        with torch.no_grad():
            gamma = bn.weight if bn.affine else torch.ones_like(bn.running_var)
            beta = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
            factor = gamma / torch.sqrt(bn.running_var + bn.eps)
            shape = (-1,) + (1,) * (conv.weight.dim() - 1)
            before = conv.weight.detach().clone()
            saved = stored(conv, "weight").detach().clone()
            stored(conv, "weight").mul_(factor.reshape(shape))
            if not torch.allclose(conv.weight, before * factor.reshape(shape), rtol=1e-5, atol=1e-7):
                # a weight parametrization that is not a per-channel-linear mask: leave this pair alone
                stored(conv, "weight").copy_(saved)
                continue
            old_bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            new_bias = (old_bias - bn.running_mean) * factor + beta
            if conv.bias is not None:
                conv.bias.copy_(new_bias)
            else:
                conv.bias = nn.Parameter(new_bias.detach().clone())
        parent_name, _, child = bn_name.rpartition(".")
        setattr(module.get_submodule(parent_name) if parent_name else module, child, nn.Identity())
        folded += 1
    return folded


def setup_qat(module: Any, cfg: QuantizeConfig) -> tuple[Any, dict[str, Any]]:
    """A deep copy of `module` with ORT-exact weight fake quant and activation observers."""
    import copy

    from torch import nn
    from torch.nn.utils import parametrize

    qat = copy.deepcopy(module)
    folded = _fold_batchnorms(qat)
    ops = set(cfg.op_types) if cfg.op_types is not None else None
    wanted = {
        "conv": ops is None or "Conv" in ops,
        "linear": ops is None or bool({"MatMul", "Gemm"} & ops),
        "embedding": ops is None or "Gather" in ops,
    }
    counts = {"conv": 0, "linear": 0, "embedding": 0}
    observers = 0
    excluded: list[str] = []
    for name, sub in list(qat.named_modules()):
        if isinstance(sub, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            kind = "conv"
        elif isinstance(sub, nn.Linear):
            kind = "linear"
        elif isinstance(sub, nn.Embedding):
            kind = "embedding"
        else:
            continue
        if not wanted[kind]:
            continue
        if _excluded(name, cfg.exclude_nodes):
            excluded.append(name)
            continue
        # registered after any existing parametrization (a pruning mask): fq(mask(w))
        if cfg.bits in (1, 2) and kind != "embedding":  # binary/ternary; embeddings stay on ORT's int8 grid
            from passes.quantize.lowbit import fake_quant_module

            fq = fake_quant_module(cfg.bits, cfg.per_channel)
        else:
            fq = _weight_fake_quant_class()(_weight_scheme(cfg, kind))
        parametrize.register_parametrization(sub, "weight", fq)
        counts[kind] += 1
        if kind != "embedding":
            sub.register_forward_pre_hook(ActivationFakeQuant(cfg.mode, cfg.activation_type))
            observers += 1
    info = {
        "layers_wrapped": sum(counts.values()),
        "conv_wrapped": counts["conv"],
        "linear_wrapped": counts["linear"],
        "embedding_wrapped": counts["embedding"],
        "activation_observers": observers,
        "batchnorm_folded": folded,
        "excluded_layers": excluded,
        "weight_grid_exact": _grid_is_exact(cfg),
    }
    return qat, info




def qat_result(model: ModelHandle, cfg: QuantizeConfig, name: str) -> PassResult:
    """The QAT step's result: a fake-quantized copy of the module, materialization deferred to after export."""
    from optimize.pass_api import PassResult

    qat, info = setup_qat(model.module, cfg)
    metrics: dict[str, Any] = {
        "stage": "qat",
        "qat": True,
        "mode": cfg.mode,
        "format": cfg.format if cfg.mode == "static" else None,
        "per_channel": cfg.per_channel,
        "weight_type": cfg.weight_type,
        "activation_type": cfg.activation_type if cfg.mode == "static" else "uint8",
        **info,
    }
    notes = [
        f"quantization-aware training: {info['layers_wrapped']} layers simulate int8 on ONNX Runtime's "
        "weight grid; the integer model is materialized with ONNX Runtime's quantizer after export"
    ]
    metrics["activation_simulation"] = (
        "per-batch range, as DynamicQuantizeLinear at run time" if cfg.mode == "dynamic"
        else f"running min/max (EMA {ACTIVATION_EMA}) per layer input"
    )
    if info["batchnorm_folded"]:
        notes.append(
            f"{info['batchnorm_folded']} Conv+BatchNorm pairs folded before QAT (BatchNorm statistics are "
            "frozen during training, as ONNX Runtime would fold them before quantizing)"
        )
    if cfg.bits in (1, 2):
        from passes.quantize.lowbit import SCHEME_TEXT, lowbit_name

        metrics.update(weight_type=lowbit_name(cfg.bits), logical_bits=cfg.bits, lowbit_scheme=SCHEME_TEXT[cfg.bits])
        notes[0] = (
            f"quantization-aware training: {info['layers_wrapped']} layers simulate {lowbit_name(cfg.bits)} "
            f"({cfg.bits}-bit) weights with a straight-through estimator and {cfg.activation_type} activations; "
            "after export the weights are stored as int8 codes with a per-channel scale (QDQ) and the "
            "activations quantized by ONNX Runtime's quantizer"
        )
    elif cfg.bits == 4:
        metrics["weight_type"] = "int4"
        notes[0] = notes[0].replace("simulate int8", "simulate int4 weights (uint8 activations)")
        notes.append(
            "int4 weights: ONNX Runtime's symmetric int4 range is -8..7, so re-quantizing the trained weights "
            "can widen a channel's scale by 16/15 where a weight sits at -8 (weights move by at most one step)"
        )
    elif not info["weight_grid_exact"]:
        notes.append(
            "QDQ per-channel uint8 weights: ONNX Runtime quantizes them symmetrically around zero point "
            "128, a grid that re-quantization does not reproduce, so trained weights move by up to half a "
            "step when materialized; weight_type: int8 keeps the trained grid exactly"
        )
    if info["layers_wrapped"] == 0:
        notes.append("no Conv/Linear/Embedding layers found to simulate: QAT has no effect on this model")
    handle = model.replace(module=qat, pending=[*model.pending, (name, cfg)])
    return PassResult(handle, metrics, notes)

