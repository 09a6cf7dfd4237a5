"""Helpers shared by the prune pass's torch and ONNX paths: gradual schedules, fine-tuning between
steps, quality per step, MACs, compressed size and the "will sparsity become speed?" warnings.

- Schedules follow Zhu & Gupta (2017): after step k of K the target is `s · k/K` (linear) or
  `s · (1 − (1 − k/K)³)` (cubic: large steps first, while the network still has slack).
- Fine-tuning between steps is in `finetune.py` (the distill package's training loop).
- MACs of torch models come from Torch-Pruning (`count_ops_and_params`); ONNX MACs are counted here
  from inferred shapes (Conv, ConvTranspose, MatMul, Gemm), since no installed library counts them.
- The compressed size is the weights' bytes through zlib (DEFLATE, as in a .zip): zeros from
  unstructured pruning compress, so this is where unstructured sparsity shows its storage benefit.

Heavy imports happen inside the functions.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np


def schedule(target: float, steps: int, kind: str) -> list[float]:
    """Target sparsity after each of `steps` steps (the last equals `target`)."""
    out = []
    for k in range(1, steps + 1):
        f = k / steps
        out.append(target * (f if kind == "linear" else 1.0 - (1.0 - f) ** 3))
    out[-1] = target
    return out


# zlib level 6 runs at ~10 MB/s on float weights here: above this, `compressed_bytes` is not
# measured (null with the reason) rather than adding minutes to a run (tests/integration/test_large_model.py).
COMPRESS_LIMIT_BYTES = 512 << 20


def compressed_bytes(arrays: Iterable[np.ndarray]) -> tuple[int, int]:
    """(raw bytes, zlib level-6 bytes) of the arrays concatenated in order."""
    comp = zlib.compressobj(6)
    raw = 0
    out = 0
    for a in arrays:
        b = np.ascontiguousarray(a).tobytes()
        raw += len(b)
        out += len(comp.compress(b))
    out += len(comp.flush())
    return raw, out


def torch_weight_arrays(module: Any) -> list[np.ndarray]:
    """Every parameter as the forward sees it (masks applied), as numpy, in module order."""
    from passes.prune.torch_common import effective_params

    return [p.detach().float().cpu().numpy() for p in effective_params(module)]


def torch_macs(module: Any, args: tuple[Any, ...] | None) -> int | None:
    """Multiply-accumulates of one forward on `args` (Torch-Pruning's counter); None if it fails."""
    if args is None:
        return None
    import torch
    import torch_pruning as tp

    was_training = module.training
    try:
        module.eval()
        with torch.no_grad():
            macs, _ = tp.utils.count_ops_and_params(module, args)
        return int(macs)
    except Exception:
        return None
    finally:
        module.train(was_training)


def onnx_macs(proto: Any, feeds_shapes: dict[str, tuple[int, ...]]) -> int | None:
    """MACs of Conv/ConvTranspose/MatMul/Gemm in the main graph for concrete input shapes, from
    ONNX shape inference. None when a shape stays unknown."""
    import copy

    import onnx
    from onnx import shape_inference

    m = copy.deepcopy(proto)
    for inp in m.graph.input:
        if inp.name in feeds_shapes:
            dims = inp.type.tensor_type.shape.dim
            for d, v in zip(dims, feeds_shapes[inp.name], strict=False):
                d.ClearField("dim_param")
                d.dim_value = int(v)
    try:
        m = shape_inference.infer_shapes(m, data_prop=True)
    except Exception:
        return None
    shapes: dict[str, list[int] | None] = {}
    for vi in list(m.graph.input) + list(m.graph.value_info) + list(m.graph.output):
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else -1 for d in dims]
    for init in m.graph.initializer:
        shapes[init.name] = list(init.dims)
    for n in m.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    shapes[n.output[0]] = list(a.t.dims)
    total = 0
    for n in m.graph.node:
        if n.op_type not in ("Conv", "ConvTranspose", "MatMul", "Gemm"):
            continue
        out = shapes.get(n.output[0])
        w = shapes.get(n.input[1])
        a = shapes.get(n.input[0])
        if out is None or w is None or a is None or -1 in out or -1 in w or -1 in a:
            return None
        if n.op_type == "Conv":  # out (N, Co, *spatial); w (Co, Ci/g, *k)
            total += int(np.prod(out)) * int(np.prod(w[1:]))
        elif n.op_type == "ConvTranspose":  # in (N, Ci, *spatial); w (Ci, Co/g, *k)
            total += int(np.prod(a)) * int(np.prod(w[1:]))
        elif n.op_type == "MatMul":
            k = a[-1]
            total += int(np.prod(out)) * int(k)
        else:
            trans_a = next((x.i for x in n.attribute if x.name == "transA"), 0)
            k = a[0] if trans_a else a[-1]
            total += int(np.prod(out)) * int(k)
    del onnx
    return total


def speed_warnings(method: str, device: str, structured_removed: bool) -> list[str]:
    """Notes saying when the sparsity made here cannot become speed on the selected hardware."""
    notes = []
    if method == "magnitude":
        notes.append(
            "unstructured zeros do not make dense runtimes (ONNX Runtime on CPU or GPU) faster: they "
            "shrink the compressed file (see compressed_bytes), not the latency; use method: structured "
            "to remove work"
        )
    elif method == "nm":
        if device.startswith("cuda"):
            cap = _cuda_capability()
            if cap is not None and cap < (8, 0):
                notes.append(
                    f"N:M (2:4) sparsity needs sparse tensor cores (compute capability 8.0+); this GPU is "
                    f"{cap[0]}.{cap[1]}: no speedup"
                )
            notes.append(
                "the exported ONNX stays dense: ONNX Runtime does not run 2:4 sparse kernels; only torch with "
                "torch.sparse.to_sparse_semi_structured on the GPU turns 2:4 into speed (see nm_gpu)"
            )
        else:
            notes.append(
                "N:M (2:4) sparsity is only faster with sparse tensor-core kernels on a GPU "
                f"(torch.sparse.to_sparse_semi_structured); on {device} the model runs dense: no speedup"
            )
    elif method == "structured" and not structured_removed:
        notes.append("structured pruning removed no channel: expect no speedup")
    return notes


def _cuda_capability() -> tuple[int, int] | None:
    try:
        import torch

        return tuple(torch.cuda.get_device_capability())  # type: ignore[return-value]
    except Exception:
        return None


# ---------------------------------------------------------------- quality per step


def eval_inputs(ctx: Any, specs: list[Any], n: int = 256) -> tuple[Any, str]:
    """(Dataset, description) for measuring quality per step: data.eval when declared, else
    random inputs from the input spec (no labels)."""
    ds = ctx.data("eval") if hasattr(ctx, "data") else None
    if ds is not None:
        return ds.take(n), "data.eval"
    from optimize.data import random_dataset

    return random_dataset(specs, min(n, 64), getattr(ctx, "seed", 0)), "random inputs from the input spec"


@contextlib.contextmanager
def on_run_device(module: Any, ctx: Any) -> Iterator[str]:
    """Score, choose and cut where the run trains (--device cuda): the input module (also the
    distill pass's teacher) is moved there for the pass (every scoring helper follows the module's
    device) and back where it was after, also on failure. Yields the device's name.

    Under torchrun with several processes the pass stays where the module is: each rank prunes its
    own copy, and DistributedDataParallel needs every rank to cut the same channels, which CPU
    kernels guarantee and GPU reductions (ties broken by rounding) need not."""
    import torch

    from optimize.errors import PassError

    home = next((p.device for p in module.parameters()), None)
    want = str(getattr(ctx, "device", "cpu") or "cpu")
    dist = torch.distributed
    several = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if home is None or not want.startswith("cuda") or several:
        yield str(home or "cpu")
        return
    try:
        try:
            module.to(want)
        except torch.cuda.OutOfMemoryError:
            raise PassError("prune", f"the model does not fit on {want} for scoring; run with --device cpu") from None
        yield str(next(p.device for p in module.parameters()))
    finally:
        module.to(home)


def torch_outputs(module: Any, ds: Any, names: list[str], batch: int = 64) -> list[np.ndarray]:
    """The first tensor output of `module` over the dataset, batched, as numpy."""
    import torch

    from passes.prune.torch_common import tensor_leaves

    dev = next((p.device for p in module.parameters()), torch.device("cpu"))
    was_training = module.training
    module.eval()
    outs = []
    try:
        with torch.no_grad():
            keys = names if names and all(k in ds.inputs for k in names) else list(ds.inputs)
            for start in range(0, len(ds), batch):
                xs = [torch.from_numpy(np.ascontiguousarray(ds.inputs[k][start : start + batch])).to(dev) for k in keys]
                outs.append(tensor_leaves(module(*xs))[0].float().cpu().numpy())
    finally:
        module.train(was_training)
    return [np.concatenate(outs, axis=0)]


def quality(module: Any, ds: Any, names: list[str], reference: list[np.ndarray] | None) -> dict[str, Any]:
    """Top-1 accuracy (labelled eval data, 2-D outputs) and output cosine against `reference`."""
    from optimize.runtime import parity

    out = torch_outputs(module, ds, names)
    q: dict[str, Any] = {"accuracy": None}
    if ds.labels is not None and ds.labels.ndim == 1 and out[0].ndim == 2:
        q["accuracy"] = round(100.0 * float((out[0].argmax(-1) == ds.labels).mean()), 4)
    if reference is not None:
        p = parity(reference, out)
        q["min_cosine"] = None if p["min_cosine"] is None else round(p["min_cosine"], 6)
        q["mean_cosine"] = None if p["mean_cosine"] is None else round(p["mean_cosine"], 6)
    return q


def onnx_weight_arrays(path: Any) -> Iterator[np.ndarray]:
    """The weights of weighted ops in an ONNX file (each stored tensor once), as numpy, one at a
    time: external data is read tensor by tensor, so a model over 2 GB is never held whole."""
    from pathlib import Path

    from optimize import onnx_io
    from optimize.inspect_onnx import iter_weight_uses

    proto = onnx_io.load(path, load_external_data=False)
    seen: set[str] = set()
    for u in iter_weight_uses(proto):
        if u.key not in seen:
            seen.add(u.key)
            yield onnx_io.tensor_array(u.tensor, Path(path).parent)


def onnx_weight_bytes(path: Any) -> int:
    """Stored bytes of the weights of weighted ops (from the tensors' shapes and types; no data read)."""
    from onnx import helper

    from optimize import onnx_io
    from optimize.inspect_onnx import iter_weight_uses

    seen: set[str] = set()
    total = 0
    for u in iter_weight_uses(onnx_io.load(path, load_external_data=False)):
        if u.key not in seen:
            seen.add(u.key)
            try:
                size = np.dtype(helper.tensor_dtype_to_np_dtype(u.tensor.data_type)).itemsize
            except Exception:
                size = 4
            total += int(np.prod(u.tensor.dims, dtype=np.int64)) * size
    return total


def layer_ratio(name_variants: list[str], overrides: dict[str, float], default: float) -> float:
    """The sparsity for a layer: the first `layer_sparsity` glob that matches one of its names."""
    import fnmatch

    for pattern, ratio in overrides.items():
        if any(fnmatch.fnmatchcase(n, pattern) for n in name_variants):
            return ratio
    return default


def world() -> int:
    """Processes training together, as the probes' distillation sees them (passes/distill/devices.py)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if world() > 1 else 0


def rank0(value: Any) -> Any:
    """Rank 0's value on every rank under torchrun (the value itself in one process): each rank
    prunes its own copy and DistributedDataParallel needs them alike, while clocks (a search's
    budget, a shape's timing) are read on each rank."""
    if world() == 1:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
