"""torch → ONNX export. The exporter and opset used are recorded on the handle for the report.

`export_to_onnx(exporter="auto")` tries torch's dynamo-based exporter first and falls back to the
TorchScript exporter; when both fail, the error names both reasons instead of a bare traceback.
(The export pass's `auto` builds several exports of a transformer and keeps the fastest:
optimize/export_candidates.py.)
"""

from __future__ import annotations

import copy
import io
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Any

from optimize.handle import DTYPES, ModelHandle

log = logging.getLogger("optimize")


class ExportError(Exception):
    pass


@contextmanager
def _quiet_torch_onnx() -> Iterator[None]:
    """The exporter logs warnings about optional packages (torchvision ops) on every call; they
    say nothing about the user's model, so they are silenced for the export's duration."""
    logger = logging.getLogger("torch.onnx")
    old = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(old)


def example_inputs(handle: ModelHandle, batch: int = 2, seed: int = 0) -> tuple[Any, ...]:
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    return tuple(torch.from_numpy(spec.random(batch, rng)) for spec in handle.inputs)


def copy_module(module: Any) -> Any:
    """`copy.deepcopy` that is safe for parametrized modules.

    torch gives each parametrized module a generated class (`ParametrizedLinear`) holding one
    property per parametrized tensor, and deepcopy shares that class between original and copy:
    removing (or adding) a parametrization on the copy deletes (or adds) the property on the
    original too (`'ParametrizedLinear' object has no attribute 'weight'`). Here every parametrized
    submodule of the copy gets its own copy of the generated class.
    """
    from torch.nn.utils import parametrize

    m = copy.deepcopy(module)
    for sub in m.modules():
        if parametrize.is_parametrized(sub):
            cls = type(sub)
            body = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
            sub.__class__ = type(cls.__name__, cls.__bases__, body)
    return m


def finalized_module(module: Any) -> Any:
    """A deep copy with training-time reparametrizations (pruning masks, fake quantization) baked
    into plain weights, in eval mode: what export and inference should see."""
    from torch.nn.utils import parametrize

    m = copy_module(module)
    for sub in m.modules():
        if parametrize.is_parametrized(sub):
            for name in list(sub.parametrizations.keys()):
                parametrize.remove_parametrizations(sub, name, leave_parametrized=True)
        # forward hooks that simulate activation quantization are training-only
        for hook_dict in (sub._forward_pre_hooks, sub._forward_hooks):
            for key in [k for k, h in hook_dict.items() if getattr(h, "training_only", False)]:
                del hook_dict[key]
    m.eval()
    return m


def _dynamic_batch(handle: ModelHandle) -> tuple[dict[str, dict[int, str]], tuple[Any, ...]]:
    import torch

    axes: dict[str, dict[int, str]] = {}
    shapes = []
    batch = torch.export.Dim("batch", min=1, max=65536)
    for spec in handle.inputs:
        axes[spec.name] = {0: "batch"}
        dims: dict[int, Any] = {0: batch}
        for i, d in enumerate(spec.shape[1:], start=1):
            if isinstance(d, str):
                axes[spec.name][i] = d
                dims[i] = torch.export.Dim(f"{spec.name}_{d}".replace(".", "_"), min=1, max=65536)
        shapes.append(dims)
    for name in handle.outputs:
        axes[name] = {0: "batch"}
    return axes, tuple(shapes)


def set_attention(module: Any, implementation: str) -> bool:
    """Switch the attention of every transformers model inside `module` (eager, sdpa, ...); False
    when there is none. Eager attention exports as plain MatMul/Softmax that ONNX Runtime's
    transformer fusion recognizes; SDPA exports with extra shape arithmetic around it."""
    found = False
    for sub in module.modules():
        if callable(getattr(sub, "set_attn_implementation", None)):  # transformers' PreTrainedModel
            sub.set_attn_implementation(implementation)
            found = True
    return found


def export_to_onnx(handle: ModelHandle, path: Path, opset: int = 18, exporter: str = "auto",
                   attention: str | None = None) -> ModelHandle:
    """Export `handle` (torch form) to `path`; return the ONNX handle. `exporter: auto` here is the
    first exporter that works (dynamo, then TorchScript); the export pass measures instead
    (optimize.export_candidates). `attention` switches a transformers model's attention
    implementation for the export (the handle's own module is not changed)."""
    import torch

    if not handle.inputs:
        raise ExportError("the model's inputs are unknown: declare model.inputs (name, shape, dtype)")
    module = finalized_module(handle.module)
    if attention is not None:
        try:
            set_attention(module, attention)
        except Exception as exc:  # transformers refuses implementations a model does not support
            raise ExportError(f"attention {attention}: {(str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]}") from None
    args = example_inputs(handle, batch=2)
    outputs = handle.outputs or None
    axes, shapes = _dynamic_batch(handle)
    tried: list[str] = []
    order = ["dynamo", "torchscript"] if exporter == "auto" else [exporter]
    path.parent.mkdir(parents=True, exist_ok=True)
    for which in order:
        try:
            with warnings.catch_warnings(), redirect_stdout(io.StringIO()), torch.no_grad(), _quiet_torch_onnx():
                warnings.simplefilter("ignore")
                if which == "dynamo":
                    torch.onnx.export(
                        module, args, str(path), input_names=handle.input_names, output_names=outputs,
                        dynamic_shapes=shapes, opset_version=opset, dynamo=True, external_data=False,
                        verbose=False,
                    )
                else:
                    torch.onnx.export(
                        module, args, str(path), input_names=handle.input_names, output_names=outputs,
                        dynamic_axes=axes, opset_version=min(opset, 20), dynamo=False,
                    )
        except Exception as exc:  # exporters raise many types; keep the first line of each
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            tried.append(f"{which}: {first[:300]}")
            log.debug("export with %s failed", which, exc_info=True)
            continue
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        names = [o.name for o in model.graph.output]
        real_opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), opset)
        return handle.replace(
            form="onnx", module=None, onnx_path=path, outputs=names, exporter=f"torch.onnx ({which})", opset=real_opset
        )
    raise ExportError("torch → ONNX export failed; " + " | ".join(tried))


def onnx_input_specs(path: Path) -> list[Any]:
    """Input specs read from an ONNX file (initializers that shadow inputs are not inputs)."""
    import onnx
    from onnx import helper

    from optimize.handle import TensorSpec, batch_axes

    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    found: dict[str, tuple[str, tuple[int | str, ...]]] = {}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        tt = inp.type.tensor_type
        dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type).name if tt.elem_type else "float32"
        dims = tuple(int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or "?")
                     for d in tt.shape.dim)
        found[inp.name] = (dtype if dtype in DTYPES else "float32", dims)
    axes = batch_axes({name: dims for name, (_, dims) in found.items()})
    specs = []
    for name, (dtype, dims) in found.items():
        k = axes.get(name, 0)
        specs.append(TensorSpec(name, dims, dtype, batch_fixed=bool(dims) and isinstance(dims[k], int), batch_axis=k))
    return specs
