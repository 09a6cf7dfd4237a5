"""ONNX Runtime's integer grid, reproduced on torch tensors.

Written by hand, not taken from `torch.ao.quantization`: the integer weights ONNX Runtime's quantizer
computes from trained float weights must land exactly on the grid the student trained on. That needs
ONNX Runtime's own formula (`onnxruntime.quantization.quant_utils.compute_scale_zp` /
`quantize_nparray`: range widened to include 0, symmetric int8 in [-127, 127] or [-64, 64] with
`reduce_range`, scale computed in float64 and stored as float32, round half to even, clip to the
type's range). torch's observers use other ranges ([-128, 127], eps clamping, float32 scale), so
their grid is off by one step on some weights.
"""

from __future__ import annotations

from typing import Any


def qrange(qtype: str, reduce_range: bool, symmetric: bool) -> tuple[int, int]:
    """ONNX Runtime's `get_qmin_qmax_for_qType` for int8/uint8/int4."""
    if qtype == "int4":
        return (-4, 3) if reduce_range else (-8, 7)
    if reduce_range:
        return (-64, 64) if qtype == "int8" else (0, 127)
    if symmetric and qtype == "int8":
        return (-127, 127)
    return (-128, 127) if qtype == "int8" else (0, 255)


def type_range(qtype: str) -> tuple[int, int]:
    if qtype == "int4":
        return (-8, 7)
    return (-128, 127) if qtype == "int8" else (0, 255)


def scale_zero_point(rmin: Any, rmax: Any, qmin: int, qmax: int, symmetric: bool) -> tuple[Any, Any]:
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
    qmin, qmax = qrange(qtype, scheme["reduce_range"], scheme["symmetric"])
    lo, hi = type_range(qtype)
    wf = w.detach().float()
    if per_channel and wf.dim() > 1:
        flat = wf.reshape(wf.shape[0], -1)
        rmin, rmax = flat.amin(dim=1), flat.amax(dim=1)
        shape = (-1,) + (1,) * (wf.dim() - 1)
    else:
        rmin, rmax = wf.min(), wf.max()
        shape = ()
    scale, zp = scale_zero_point(rmin, rmax, qmin, qmax, scheme["symmetric"])
    scale, zp = scale.reshape(shape), zp.float().reshape(shape)
    q = torch.clamp(torch.round(wf / scale) + zp, lo, hi)
    return ((q - zp) * scale).to(w.dtype)

