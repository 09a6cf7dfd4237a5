"""Model loaders: ONNX (with external data), TorchScript archives, torch.export programs (.pt2),
and Python factories `package.module:callable` with optional weights (.safetensors, or a
state_dict read with `weights_only=True`).

A pickled whole module can run arbitrary code when loaded, so it is refused unless the user passes
`--trust-model`.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Any

from optimize.errors import ModelLoadError
from optimize.handle import ModelHandle, TensorSpec

FACTORY_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
TORCH_SUFFIXES = {".pt", ".pth", ".jit", ".ts", ".torchscript"}


def is_factory(spec: str) -> bool:
    return bool(FACTORY_RE.match(spec)) and not Path(spec).exists()


def specs_from_config(inputs: Any) -> list[TensorSpec]:
    return [
        TensorSpec(i.name, tuple(i.shape), i.dtype, i.low, i.high) for i in (inputs or [])
    ]


def load_model(
    spec: str, *, model_cfg: Any = None, trust_model: bool = False, base_dir: Path | None = None
) -> ModelHandle:
    """Load MODEL (a path or a factory) into a handle. `model_cfg` is the config's `model:` section."""
    declared = specs_from_config(getattr(model_cfg, "inputs", None))
    outputs = list(getattr(model_cfg, "outputs", None) or [])
    if is_factory(spec):
        weights = getattr(model_cfg, "weights", None)
        module = _from_factory(spec, weights, base_dir or Path.cwd())
        return _torch_handle(module, declared, outputs, source=spec, factory=spec)
    path = Path(spec)
    if not path.exists():
        raise ModelLoadError(f"{spec}: no such file (and not a 'package.module:callable' factory)")
    from optimize import frameworks  # Hugging Face folders, TensorFlow/Keras, MindSpore

    kind = frameworks.detect(path)
    if path.is_dir() and kind is None:
        raise ModelLoadError(f"{spec}: is a folder; {frameworks.folder_hint()}")
    if kind is not None and (path.is_dir() or path.stat().st_size > 0):
        return frameworks.load(kind, path, model_cfg=model_cfg, trust_model=trust_model)
    if path.stat().st_size == 0:
        raise ModelLoadError(f"{spec}: file is empty")
    head = path.read_bytes()[:200]
    if head.startswith(b"version https://git-lfs"):
        raise ModelLoadError(f"{spec}: is a Git LFS pointer, not the model; run 'git lfs pull'")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return _onnx_handle(path, declared)
    if suffix == ".pt2":
        return _from_pt2(path, declared, outputs, trust_model)
    if suffix in TORCH_SUFFIXES:
        return _from_torch_file(path, declared, outputs, trust_model)
    raise ModelLoadError(f"{spec}: unknown model type '{suffix}' (expected .onnx, .pt/.pth TorchScript, .pt2, or package.module:callable)")


def _onnx_handle(path: Path, declared: list[TensorSpec]) -> ModelHandle:
    import onnx

    from optimize.export import onnx_input_specs

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ModelLoadError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from None
    if not model.graph.node and not model.graph.output:
        raise ModelLoadError(f"{path}: not an ONNX model (empty graph)")
    _check_versions(path, model)
    _check_external_data(path, model)
    try:  # path-based: works for models over 2 GB; catches corruption that still decodes
        onnx.checker.check_model(str(path))
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


def _torch_handle(
    module: Any, declared: list[TensorSpec], outputs: list[str], *, source: str, factory: str | None = None,
    example: Any = None,
) -> ModelHandle:
    import torch

    if not isinstance(module, torch.nn.Module):
        raise ModelLoadError(f"{source}: did not give a torch.nn.Module (got {type(module).__name__})")
    specs = declared
    if not specs:
        attr = getattr(module, "input_spec", None)
        if attr:
            specs = [TensorSpec(d["name"], tuple(d["shape"]), d.get("dtype", "float32"), d.get("low"), d.get("high")) for d in attr]
    if not specs and example is not None:
        specs = [
            TensorSpec(f"input_{i}" if len(example) > 1 else "x", ("batch", *t.shape[1:]), str(t.dtype).replace("torch.", ""))
            for i, t in enumerate(example)
        ]
    if not outputs:
        outputs = list(getattr(module, "output_names", []) or [])
    module.eval()
    return ModelHandle(form="torch", inputs=specs, outputs=outputs, module=module, source=source)


def _from_factory(spec: str, weights: str | None, base_dir: Path) -> Any:
    from optimize.imports import call_reference

    module = call_reference(spec, base_dir, ModelLoadError, f"{spec}: factory")
    if weights:
        wpath = Path(weights) if Path(weights).is_absolute() else base_dir / weights
        load_weights(module, wpath)
    return module


def load_weights(module: Any, path: Path) -> None:
    """Load a .safetensors file or a state_dict (`weights_only=True`) into `module`, strictly."""
    import torch

    if not path.is_file():
        raise ModelLoadError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelLoadError(f"{path}: cannot read weights ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    if not isinstance(state, dict):
        raise ModelLoadError(f"{path}: expected a state_dict (a mapping of tensors), got {type(state).__name__}")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        raise ModelLoadError(f"{path}: weights do not match the model: {' '.join(lines[1:3])[:300]}") from None


def _from_pt2(path: Path, declared: list[TensorSpec], outputs: list[str], trust: bool = False) -> ModelHandle:
    import io

    import torch

    source: Any = str(path)
    if not trust:
        # torch.export.load unpickles parts of the archive with weights_only=False and runs
        # AOTInductor shared libraries: check every member first, then load those same bytes
        # (not the path again, so the file cannot change between the check and the load).
        data = path.read_bytes()
        problem = pt2_safety_problem(data)
        if problem:
            raise ModelLoadError(
                f"{path}: {problem}, which can run code when loaded; re-export it with plain tensors, "
                "or pass --trust-model if you trust its source"
            )
        source = io.BytesIO(data)
    try:
        program = torch.export.load(source)
    except Exception as exc:
        raise ModelLoadError(f"{path}: not a readable torch.export program ({type(exc).__name__})") from None
    example = None
    try:
        args = program.example_inputs[0] if program.example_inputs else None
        example = tuple(args) if args else None
    except Exception:
        example = None
    module = program.module()
    # ExportedProgram.module() overrides train()/eval() on the instance to raise
    # NotImplementedError (the graph's mode was fixed at export); the toolchain calls eval()
    # everywhere, so restore nn.Module's flag-only versions.
    for name in ("train", "eval"):
        module.__dict__.pop(name, None)
    return _torch_handle(module, declared, outputs, source=str(path), example=example)


def _from_torch_file(path: Path, declared: list[TensorSpec], outputs: list[str], trust: bool) -> ModelHandle:
    import torch

    if not zipfile.is_zipfile(path):
        if not trust:
            raise ModelLoadError(
                f"{path}: not a TorchScript archive; it looks like a legacy pickle, which can run code when loaded. "
                "Re-save it with torch.jit.save or as a state_dict, or pass --trust-model if you trust its source"
            )
    else:
        try:
            module = torch.jit.load(str(path), map_location="cpu")
            return _torch_handle(module, declared, outputs, source=str(path))
        except Exception:
            pass  # a torch.save zip: not TorchScript
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception:
            obj = None
            if not trust:
                raise ModelLoadError(
                    f"{path}: is a pickled Python object (torch.save of a whole module), which can run code when "
                    "loaded; save it with torch.jit.save, torch.export.save or as a state_dict for a factory, "
                    "or pass --trust-model if you trust its source"
                ) from None
        if isinstance(obj, dict):
            raise ModelLoadError(
                f"{path}: is a state_dict (weights only); give the architecture as 'package.module:callable' "
                f"and set model.weights: {path}"
            )
    try:
        module = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ModelLoadError(f"{path}: cannot load ({type(exc).__name__}: {str(exc)[:200]})") from None
    return _torch_handle(module, declared, outputs, source=str(path))


_PT2_META = {"archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id"}


def pt2_safety_problem(data: bytes) -> str | None:
    """Why loading this torch.export archive could run code, or None when it holds only plain data.

    `torch.export.load` reads JSON (the graph, payload configs), raw tensor bytes, and pickles: the
    sample inputs (weights_only=True, then falling back to weights_only=False), pickled weights and
    constants (weights_only=False), torchbind and opaque objects (plain pickle); and it loads
    AOTInductor shared libraries. So: AOTInductor code and Python-object constants are refused; every
    member that torch would unpickle must unpickle under `weights_only=True` (tensors and primitive
    containers only, no code). No library offers this check, hence hand-written; the member names
    follow torch.export.pt2_archive.constants.
    """
    import io
    import json

    import torch
    from torch.export.pt2_archive import constants as k

    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        names = [n for n in zf.namelist() if not n.endswith("/")]
    except (zipfile.BadZipFile, ValueError, OSError):
        return None  # not a zip: torch.export.load fails on it without unpickling anything
    roots = {n.split("/", 1)[0] for n in names}
    if len(roots) != 1 or any("/" not in n for n in names):
        return "is not a torch.export archive of the current format (a legacy pickled program)"
    root = roots.pop() + "/"
    rel = {n[len(root):]: n for n in names}
    if k.ARCHIVE_FORMAT_PATH not in rel:
        return "is not a torch.export archive of the current format (a legacy pickled program)"
    raw: set[str] = set()
    for name, full in rel.items():
        if name.endswith(".json") and (name.startswith(k.WEIGHTS_DIR) or name.startswith(k.CONSTANTS_DIR)):
            try:
                cfg = json.loads(zf.read(full)).get("config", {})
            except Exception:
                continue  # torch rejects a malformed config before unpickling anything from it
            folder = k.WEIGHTS_DIR if name.startswith(k.WEIGHTS_DIR) else k.CONSTANTS_DIR
            for meta in cfg.values() if isinstance(cfg, dict) else []:
                if isinstance(meta, dict) and meta.get("use_pickle") is False and isinstance(meta.get("path_name"), str):
                    raw.add(folder + meta["path_name"])
    for name, full in sorted(rel.items()):
        if name in _PT2_META or name.endswith(".json") or name.startswith(k.EXTRA_DIR) or name in raw:
            continue
        if name.startswith(k.AOTINDUCTOR_DIR):
            return "contains AOTInductor compiled code (a shared library)"
        base = name.rsplit("/", 1)[-1]
        if name.startswith(k.CONSTANTS_DIR) and base.startswith((k.CUSTOM_OBJ_FILENAME_PREFIX, k.OPAQUE_OBJ_FILENAME_PREFIX)):
            return f"holds a pickled Python object ({name})"
        try:
            torch.load(io.BytesIO(zf.read(full)), map_location="cpu", weights_only=True)
        except Exception:
            return f"holds a pickle that is not plain tensors ({name})"
    return None
