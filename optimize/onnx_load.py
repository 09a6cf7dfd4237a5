"""An `.onnx` file as a model handle, checked first: readable, versions this onnx knows, external
data inside the model's folder and in range, the ONNX checker, inputs this tool can feed.

Apart from the framework loaders (`optimize.loaders`) so converters that produce ONNX
(`optimize.frameworks.tf_convert`) load their output the same way without importing them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from optimize.errors import ModelLoadError
from optimize.handle import ModelHandle, TensorSpec


def onnx_handle(path: Path, declared: list[TensorSpec]) -> ModelHandle:
    import onnx

    from optimize.export import onnx_input_specs
    from optimize.onnx_check import check_onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ModelLoadError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from None
    if not model.graph.node and not model.graph.output:
        raise ModelLoadError(f"{path}: not an ONNX model (empty graph)")
    _check_versions(path, model)
    _check_external_data(path, model)
    try:  # path-based: works for models over 2 GB; catches corruption that still decodes
        check_onnx(path)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ModelLoadError(f"{path}: not a valid ONNX model (ONNX checker: {first})") from None
    _check_inputs(path, model)
    specs = onnx_input_specs(path)
    if declared:  # the config can fill in symbolic dims or value ranges
        from optimize.shapes import check_names

        check_names([d.name for d in declared], specs, f"{path}: model.inputs", ModelLoadError)
        by_name = {d.name: d for d in declared}
        specs = [by_name.get(s.name, s) for s in specs]
    return ModelHandle(
        form="onnx", inputs=specs, outputs=[o.name for o in model.graph.output], onnx_path=path, source=str(path)
    )


def _check_inputs(path: Path, model: Any) -> None:
    """Inputs the tool can feed: at least one; tensors of a numeric or bool type; no zero-size dim.
    Scalars (0-d) are fine. Anything else is refused now (exit 2) naming the input, not later with
    a runtime's message."""
    from onnx import helper

    from optimize.handle import DTYPES

    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if not inputs:
        raise ModelLoadError(f"{path}: the model has no inputs, so there is nothing to feed it for calibration, parity "
                             "or latency (a constant graph: nothing to optimize)")
    for inp in inputs:
        kind = inp.type.WhichOneof("value")
        if kind != "tensor_type":
            raise ModelLoadError(f"{path}: input '{inp.name}' is a {kind or 'untyped value'}, not a tensor; only tensor "
                                 "inputs are supported")
        tt = inp.type.tensor_type
        try:
            dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type).name if tt.elem_type else "float32"
        except (KeyError, TypeError, ValueError):
            dtype = helper.tensor_dtype_to_string(tt.elem_type) if tt.elem_type else "undefined"
        if dtype == "object" or tt.elem_type == 8:  # TensorProto.STRING
            raise ModelLoadError(f"{path}: input '{inp.name}' is a string tensor; only numeric and bool inputs can be "
                                 "fed (preprocess the strings outside the model, e.g. tokenize them)")
        if dtype not in DTYPES:
            raise ModelLoadError(f"{path}: input '{inp.name}' has element type {dtype}, which this tool cannot feed "
                                 f"(supported: {', '.join(DTYPES)})")
        zero = [a for a, d in enumerate(tt.shape.dim) if d.HasField("dim_value") and d.dim_value == 0]
        if zero:
            raise ModelLoadError(f"{path}: input '{inp.name}' has a zero-size dim (axis {zero[0]}): it holds no values, "
                                 "so nothing can be measured on it")


def _check_versions(path: Path, model: Any) -> None:
    """An IR or opset newer than the installed onnx knows is refused with the versions named (the
    checker's own message for it is cryptic, and onnx's checker lets a newer opset through)."""
    import onnx
    import onnx.defs
    from onnx.helper import VERSION_TABLE

    max_ir = onnx.IR_VERSION
    max_opset = {"": onnx.defs.onnx_opset_version(), "ai.onnx": onnx.defs.onnx_opset_version(), "ai.onnx.ml": VERSION_TABLE[-1][3]}
    hint = f"this installation (onnx {onnx.__version__}) reads up to"
    if model.ir_version > max_ir:
        raise ModelLoadError(
            f"{path}: ONNX IR version {model.ir_version} is newer than {hint} IR {max_ir}; upgrade onnx and onnxruntime, "
            "or re-export the model with an older IR version"
        )
    if model.ir_version > 10:  # every onnxruntime this tool supports reads IR 10
        from optimize.runtime import ir_too_new_message, runtime_refuses_ir

        newest = runtime_refuses_ir(int(model.ir_version))
        if newest is not None:
            raise ModelLoadError(f"{path}: {ir_too_new_message(int(model.ir_version), newest)}")
    for op in model.opset_import:
        limit = max_opset.get(op.domain)
        if limit is not None and op.version > limit:
            raise ModelLoadError(
                f"{path}: opset {op.version} of domain '{op.domain or 'ai.onnx'}' is newer than {hint} opset {limit}; "
                "upgrade onnx and onnxruntime, or re-export the model with an older opset"
            )


def _check_external_data(path: Path, model: Any) -> None:
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    root = path.parent.resolve()
    for t in _get_all_tensors(model):
        if not uses_external_data(t):
            continue
        info = ExternalDataInfo(t)
        target = (path.parent / info.location).resolve()
        if root not in target.parents and target != root:
            raise ModelLoadError(f"{path}: external data '{info.location}' points outside the model's folder")
        if not target.is_file():
            raise ModelLoadError(f"{path}: external data file missing: {info.location}")
        end = (info.offset or 0) + (info.length or 0)
        if end > target.stat().st_size:
            raise ModelLoadError(f"{path}: external data for '{t.name}' runs past the end of {info.location}")
