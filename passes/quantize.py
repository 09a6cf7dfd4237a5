"""quantize: ONNX Runtime's quantizers — int8 dynamic / static (QDQ, QOperator), int4 QDQ weights,
int4/int8 block-wise weight-only (MatMulNBits), `format: auto` and the accuracy-aware fallback
(passes/quantize_auto.py), optional transformer fusion first (ONNX Runtime's transformer optimizer;
the fused com.microsoft ops need `DefaultTensorType` for the quantizer's shape inference).

On ONNX, the model goes through ONNX Runtime's `quant_pre_process` (shape inference; skipped with a
note when it fails) and then `quantize_dynamic` or `quantize_static`. Static calibration is fed in
small batches, and ranges are merged batch by batch (ONNX Runtime's strided calibration), so memory
stays bounded even with the histogram methods (entropy, percentile), which otherwise keep every
intermediate tensor of every calibration sample. (MinMax gives the same ranges either way; merged
histograms give entropy thresholds that differ from a one-shot histogram, ~14% in one test. ONNX
Runtime's own `CalibMaxIntermediateOutputs` is not used: it discards the batches collected before each
flush, so ranges come from the last batches only.)

On a torch model followed by a training pass (distill), quantization is simulated during training
(quantization-aware training) and the integer model is materialized with ONNX Runtime's quantizer
after export (`finalize`), because a torch fake-quant export is not fused into integer kernels by
ONNX Runtime (see docs/architecture.md).

The QAT weight fake-quantization is written by hand, not taken from `torch.ao.quantization`: the
point is that the integer weights ONNX Runtime's quantizer computes from the trained float weights
land exactly on the grid the student trained on. That needs ONNX Runtime's own formula
(`onnxruntime.quantization.quant_utils.compute_scale_zp` / `quantize_nparray`: range widened to
include 0, symmetric int8 in [-127, 127] or [-64, 64] with `reduce_range`, scale computed in float64
and stored as float32, round half to even, clip to the type's range), its per-channel axis choices
(per-tensor for dynamic Conv, always symmetric per-channel in QDQ) and the float32 arithmetic order.
torch's observers use other ranges ([-128, 127], eps clamping, float32 scale), so their grid is off
by one step on some weights, and the re-quantized model would not be the one that was trained.

`bits: 1` / `bits: 2` (binary / ternary weights, passes/quantize_lowbit.py): the same static QDQ
path, with the weights projected onto {−α, +α} / {−α, 0, +α} per output channel first (simulated
with a straight-through estimator in QAT) and stored as int8 codes with scale α; the logical bits
are recorded in the file for the report.

Conv + BatchNorm pairs are folded into the convolution before QAT (ONNX Runtime folds them before
quantizing anyway), so the weights that are fake-quantized are the ones that get exported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from passes.base import Pass, PassConfig
from passes.quantize_auto import DEFAULT_AUTO_FLOOR

if TYPE_CHECKING:
    from optimize.context import PlanContext, RunContext
    from optimize.handle import ModelHandle
    from passes.base import PassResult


class QuantizeConfig(PassConfig):
    mode: Literal["dynamic", "static", "weight_only"] = Field(
        "static",
        description="dynamic: activations quantized at run time; static: calibrated activation ranges; "
        "weight_only: block-wise integer MatMul weights (ONNX Runtime's MatMulNBits), float activations.",
    )
    bits: Literal[1, 2, 4, 8] = Field(
        8, description="Weight bits. 4: mode weight_only (MatMulNBits), or mode static with format qdq (int4 QDQ weights, "
        "symmetric; also for quantization-aware training). 1 (binary, α·sign(w)) and 2 (ternary, α·{-1, 0, 1}): "
        "mode static with format qdq, stored as int8 codes with a per-channel scale; train them with QAT "
        "(quantize before distill), accuracy usually collapses without it.",
    )
    format: Literal["qdq", "qoperator", "auto"] = Field(
        "qdq",
        description="static: QDQ (Quantize/DequantizeLinear pairs ONNX Runtime fuses) or QOperator (QLinear* ops); "
        "auto: build the int8 forms that fit the model, measure each against the float input on this hardware, "
        "keep the best passing one (float when none is faster).",
    )
    objective: Literal["latency", "size"] = Field(
        "latency", description="format auto: keep the fastest passing candidate, or the smallest (sizes within 2% count as equal; the faster wins)."
    )
    per_channel: bool = Field(True, description="One scale per output channel instead of per tensor.")
    weight_type: Literal["int8", "uint8"] = Field("int8", description="Stored weight type.")
    activation_type: Literal["uint8", "int8"] = Field("uint8", description="static: activation type.")
    calibration: Literal["minmax", "entropy", "percentile"] = Field("minmax", description="static: calibration method.")
    calibration_samples: int = Field(256, gt=0, le=1_000_000, description="static: samples used for calibration.")
    reduce_range: bool = Field(False, description="7-bit weights; avoids saturation on CPUs without VNNI.")
    op_types: list[str] | None = Field(None, description="Only quantize these op types (default: the quantizer's own).")
    exclude_nodes: list[str] = Field(default_factory=list, description="Node names to keep in float.")
    parity_floor: float | None = Field(
        None, ge=-1, le=1,
        description="Smallest min cosine (against this pass's input) a quantized model must keep; below it, format "
        f"auto rejects the candidate and the fallback keeps sensitive layers in float. Default: "
        f"gates.min_parity_cosine, else {DEFAULT_AUTO_FLOOR} with format auto (not checked otherwise).",
    )
    fallback_max_layers: int = Field(
        8, ge=0, le=10_000,
        description="Accuracy-aware fallback: at most this many of the most sensitive layers kept in float to meet "
        "the parity floor / gates.max_accuracy_drop (0: no fallback).",
    )
    block_size: int = Field(
        32, ge=16, le=2048, description="weight_only: weights per quantization block along K (a power of two)."
    )
    symmetric_blocks: bool = Field(False, description="weight_only: symmetric blocks (no zero points).")
    accuracy_level: Literal[0, 1, 2, 3, 4] | None = Field(
        None,
        description="weight_only: MatMulNBits compute type (4: int8 activations, usually fastest on CPU; "
        "0/None: the runtime's default).",
    )
    fusion: Literal["none", "bert"] = Field(
        "none",
        description="Fuse transformer blocks (attention, layer norm, GELU) with ONNX Runtime's transformer "
        "optimizer before quantizing.",
    )
    num_heads: int = Field(0, ge=0, le=4096, description="fusion: attention heads (0: detect from the graph).")
    hidden_size: int = Field(0, ge=0, le=1_000_000, description="fusion: hidden size (0: detect from the graph).")

    @model_validator(mode="after")
    def _combinations(self) -> QuantizeConfig:
        if self.bits == 4 and not (self.mode == "weight_only" or (self.mode == "static" and self.format == "qdq")):
            raise ValueError(
                "bits 4 needs mode: weight_only (block-wise int4 MatMul weights) or mode: static with format: qdq "
                "(int4 QDQ weights)"
            )
        if self.bits in (1, 2):
            if not (self.mode == "static" and self.format == "qdq"):
                raise ValueError(
                    f"bits {self.bits} ({'binary' if self.bits == 1 else 'ternary'} weights) needs mode: static with "
                    "format: qdq (int8 codes with a per-channel scale, run by ONNX Runtime's QDQ kernels)"
                )
            if self.weight_type != "int8":
                raise ValueError(f"bits {self.bits} stores signed codes (-1, 0, 1): use weight_type: int8")
        if self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a power of two (got {self.block_size})")
        if self.mode == "weight_only" and self.format == "auto":
            raise ValueError("format auto chooses among int8 forms; use it with mode dynamic or static")
        return self


# Ops whose presence in the output means integer (or integer-fused) kernels.
INTEGER_OPS = (
    "QLinearConv", "QLinearMatMul", "QLinearAdd", "QLinearMul", "QLinearConcat", "QLinearAveragePool",
    "QLinearGlobalAveragePool", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax", "QLinearWhere",
    "QGemm", "MatMulInteger", "ConvInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul",
    "QuantizeLinear", "DequantizeLinear", "QAttention", "DynamicQuantizeLSTM", "QEmbedLayerNormalization",
)
CALIBRATION_BATCH = 16  # samples per calibration feed
ACTIVATION_EMA = 0.01  # QAT activation observers: weight of each new batch's min/max


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


# ====================================================================== ONNX Runtime's integer grid


def _qrange(qtype: str, reduce_range: bool, symmetric: bool) -> tuple[int, int]:
    """ONNX Runtime's `get_qmin_qmax_for_qType` for int8/uint8/int4."""
    if qtype == "int4":
        return (-4, 3) if reduce_range else (-8, 7)
    if reduce_range:
        return (-64, 64) if qtype == "int8" else (0, 127)
    if symmetric and qtype == "int8":
        return (-127, 127)
    return (-128, 127) if qtype == "int8" else (0, 255)


def _type_range(qtype: str) -> tuple[int, int]:
    if qtype == "int4":
        return (-8, 7)
    return (-128, 127) if qtype == "int8" else (0, 255)


def _scale_zero_point(rmin: Any, rmax: Any, qmin: int, qmax: int, symmetric: bool) -> tuple[Any, Any]:
    """ONNX Runtime's `compute_scale_zp` on torch tensors (one value per channel).

    `rmin`/`rmax` are float32 tensors; returns (float32 scale, float64 zero point).
    """
    import torch

    zero = torch.zeros((), dtype=rmin.dtype, device=rmin.device)
    rmin = torch.minimum(rmin, zero)
    rmax = torch.maximum(rmax, zero)
    if symmetric:
        absmax = torch.maximum(rmin.abs(), rmax.abs())
        rmin, rmax = -absmax, absmax
    scale64 = (rmax.double() - rmin.double()) / float(qmax - qmin)
    tiny = scale64 < torch.finfo(torch.float32).tiny
    if symmetric:
        zp = torch.full_like(scale64, float(round((qmin + qmax) / 2.0)))  # numpy/Python round half to even
    else:
        zp = torch.round(qmin - rmin.double() / torch.where(tiny, torch.ones_like(scale64), scale64))
    scale = torch.where(tiny, torch.ones_like(scale64), scale64).float()
    zp = torch.where(tiny, torch.zeros_like(zp), zp)
    return scale, zp


def ort_fake_quantize(w: Any, scheme: dict[str, Any]) -> Any:
    """`w` quantized and dequantized exactly as ONNX Runtime's quantizer stores it (no gradient)."""
    import torch

    qtype, per_channel = scheme["qtype"], scheme["per_channel"]
    qmin, qmax = _qrange(qtype, scheme["reduce_range"], scheme["symmetric"])
    lo, hi = _type_range(qtype)
    wf = w.detach().float()
    if per_channel and wf.dim() > 1:
        flat = wf.reshape(wf.shape[0], -1)
        rmin, rmax = flat.amin(dim=1), flat.amax(dim=1)
        shape = (-1,) + (1,) * (wf.dim() - 1)
    else:
        rmin, rmax = wf.min(), wf.max()
        shape = ()
    scale, zp = _scale_zero_point(rmin, rmax, qmin, qmax, scheme["symmetric"])
    scale, zp = scale.reshape(shape), zp.float().reshape(shape)
    q = torch.clamp(torch.round(wf / scale) + zp, lo, hi)
    return ((q - zp) * scale).to(w.dtype)


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
        qmin, qmax = _type_range(qtype)
        scale, zp = _scale_zero_point(rmin, rmax, qmin, qmax, symmetric=False)
        zp = zp.float()
        q = torch.clamp(torch.round(xf / scale) + zp, qmin, qmax)
        xq = ((q - zp) * scale).to(x.dtype)
        return (x + (xq - x).detach(), *args[1:])


# ====================================================================== QAT set-up (torch form)


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
            from passes.quantize_lowbit import fake_quant_module

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


# ====================================================================== ONNX quantization


class _CalibrationReader:
    """Feeds calibration samples in small batches; supports ONNX Runtime's strided calibration
    (`__len__` / `set_range`), so ranges are computed and merged chunk by chunk."""

    def __init__(self, batches: list[dict[str, Any]], progress: Any = None, key: str = "") -> None:
        self.batches = batches
        self.progress = progress
        self.key = key
        self.start, self.end = 0, len(batches)
        self.pos = 0

    def get_next(self) -> dict[str, Any] | None:
        if self.pos >= self.end:
            return None
        batch = self.batches[self.pos]
        self.pos += 1
        if self.progress is not None:
            self.progress.advance(self.key)
        return batch

    def __len__(self) -> int:
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.start, self.end = start_index, min(end_index, len(self.batches))
        self.pos = start_index

    def rewind(self) -> None:
        self.start, self.end, self.pos = 0, len(self.batches), 0


def _model_inputs(path: Any) -> list[tuple[str, Any, int | None]]:
    """(name, numpy dtype, fixed first dim or None) of the graph inputs that are not initializers."""
    import onnx
    from onnx import helper

    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    out = []
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        tt = inp.type.tensor_type
        dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type) if tt.elem_type else None
        dims = list(tt.shape.dim)
        fixed = int(dims[0].dim_value) if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0 else None
        out.append((inp.name, dtype, fixed))
    return out


def _calibration_batches(path: Any, samples: dict[str, Any], batch: int) -> tuple[list[dict[str, Any]], int]:
    from optimize.errors import DataError

    inputs = _model_inputs(path)
    missing = [name for name, _, _ in inputs if name not in samples]
    if missing:
        raise DataError(
            f"calibration data has no arrays for model inputs {missing} (it has {sorted(samples)})"
        )
    n = min(len(samples[name]) for name, _, _ in inputs) if inputs else 0
    fixed = {f for _, _, f in inputs if f is not None}
    if fixed:
        batch = min(fixed)
    batches = []
    for start in range(0, n - batch + 1 if fixed else n, batch):
        feed = {}
        for name, dtype, _ in inputs:
            arr = samples[name][start : start + batch]
            feed[name] = arr.astype(dtype) if dtype is not None and arr.dtype != dtype else arr
        batches.append(feed)
    used = sum(len(next(iter(b.values()))) for b in batches) if batches and inputs else 0
    return batches, used


def _integer_ops(counts: dict[str, int]) -> dict[str, int]:
    out = {}
    for op, c in counts.items():
        bare = op.rsplit(".", 1)[-1]
        if bare in INTEGER_OPS or bare.startswith("QLinear"):
            out[op] = c
    return out


class QuantizePass(Pass):
    name = "quantize"
    summary = (
        "int8 with ONNX Runtime's quantizers: dynamic, or static calibrated (QDQ / QOperator), format auto "
        "(measured candidates), int4 weight-only, binary/ternary weights (int8 codes); "
        "before distill, quantization-aware training on ORT's exact weight grid"
    )
    config_cls = QuantizeConfig
    accepts = frozenset({"torch", "onnx"})

    # ------------------------------------------------------------------ planning

    def form_for(self, current, later_passes):  # type: ignore[no-untyped-def]
        if current == "torch" and any(getattr(p, "trains", False) for p in later_passes):
            return "torch"  # quantization-aware training: simulate now, materialize after export
        return "onnx"

    def defers(self, form):  # type: ignore[no-untyped-def]
        return form == "torch"

    def check(self, plan: PlanContext) -> None:
        from optimize.errors import ConfigError

        cfg = self.config
        assert isinstance(cfg, QuantizeConfig)
        key = f"{plan.key}.quantize"
        if plan.form_at_pass == "torch":  # quantization-aware training before distill
            if cfg.format == "auto":
                raise ConfigError(
                    "format auto measures finished ONNX candidates; with quantization-aware training (quantize "
                    "before distill) choose the format (qdq or qoperator) and mode", key=f"{key}.format",
                )
            if cfg.mode == "weight_only" or cfg.fusion != "none":
                field = "mode" if cfg.mode == "weight_only" else "fusion"
                raise ConfigError(
                    f"{field} {getattr(cfg, field)} applies to ONNX models; quantization-aware training (quantize "
                    "before distill) simulates int8 dynamic/static", key=f"{key}.{field}",
                )
        # format auto without an explicit mode tries static only when it can calibrate
        needs_static = cfg.mode == "static" and (cfg.format != "auto" or "mode" in cfg.model_fields_set)
        if needs_static:
            if not (plan.has_data("calibration") or plan.has_data("train")) and not plan.has_input_spec:
                raise ConfigError(
                    "static quantization needs calibration data (data.calibration or data.train) or declared model.inputs",
                    key=f"{key}.mode",
                )
        if cfg.mode == "static" and cfg.activation_type == "int8" and cfg.weight_type == "uint8":
            raise ConfigError(
                "ONNX Runtime does not support int8 activations with uint8 weights; use weight_type: int8",
                key=f"{key}.weight_type",
            )

    # ------------------------------------------------------------------ running

    def run(self, model: ModelHandle, ctx: RunContext) -> PassResult:
        if model.form == "torch":
            return self._setup_qat(model)
        return self._quantize_onnx(model, ctx, after_qat=False)

    def finalize(self, model: ModelHandle, ctx: RunContext) -> PassResult:
        result = self._quantize_onnx(model, ctx, after_qat=True)
        pending = list(result.model.pending)
        for i, (name, _) in enumerate(pending):
            if name == self.name:
                del pending[i]
                break
        result.model = result.model.replace(pending=pending)
        return result

    def _setup_qat(self, model: ModelHandle) -> PassResult:
        from passes.base import PassResult

        cfg = self.config
        assert isinstance(cfg, QuantizeConfig)
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
            from passes.quantize_lowbit import SCHEME_TEXT, lowbit_name

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
        handle = model.replace(module=qat, pending=[*model.pending, (self.name, cfg)])
        return PassResult(handle, metrics, notes)

    def _quantize_onnx(self, model: ModelHandle, ctx: RunContext, after_qat: bool) -> PassResult:
        import logging
        from pathlib import Path

        from optimize import onnx_io
        from optimize.errors import OptimizeError, PassError
        from optimize.inspect_onnx import op_counts, weight_stats
        from passes.base import PassResult

        cfg = self.config
        assert isinstance(cfg, QuantizeConfig)
        if model.onnx_path is None:
            raise PassError(self.name, "expected an ONNX model")
        src = Path(model.onnx_path)
        step = ctx.step_dir(self.name)
        out = step / "model.onnx"
        notes: list[str] = []
        large = onnx_io.total_bytes(src) > onnx_io.EXTERNAL_DATA_THRESHOLD

        metrics: dict[str, Any] = {
            "stage": "materialize_qat" if after_qat else "quantize",
            "mode": cfg.mode,
            "bits": cfg.bits,
            "format": cfg.format if cfg.mode == "static" or cfg.format == "auto" else None,
            "per_channel": cfg.per_channel,
            "reduce_range": cfg.reduce_range,
            "weight_type": cfg.weight_type,
            "activation_type": cfg.activation_type if cfg.mode == "static" else "uint8 (dynamic)",
        }
        if cfg.mode == "weight_only":
            metrics.update(weight_type=f"int{cfg.bits} blocks" + ("" if cfg.symmetric_blocks else " + zero points"),
                           activation_type="float (weight-only)", block_size=cfg.block_size,
                           accuracy_level=cfg.accuracy_level)
        # 0. transformer fusion (optional), then shape inference / optimization as ONNX Runtime recommends
        fused = src
        if cfg.fusion != "none":
            fused = self._fuse(src, step / "fused.onnx", large, metrics)
        pre = step / "preprocessed.onnx"
        qin = self._preprocess(fused, pre, large, notes)
        metrics["preprocessed"] = qin == pre
        final = out
        quiet = logging.getLogger()
        old_level = quiet.level
        quiet.setLevel(max(old_level, logging.ERROR))  # the quantizers warn through the root logger
        try:
            if cfg.mode == "weight_only":
                self._weight_only(qin, out, large, metrics, notes)
            elif cfg.format == "auto":
                final = self._auto(model, src, fused, qin, out, ctx, large, metrics, notes)
            else:
                self._quantize_file(cfg, qin, out, ctx, large, metrics, notes)
                final = self._fixed_with_fallback(src, qin, out, ctx, large, metrics, notes)
        except OptimizeError:  # PassError, DataError: already say what is wrong
            raise
        except Exception as exc:
            ctx.log.debug("quantization failed", exc_info=True)
            raise PassError(self.name, f"ONNX Runtime's quantizer failed: {_first_line(exc)}") from exc
        finally:
            quiet.setLevel(old_level)
            for f in (pre, pre.with_name(pre.name + ".data")):
                f.unlink(missing_ok=True)

        if final != src:
            onnx_io.normalize_ir_version_file(final)  # the quantizer raises the opset, not the IR version
        counts = op_counts(final)
        integer = _integer_ops(counts)
        stats = weight_stats(final)
        quantized = [t for t in stats.tensors if t.bits <= 8]
        metrics.update(
            integer_ops=integer,
            weights_quantized=len(quantized),
            weight_tensors=len(stats.tensors),
            quantized_weight_fraction=(sum(t.count for t in quantized) / stats.total) if stats.total else 0.0,
            weight_bits={str(b): sum(t.count for t in stats.tensors if t.bits == b)
                         for b in sorted({t.bits for t in stats.tensors})},
        )
        if stats.has_logical:  # binary/ternary codes stored in int8: both counts, read back from the file
            metrics.update(logical_weight_bits=stats.counts_by_bits(logical=True),
                           stored_weight_bits=stats.counts_by_bits(logical=False))
        if cfg.bits in (1, 2) and not after_qat:
            from passes.quantize_lowbit import lowbit_name

            notes.append(
                f"post-training {lowbit_name(cfg.bits)} ({cfg.bits}-bit) weights without training: accuracy usually "
                "collapses without quantization-aware training; place quantize before a distill pass on a torch model"
            )
        if after_qat:
            metrics["weight_scales"] = (
                "from the QAT-trained weights with the formula used in training (same int8 grid)"
            )
            metrics["activation_ranges"] = (
                "computed at run time (dynamic)" if cfg.mode == "dynamic" else "re-calibrated on the exported model"
            )
        if final == src:
            pass  # format auto kept the float input; the notes say why
        elif not integer and not any(op.endswith("MatMulNBits") for op in counts):
            notes.append(
                "the quantized model has no integer ops: nothing matched the quantizer's op types"
                + (f" {cfg.op_types}" if cfg.op_types else "")
                + " (or their shapes/types were unknown); it is the float model"
            )
        elif not quantized:
            notes.append("no weight tensor was stored as 8-bit: only activations were quantized")
        if final != src and metrics.get("mode") == "dynamic" and any(op.endswith("ConvInteger") for op in counts):
            notes.append(
                "dynamic quantization of Conv gives ConvInteger (per-tensor weights), often slower than float "
                "on CPU; static QDQ is the fast layout for convolutions"
            )
        return PassResult(model.replace(onnx_path=final), metrics, notes)

    # ------------------------------------------------------------------ one quantization

    def _quantize_file(
        self, cfg: QuantizeConfig, qin: Any, out: Any, ctx: RunContext, large: bool, metrics: dict[str, Any],
        notes: list[str], include: list[str] | None = None, exclude: list[str] | None = None,
    ) -> None:
        """Quantize `qin` into `out` with settings `cfg` (dynamic or static; not auto)."""
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic

        from optimize import onnx_io

        qtype = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8, "int4": QuantType.QInt4}
        extra: dict[str, Any] = {"DefaultTensorType": onnx.TensorProto.FLOAT}
        weight_type = "int4" if cfg.bits == 4 else cfg.weight_type
        if cfg.bits in (1, 2, 4):
            extra["WeightSymmetric"] = True
        exclude = [*cfg.exclude_nodes, *(exclude or [])]
        if cfg.mode == "dynamic":
            ignored = sorted(
                {"format", "activation_type", "calibration", "calibration_samples"} & cfg.model_fields_set
            )
            if ignored and cfg.format != "auto":
                notes.append(f"{', '.join(ignored)}: apply to static quantization only; ignored in dynamic mode")
            if cfg.op_types is not None and "Gemm" in cfg.op_types and "MatMul" not in cfg.op_types:
                notes.append(
                    "dynamic quantization rewrites Gemm as MatMul + Add before quantizing: list MatMul in "
                    "op_types to quantize Gemm layers"
                )
            # ONNX Runtime renames a Gemm it rewrites to NAME_MatMul before applying node lists
            alias = lambda names: [*names, *(f"{n}_MatMul" for n in names)]  # noqa: E731
            quantize_dynamic(
                str(qin), str(out), op_types_to_quantize=cfg.op_types, per_channel=cfg.per_channel,
                reduce_range=cfg.reduce_range, weight_type=qtype[cfg.weight_type],
                nodes_to_quantize=alias(include) if include else None,
                nodes_to_exclude=alias(exclude) or None, use_external_data_format=large,
                extra_options={**extra, "EnableSubgraph": True},
            )
            onnx_io.normalize_ir_version_file(out)  # runnable as written (old IR: initializer inputs)
            return
        ort_in, projected = qin, None
        if cfg.bits in (1, 2):  # binary/ternary: project the float weights first (a no-op after QAT)
            from pathlib import Path

            from passes.quantize_lowbit import project_model

            ort_in = Path(out).with_name(Path(out).stem + ".lowbit-float.onnx")
            projected = project_model(qin, ort_in, cfg.bits, cfg.per_channel, cfg.op_types, exclude, include)
            try:
                self._static(cfg, ort_in, qin, out, ctx, large, metrics, notes, include, exclude, weight_type, extra)
            finally:
                for f in (ort_in, ort_in.with_name(ort_in.name + ".data")):
                    f.unlink(missing_ok=True)
            self._materialize_lowbit(cfg, out, projected, metrics, notes)
            return
        self._static(cfg, qin, qin, out, ctx, large, metrics, notes, include, exclude, weight_type, extra)

    def _materialize_lowbit(
        self, cfg: QuantizeConfig, out: Any, projected: dict[str, Any], metrics: dict[str, Any], notes: list[str],
    ) -> None:
        """Rewrite ONNX Runtime's int8 weights of the projected layers as codes {-1, 0, 1} × α."""
        from passes.quantize_lowbit import SCHEME_TEXT, lowbit_name, materialize_codes

        done = materialize_codes(out, projected, cfg.bits)
        metrics.update(
            logical_bits=cfg.bits, lowbit_scheme=SCHEME_TEXT[cfg.bits],
            lowbit_storage="int8 codes (binary -1/1, ternary -1/0/1) × float32 scale per output channel "
            "(DequantizeLinear); activations quantized by ONNX Runtime's static QDQ quantizer",
            lowbit_weights=len(done["codes"]),
        )
        if done["left_float"] or done["mismatched"]:
            left = [*done["left_float"], *done["mismatched"]]
            metrics["lowbit_left_float"] = left
            notes.append(
                f"{len(left)} layer(s) hold {lowbit_name(cfg.bits)} values but were not stored as int8 codes by "
                f"ONNX Runtime's quantizer ({', '.join(left)}): they count at their stored bits"
            )
        if not projected:
            notes.append(
                f"no Conv/Gemm/MatMul weight could take {lowbit_name(cfg.bits)} values (a weight must be a float "
                "initializer read directly by its layer)"
            )

    def _static(
        self, cfg: QuantizeConfig, ort_in: Any, qin: Any, out: Any, ctx: RunContext, large: bool,
        metrics: dict[str, Any], notes: list[str], include: list[str] | None, exclude: list[str], weight_type: str,
        extra: dict[str, Any],
    ) -> None:
        """ONNX Runtime's quantize_static on `ort_in` (calibrated in small batches) into `out`."""
        import io
        from contextlib import redirect_stdout

        import onnx
        from onnxruntime.quantization import (
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )

        from optimize import onnx_io
        from optimize.errors import PassError
        from optimize.inspect_onnx import _graphs

        qtype = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8, "int4": QuantType.QInt4}
        samples, source = ctx.sample_inputs("calibration", cfg.calibration_samples)
        batches, used = _calibration_batches(qin, samples, CALIBRATION_BATCH)
        if not batches:
            raise PassError(self.name, "no calibration samples (the calibration data set is empty)")
        metrics.update(
            calibration=cfg.calibration, calibration_samples=used, calibration_source=source,
            calibration_batches=len(batches),
            calibration_merge=f"ranges merged per batch of {CALIBRATION_BATCH} (bounded memory)",
        )
        if source.startswith("random"):
            notes.append(
                "static ranges calibrated on random inputs from the input spec: activation ranges may "
                "not match real data; declare data.calibration for a meaningful calibration"
            )
        key = f"{self.name}.calibrate"
        ctx.progress.start(key, "calibrating activation ranges", len(batches))
        reader = _CalibrationReader(batches, ctx.progress, key)
        method = {
            "minmax": CalibrationMethod.MinMax,
            "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile,
        }[cfg.calibration]
        try:
            with redirect_stdout(io.StringIO()):  # the histogram collector prints per batch
                quantize_static(
                    str(ort_in), str(out), reader,
                    quant_format=QuantFormat.QOperator if cfg.format == "qoperator" else QuantFormat.QDQ,
                    op_types_to_quantize=cfg.op_types, per_channel=cfg.per_channel,
                    reduce_range=cfg.reduce_range, activation_type=qtype[cfg.activation_type],
                    weight_type=qtype[weight_type], nodes_to_quantize=include or None,
                    nodes_to_exclude=exclude or None,
                    use_external_data_format=large, calibrate_method=method,
                    # one batch per collect: ranges/histograms merged as they come (bounded memory)
                    extra_options={**extra, "CalibStridedMinMax": 1},
                )
        finally:
            ctx.progress.finish(key)
        onnx_io.normalize_ir_version_file(out)
        if len(list(_graphs(onnx.load(str(qin), load_external_data=False).graph))) > 1:
            notes.append(
                "static quantization leaves If/Loop/Scan bodies in float (ONNX Runtime quantizes "
                "subgraphs in dynamic mode only)"
            )
        if cfg.format == "qoperator" and cfg.per_channel:
            notes.append(
                "QOperator per-channel kernels have measured far slower than QDQ on AVX2 CPUs without "
                "VNNI (0.2x of float32 in the field notes); prefer format: qdq unless measured faster"
            )

    # ------------------------------------------------------------------ goal, fallback, auto

    def _goal(self, ctx: RunContext, auto: bool) -> Any:
        from passes.quantize_auto import Goal

        cfg = self.config
        assert isinstance(cfg, QuantizeConfig)
        gates = ctx.config.gates
        if cfg.parity_floor is not None:
            floor, why = cfg.parity_floor, "quantize.parity_floor"
        elif gates.min_parity_cosine is not None:
            floor, why = gates.min_parity_cosine, "gates.min_parity_cosine"
        elif auto:
            floor, why = DEFAULT_AUTO_FLOOR, "format auto's default floor"
        else:
            floor, why = None, ""
        return Goal(floor, gates.max_accuracy_drop, why)

    def _quantize_fn(self, qin: Any, ctx: RunContext, large: bool) -> Any:
        """`(settings, out, include=, exclude=)` → quantize the prepared input with overridden settings."""
        base = self.config

        def quantize(settings: dict[str, Any], out: Any, include: list[str] | None = None,
                     exclude: list[str] | None = None) -> None:
            variant = base.model_copy(update={**settings, "format": settings.get("format", "qdq")})
            self._quantize_file(variant, qin, out, ctx, large, {}, [], include=include, exclude=exclude)

        return quantize

    def _run_fallback(
        self, settings: dict[str, Any], qin: Any, work: Any, ctx: RunContext, large: bool, evaluator: Any, goal: Any,
    ) -> tuple[Any, Any, list[str], dict[str, float]]:
        from passes.quantize_auto import fallback, weighted_layers

        cfg = self.config
        assert isinstance(cfg, QuantizeConfig)
        layers = weighted_layers(qin, cfg.op_types, cfg.exclude_nodes)
        return fallback(
            self._quantize_fn(qin, ctx, large), settings, layers, evaluator, goal, cfg.fallback_max_layers, work,
            ctx.progress, f"{self.name}.sensitivity", cfg.exclude_nodes,
        )

    def _fixed_with_fallback(
        self, src: Any, qin: Any, out: Any, ctx: RunContext, large: bool, metrics: dict[str, Any], notes: list[str],
    ) -> Any:
        """A fixed format: when a parity floor / accuracy gate applies, check it and fall back if needed."""
        import shutil

        from passes.quantize_auto import Evaluator

        cfg = self.config
        assert isinstance(cfg, QuantizeConfig)
        goal = self._goal(ctx, auto=False)
        if not goal.active:
            return out
        evaluator = Evaluator(ctx, src, want_accuracy=goal.max_accuracy_drop is not None)
        if goal.floor is None and evaluator.eval_ds is None:
            return out  # only an accuracy gate, and no labelled data to check it on here
        check = evaluator.check(out)
        ok, reason = goal.judge(check)
        metrics["goal"] = {"min_parity_cosine": goal.floor, "floor_source": goal.floor_source,
                           "max_accuracy_drop": goal.max_accuracy_drop}
        metrics["parity_all_quantized"] = {"min_cosine": check.min_cosine, "mean_cosine": check.mean_cosine,
                                           "accuracy_drop": check.accuracy_drop}
        if ok:
            metrics["float_nodes"] = []
            return out
        if cfg.fallback_max_layers == 0:
            notes.append(f"the quantized model misses its goal ({reason}); fallback is off (fallback_max_layers: 0)")
            return out
        settings = {k: getattr(cfg, k) for k in ("mode", "format", "per_channel", "reduce_range")}
        path, best, kept, sens = self._run_fallback(settings, qin, out.parent / "fallback", ctx, large, evaluator, goal)
        if path is None:
            notes.append(f"the quantized model misses its goal ({reason}) and has no layer to keep in float")
            return out
        shutil.move(str(path), str(out))
        shutil.rmtree(out.parent / "fallback", ignore_errors=True)
        self._fallback_report(metrics, notes, reason, best, kept, sens, goal)
        return out

    def _fallback_report(self, metrics: dict[str, Any], notes: list[str], reason: str | None, best: Any,
                         kept: list[str], sens: dict[str, float], goal: Any) -> None:
        ok, why = goal.judge(best)
        metrics["float_nodes"] = list(kept)
        metrics["sensitivity"] = {k: round(v, 6) for k, v in sorted(sens.items(), key=lambda kv: -kv[1])}
        metrics["fallback_goal_met"] = ok
        metrics["parity_after_fallback"] = {"min_cosine": best.min_cosine, "mean_cosine": best.mean_cosine,
                                            "accuracy_drop": best.accuracy_drop}
        if ok:
            notes.append(
                f"accuracy-aware fallback: fully quantized, {reason}; kept the {len(kept)} most sensitive "
                f"layer(s) in float ({', '.join(kept)}): min cosine {best.min_cosine:.4f}"
            )
        else:
            notes.append(
                f"accuracy-aware fallback did NOT meet the goal ({why}) even with {len(kept)} layer(s) in float "
                f"({', '.join(kept)}); kept the best variant: the pipeline's gates decide whether it is rejected"
            )

    def _auto(
        self, model: ModelHandle, src: Any, fused: Any, qin: Any, out: Any, ctx: RunContext, large: bool,
        metrics: dict[str, Any], notes: list[str],
    ) -> Any:
        import shutil

        from optimize import onnx_io
        from optimize.hardware import cpu_info, has_int8_dot_product
        from optimize.inspect_onnx import op_counts
        from passes.quantize_auto import Candidate, Evaluator, choose, time_candidates

        cfg = self.config
        assert isinstance(cfg, QuantizeConfig)
        goal = self._goal(ctx, auto=True)
        evaluator = Evaluator(ctx, src, want_accuracy=goal.max_accuracy_drop is not None)
        counts = op_counts(qin)
        has_matmul = any(op in counts for op in ("MatMul", "Gemm", "Attention", "com.microsoft.Attention"))
        modes = [cfg.mode] if "mode" in cfg.model_fields_set else ["dynamic", "static"]
        can_calibrate = bool(ctx.inputs) or ctx.config.data.calibration is not None or ctx.config.data.train is not None
        vnni = has_int8_dot_product()
        settings: list[tuple[str, dict[str, Any]]] = []
        skipped: list[str] = []
        if "dynamic" in modes:
            if has_matmul:
                settings.append((f"int8 dynamic {'per-channel' if cfg.per_channel else 'per-tensor'}",
                                 {"mode": "dynamic", "per_channel": cfg.per_channel, "reduce_range": cfg.reduce_range}))
            else:
                skipped.append("int8 dynamic: no MatMul/Gemm (dynamic Conv becomes slow per-tensor ConvInteger)")
        if "static" in modes:
            rr = cfg.reduce_range if "reduce_range" in cfg.model_fields_set else not vnni
            if can_calibrate:
                settings.append((f"int8 static QDQ {'per-channel' if cfg.per_channel else 'per-tensor'}"
                                 + (" reduce-range" if rr else ""),
                                 {"mode": "static", "format": "qdq", "per_channel": cfg.per_channel,
                                  "reduce_range": rr}))
            else:
                skipped.append("int8 static: no calibration data and no input spec")
        skipped.append("int8 static QOperator: measured 0.1–0.2x of float on CPUs without VNNI; not a candidate")

        work = out.parent / "candidates"
        work.mkdir(parents=True, exist_ok=True)
        candidates: list[Candidate] = [
            Candidate("float (input)", src, {"mode": "float"}, quantized=False, passed=True),
        ]
        if fused != src:
            candidates.append(Candidate("float fused", fused, {"mode": "float", "fusion": cfg.fusion}, quantized=False))
        extra_notes: dict[str, tuple[dict[str, Any], list[str]]] = {}
        key = f"{self.name}.candidates"
        ctx.progress.start(key, "format auto: building candidates", len(settings))
        for i, (name, st) in enumerate(settings):
            path = work / f"cand-{i}.onnx"
            cand_metrics: dict[str, Any] = {}
            cand_notes: list[str] = []
            variant = cfg.model_copy(update={**st, "format": st.get("format", "qdq")})
            self._quantize_file(variant, qin, path, ctx, large, cand_metrics, cand_notes)
            onnx_io.normalize_ir_version_file(path)
            c = Candidate(name, path, st)
            candidates.append(c)
            extra_notes[name] = (cand_metrics, cand_notes)
            c.check = evaluator.check(path)
            c.passed, c.reason = goal.judge(c.check)
            if not c.passed and cfg.fallback_max_layers > 0:
                fpath, fcheck, kept, sens = self._run_fallback(
                    st, qin, work / f"fallback-{i}", ctx, large, evaluator, goal
                )
                if fpath is not None:
                    fc = Candidate(f"{name} + {len(kept)} float layer(s)", fpath, st, float_nodes=kept, sensitivity=sens)
                    onnx_io.normalize_ir_version_file(fpath)
                    fc.check = fcheck
                    fc.passed, fc.reason = goal.judge(fcheck)
                    candidates.append(fc)
                    extra_notes[fc.name] = (cand_metrics, cand_notes)
            ctx.progress.advance(key)
        ctx.progress.finish(key)
        for c in candidates:
            if c.check is None:
                c.check = evaluator.check(c.path)
                if c.quantized or c.path != src:
                    c.passed, c.reason = goal.judge(c.check)
            c.bytes = onnx_io.total_bytes(c.path)
        timing = time_candidates(ctx, src, candidates, model.inputs)
        chosen, why = choose(candidates, cfg.objective)
        float_bytes = candidates[0].bytes or 0
        rows = [{**c.row(float_bytes), "chosen": c is chosen} for c in candidates]
        metrics.update(
            format="auto", objective=cfg.objective, chosen=chosen.name, candidates=rows, candidate_timing=timing,
            goal={"min_parity_cosine": goal.floor, "floor_source": goal.floor_source,
                  "max_accuracy_drop": goal.max_accuracy_drop, "parity_samples": evaluator.samples,
                  "parity_source": evaluator.source},
            not_candidates=skipped, cpu_isa=cpu_info()["isa"], int8_dot_product=vnni,
            float_nodes=list(chosen.float_nodes),
        )
        if chosen.sensitivity is not None:
            metrics["sensitivity"] = {k: round(v, 6) for k, v in sorted(chosen.sensitivity.items(), key=lambda kv: -kv[1])}
        metrics.update(mode=chosen.settings.get("mode"), per_channel=chosen.settings.get("per_channel", cfg.per_channel),
                       reduce_range=chosen.settings.get("reduce_range", cfg.reduce_range))
        table = "; ".join(
            f"{c.name}: {c.speedup:.2f}x, {float_bytes / c.bytes if c.bytes else 0:.1f}x smaller, "
            f"min cosine {c.check.min_cosine if c.check and c.check.min_cosine is not None else float('nan'):.4f}"
            + ("" if c.passed else f" (rejected: {c.reason})")
            for c in candidates
        )
        notes.append(
            f"format auto ({cfg.objective}): chose {chosen.name} — measured at {ctx.threads} threads, batch "
            f"{timing['batch']}, interleaved against the float input; candidates: {table}"
        )
        notes.extend(why)
        if chosen.float_nodes:
            notes.append(f"layers kept in float by the accuracy-aware fallback: {', '.join(chosen.float_nodes)}")
        if chosen.quantized or chosen.path != src:
            cm, cn = extra_notes.get(chosen.name, ({}, []))
            metrics.update({k: v for k, v in cm.items() if k.startswith("calibration")})
            notes.extend(cn)
            shutil.copyfile(chosen.path, out)
            if chosen.path.with_name(chosen.path.name + ".data").exists():
                shutil.copyfile(chosen.path.with_name(chosen.path.name + ".data"), out.with_name(out.name + ".data"))
            result = out
        else:
            metrics["mode"] = "float"
            result = src
        shutil.rmtree(work, ignore_errors=True)
        return result

    # ------------------------------------------------------------------ weight-only, fusion

    def _weight_only(self, qin: Any, out: Any, large: bool, metrics: dict[str, Any], notes: list[str]) -> None:
        """int4/int8 block-wise MatMul weights with ONNX Runtime's MatMulNBits quantizer."""
        import onnx
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
        from onnxruntime.quantization.onnx_model import ONNXModel

        cfg = self.config
        assert isinstance(cfg, QuantizeConfig)
        if cfg.op_types is not None and not {"MatMul", "Gemm"} & set(cfg.op_types):
            notes.append(f"weight_only quantizes MatMul/Gemm weights; op_types {cfg.op_types} selects none")
        proto = onnx.load(str(qin))
        wrapped = ONNXModel(proto)
        gemms = sum(1 for n in proto.graph.node if n.op_type == "Gemm")
        if gemms and (cfg.op_types is None or "Gemm" in cfg.op_types):
            wrapped.replace_gemm_with_matmul()  # MatMulNBits replaces MatMul only
            metrics["gemm_rewritten_as_matmul"] = gemms
        quantizer = MatMulNBitsQuantizer(
            wrapped.model, bits=cfg.bits, block_size=cfg.block_size, is_symmetric=cfg.symmetric_blocks,
            accuracy_level=cfg.accuracy_level or None, nodes_to_exclude=list(cfg.exclude_nodes),
            op_types_to_quantize=("MatMul",),
        )
        quantizer.process()
        quantizer.model.save_model_to_file(str(out), large)
        if cfg.accuracy_level != 4:
            notes.append(
                "weight_only keeps activations in float: the gain is size (and memory bandwidth); "
                "accuracy_level: 4 lets ONNX Runtime compute with int8 activations, usually faster on CPU"
            )

    def _fuse(self, src: Any, dst: Any, large: bool, metrics: dict[str, Any]) -> Any:
        import io
        from contextlib import redirect_stderr, redirect_stdout

        from onnxruntime.transformers.optimizer import optimize_model

        from optimize.errors import PassError
        from optimize.inspect_onnx import op_counts

        cfg = self.config
        assert isinstance(cfg, QuantizeConfig)
        try:
            with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
                opt = optimize_model(str(src), model_type=cfg.fusion, num_heads=cfg.num_heads,
                                     hidden_size=cfg.hidden_size)
                opt.save_model_to_file(str(dst), use_external_data_format=large)
                stats = opt.get_fused_operator_statistics()
        except Exception as exc:
            raise PassError(self.name, f"ONNX Runtime's transformer fusion ({cfg.fusion}) failed: {_first_line(exc)}") from exc
        before, after = op_counts(src), op_counts(dst)
        metrics["fusion"] = {
            "model_type": cfg.fusion,
            "fused_ops": {k: int(v) for k, v in stats.items() if v},
            "nodes_before": sum(before.values()),
            "nodes_after": sum(after.values()),
        }
        return dst

    def _preprocess(self, src: Any, pre: Any, large: bool, notes: list[str]) -> Any:
        import io
        import logging
        from contextlib import redirect_stderr, redirect_stdout

        from onnxruntime.quantization.shape_inference import quant_pre_process

        quiet = logging.getLogger()
        old_level = quiet.level
        quiet.setLevel(max(old_level, logging.ERROR))
        try:
            with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
                quant_pre_process(
                    str(src), str(pre), save_as_external_data=large, all_tensors_to_one_file=True,
                    external_data_location=pre.name + ".data" if large else None,
                )
            return pre
        except Exception as exc:
            notes.append(
                f"ONNX Runtime's quant_pre_process (shape inference) failed ({_first_line(exc)}); "
                "quantized the model without it"
            )
            pre.unlink(missing_ok=True)
            return src
        finally:
            quiet.setLevel(old_level)
