"""What the framework loaders share, light at import time: which framework a path belongs to,
whether an optional package is installed, and quiet offline transformers."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
HF_OTHER_WEIGHTS = ("tf_model.h5", "flax_model.msgpack")
# any of these in a folder: it holds a tokenizer (a Hugging Face folder, or beside an exported ONNX file)
TOKENIZER_MARKERS = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "merges.txt",
                     "special_tokens_map.json", "sentencepiece.bpe.model", "spiece.model", "added_tokens.json")
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


def quiet_transformers() -> None:
    """Offline and quiet: no hub access, no progress bars, errors only."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:  # an old or partial transformers: only cosmetics are lost
        pass
