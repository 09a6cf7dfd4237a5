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
from optimize.frameworks.text_data import tokenizer_beside
from optimize.handle import ModelHandle, TensorSpec, specs_from_config
from optimize.onnx_load import onnx_handle

FACTORY_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
TORCH_SUFFIXES = {".pt", ".pth", ".jit", ".ts", ".torchscript"}


def is_factory(spec: str) -> bool:
    return bool(FACTORY_RE.match(spec)) and not Path(spec).exists()


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
        handle = onnx_handle(path, declared)
        return handle.replace(tokenizer=tokenizer_beside(path, handle.input_names))
    if suffix == ".pt2":
        return _from_pt2(path, declared, outputs, trust_model)
    if suffix in TORCH_SUFFIXES:
        return _from_torch_file(path, declared, outputs, trust_model)
    raise ModelLoadError(f"{spec}: unknown model type '{suffix}' (expected .onnx, .pt/.pth TorchScript, .pt2, or package.module:callable)")


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
