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

from pathlib import Path
from typing import Any

from optimize.errors import ModelLoadError
from optimize.frameworks.common import (
    HF_OTHER_WEIGHTS,
    HF_WEIGHTS,
    KERAS_SUFFIXES,
    MINDSPORE_EXPORT,
    MINDSPORE_SUFFIXES,
    detect,
    folder_hint,
    has_module,
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


__all__ = [
    "detect", "load", "has_module", "folder_hint", "MINDSPORE_EXPORT", "HF_WEIGHTS", "HF_OTHER_WEIGHTS",
    "KERAS_SUFFIXES", "MINDSPORE_SUFFIXES",
]
