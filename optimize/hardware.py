"""The hardware and software the numbers were measured on: CPU model and the instruction sets that
decide int8 speed (AVX2, AVX-512, VNNI, AMX), GPU, and library versions. Read, never assumed.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path
from typing import Any

ISA_FLAGS = {
    "avx2": "AVX2",
    "fma": "FMA",
    "avx512f": "AVX-512",
    "avx512_vnni": "AVX512-VNNI",
    "avx_vnni": "AVX-VNNI",
    "avx512_bf16": "AVX512-BF16",
    "amx_int8": "AMX-INT8",
    "amx_bf16": "AMX-BF16",
    "asimddp": "ARM-DOTPROD",
    "i8mm": "ARM-I8MM",
}


@functools.cache
def cpu_info() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    flags: set[str] = set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and value.strip():
                model = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = set(value.split())
    isa = [label for flag, label in ISA_FLAGS.items() if flag in flags]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return {"cpu": model, "cores": cores, "isa": isa, "arch": platform.machine()}


def has_int8_dot_product() -> bool:
    """True when the CPU has VNNI/AMX (or Arm dot-product): int8 matmuls can beat fp32 by > 1.33x."""
    isa = set(cpu_info()["isa"])
    return bool(isa & {"AVX512-VNNI", "AVX-VNNI", "AMX-INT8", "ARM-DOTPROD", "ARM-I8MM"})


def gpu_info() -> dict[str, Any] | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return {"name": props.name, "memory_gb": round(props.total_memory / 1e9, 1), "count": torch.cuda.device_count()}


def ort_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def describe() -> dict[str, Any]:
    info = dict(cpu_info())
    gpu = gpu_info()
    info["gpu"] = gpu["name"] if gpu else None
    info["gpu_detail"] = gpu
    info["onnxruntime_providers"] = ort_providers()
    return info


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("torch", "onnx", "onnxruntime", "onnxscript", "onnx-ir", "torch-pruning", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out
