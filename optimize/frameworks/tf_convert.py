"""TensorFlow / Keras models → ONNX with tf2onnx, then the ONNX passes.

A SavedModel folder is converted with `python -m tf2onnx.convert --saved-model DIR --output
X.onnx --opset N` in a subprocess (tf2onnx's documented command line; its Python `from_keras`
fails on Keras 3 models). A `.keras` Keras file is first exported to a SavedModel by a
small script run in the same Python (`model.export(dir)` on Keras 3, `tf.saved_model.save` on
tf-keras), then converted the same way. The converter, its version and TensorFlow's version are
recorded as the ONNX model's exporter, so the report names them.

TensorFlow is large and pins its own protobuf/numpy ranges, so the converting Python may be a
different one from optimize's: set `OPTIMIZE_TF_PYTHON=/path/to/python` (a Python with
tensorflow and tf2onnx installed). By default it is this Python, which then needs the
`[tensorflow]` extra.

The converted file lives in a temporary folder removed when the process exits.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from optimize.errors import ModelLoadError

PYTHON_ENV = "OPTIMIZE_TF_PYTHON"
EXTRA_HINT = "pip install 'optimize[tensorflow]' (or set OPTIMIZE_TF_PYTHON to a Python with tensorflow and tf2onnx)"

# Runs in the converting Python: versions, and (for a Keras file) the export to a SavedModel.
_WORKER = r"""
import json, sys, os
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
mode = sys.argv[1]
out = {}
try:
    import tensorflow as tf
    import tf2onnx
except ImportError as exc:
    print(json.dumps({"missing": str(exc)})); sys.exit(0)
out["tensorflow"] = tf.__version__
out["tf2onnx"] = tf2onnx.__version__
if mode == "keras":
    src, dst = sys.argv[2], sys.argv[3]
    try:
        import keras
        model = keras.models.load_model(src, compile=False)
        if hasattr(model, "export"):
            model.export(dst)
        else:
            tf.saved_model.save(model, dst)
        out["keras"] = getattr(keras, "__version__", "")
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"
print(json.dumps(out))
"""


def converter_python() -> str:
    return os.environ.get(PYTHON_ENV) or sys.executable


def _run(cmd: list[str], what: str, path: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES=os.environ.get("CUDA_VISIBLE_DEVICES", ""))
    try:
        return subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot start {what} ({exc})") from None


def _last_error(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "Error" in ln or "error" in ln:
            return ln[:300]
    return lines[-1][:300] if lines else "no output"


def _worker(python: str, args: list[str], path: Path) -> dict[str, Any]:
    proc = _run([python, "-c", _WORKER, *args], "the TensorFlow converter", path)
    line = next((ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith("{")), None)
    if proc.returncode != 0 or line is None:
        raise ModelLoadError(f"{path}: TensorFlow failed ({_last_error(proc.stderr or proc.stdout)})")
    info = json.loads(line)
    if "missing" in info:
        raise ModelLoadError(f"{path}: converting TensorFlow/Keras models needs the [tensorflow] extra: {EXTRA_HINT}")
    return info


def _check_installed(path: Path, python: str) -> None:
    from optimize.frameworks.common import has_module

    if python == sys.executable and not (has_module("tensorflow") and has_module("tf2onnx")):
        raise ModelLoadError(f"{path}: converting TensorFlow/Keras models needs the [tensorflow] extra: {EXTRA_HINT}")
    if python != sys.executable and not Path(python).exists():
        raise ModelLoadError(f"{path}: {PYTHON_ENV}={python}: no such Python")


def convert(path: Path, kind: str, out_dir: Path, opset: int = 17) -> tuple[Path, str]:
    """Convert a SavedModel folder or Keras file to `out_dir/model.onnx`. Returns (path, the
    converter as text: 'tf2onnx 1.17.0 (tensorflow 2.21.0)')."""
    python = converter_python()
    _check_installed(path, python)
    saved = path
    if kind == "keras":
        saved = out_dir / "saved_model"
        info = _worker(python, ["keras", str(path), str(saved)], path)
        if "error" in info:
            raise ModelLoadError(f"{path}: Keras could not load it or export a SavedModel ({info['error']})")
    else:
        info = _worker(python, ["versions"], path)
    target = out_dir / "model.onnx"
    cmd = [python, "-m", "tf2onnx.convert", "--saved-model", str(saved), "--output", str(target), "--opset", str(opset)]
    proc = _run(cmd, "tf2onnx", path)
    if proc.returncode != 0 or not target.is_file():
        raise ModelLoadError(f"{path}: tf2onnx could not convert it ({_last_error(proc.stderr or proc.stdout)})")
    converter = f"tf2onnx {info.get('tf2onnx', '?')} (tensorflow {info.get('tensorflow', '?')}"
    converter += f", keras {info['keras']})" if info.get("keras") else ")"
    return target, converter


def load_tensorflow(path: Path, kind: str, model_cfg: Any = None) -> Any:
    """Convert, then load the ONNX file like any other (config `model.inputs` may fill in dims)."""
    from optimize.handle import specs_from_config
    from optimize.onnx_load import onnx_handle

    out_dir = Path(tempfile.mkdtemp(prefix="optimize-tf2onnx-"))
    atexit.register(shutil.rmtree, out_dir, True)
    target, converter = convert(path, kind, out_dir)
    handle = onnx_handle(target, specs_from_config(getattr(model_cfg, "inputs", None)))
    import onnx

    opset = next((o.version for o in onnx.load(str(target), load_external_data=False).opset_import if o.domain in ("", "ai.onnx")), None)
    import logging

    logging.getLogger("optimize").info("%s: converted to ONNX by %s", path, converter)
    return handle.replace(source=str(path), exporter=converter, opset=opset)


__all__ = ["convert", "load_tensorflow", "converter_python", "PYTHON_ENV"]
