"""Models from other frameworks: Hugging Face folders, TensorFlow / Keras, MindSpore.

`detect(path)` says which framework a path belongs to (or None for the formats the core loaders
read); `load(...)` turns it into a `ModelHandle`:

- a Hugging Face folder (config.json + weights + tokenizer files, or a sentence-transformers
  folder) → a torch handle through `optimize.frameworks.hf` (extra `[hf]`);
- a TensorFlow SavedModel folder or a `.keras` Keras file → ONNX through tf2onnx
  (`optimize.frameworks.tf_convert`, extra `[tensorflow]`);
- a MindSpore `.mindir` / `.ckpt` → a one-line `ModelLoadError` saying how to export ONNX from
  MindSpore, whose own exporter is the bridge.

Nothing here imports torch, transformers or tensorflow at import time.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from optimize.errors import ModelLoadError

HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
HF_OTHER_WEIGHTS = ("tf_model.h5", "flax_model.msgpack")
MINDSPORE_SUFFIXES = (".mindir", ".ckpt")
KERAS_SUFFIXES = (".keras",)

MINDSPORE_EXPORT = (
    "export ONNX from MindSpore with mindspore.export(net, input, file_name='model', file_format='ONNX') "
    "(net: the network with its weights, input: a Tensor of the input's shape), then run: "
    "optimize run model.onnx -c PIPELINE.yaml"
)


def has_module(name: str) -> bool:
    """Whether `name` can be imported here (without importing it)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def detect(path: Path) -> str | None:
    """'hf', 'savedmodel', 'keras' or 'mindspore'; None when the core loaders handle the path."""
    if path.is_dir():
        if (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file():
            return "savedmodel"
        if (path / "config.json").is_file() or (path / "modules.json").is_file():
            return "hf"
        return None
    suffix = path.suffix.lower()
    if suffix in MINDSPORE_SUFFIXES:
        return "mindspore"
    if suffix in KERAS_SUFFIXES:
        return "keras"
    return None


def folder_hint() -> str:
    """What a model folder must hold, for the error about a folder that is none of these."""
    return (
        "expected a model file (.onnx, .pt, .pt2, .keras), a Hugging Face model folder (config.json + "
        "model.safetensors + tokenizer files) or a TensorFlow SavedModel folder (saved_model.pb)"
    )


def load(kind: str, path: Path, *, model_cfg: Any = None, trust_model: bool = False) -> Any:
    """Load `path` of framework `kind` (from `detect`) into a ModelHandle."""
    if kind == "mindspore":
        if path.suffix.lower() == ".ckpt":
            what = "a MindSpore checkpoint (weights only)"
            how = f"load it into its network (mindspore.load_checkpoint('{path.name}', net)), then {MINDSPORE_EXPORT}"
            how += (" (a PyTorch Lightning .ckpt instead: save the module with torch.jit.save, or its state_dict "
                    "for a package.module:callable factory)")
        else:
            what = "a MindSpore MindIR file"
            how = f"from the network that produced it, {MINDSPORE_EXPORT}"
        raise ModelLoadError(f"{path}: is {what}, which optimize does not read; {how}")
    if kind == "hf":
        from optimize.frameworks.hf import load_hf_folder

        return load_hf_folder(path, model_cfg, trust_model=trust_model)
    if kind in ("savedmodel", "keras"):
        from optimize.frameworks.tf_convert import load_tensorflow

        return load_tensorflow(path, kind, model_cfg)
    raise ModelLoadError(f"{path}: unknown framework '{kind}'")


__all__ = ["detect", "load", "has_module", "folder_hint", "MINDSPORE_EXPORT"]
