"""TensorFlow / Keras (extra `[tensorflow]`): a Keras model saved as a SavedModel and as a .keras
file runs end to end through tf2onnx and the ONNX passes; the report names the converter.

Needs tensorflow + tf2onnx in this Python or in the Python named by OPTIMIZE_TF_PYTHON (TensorFlow
pins its own protobuf/numpy, so it may live in its own environment); skipped otherwise. Slow
(TensorFlow starts in a few seconds per call)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from optimize.frameworks import tf_convert

pytestmark = pytest.mark.slow

BUILD = r"""
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import keras, numpy as np
keras.utils.set_random_seed(0)
m = keras.Sequential([keras.Input((16,)), keras.layers.Dense(64, activation="relu"),
                      keras.layers.Dense(64, activation="relu"), keras.layers.Dense(4)])
out = sys.argv[1]
m.save(os.path.join(out, "mlp.keras"))
m.export(os.path.join(out, "mlp_saved"))
x = np.random.default_rng(0).standard_normal((5, 16)).astype("float32")
np.save(os.path.join(out, "x.npy"), x)
np.save(os.path.join(out, "y.npy"), m.predict(x, verbose=0))
"""


@pytest.fixture(scope="module")
def keras_models(tmp_path_factory) -> Path:
    python = tf_convert.converter_python()
    probe = subprocess.run([python, "-c", "import tensorflow, tf2onnx, keras"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("tensorflow/tf2onnx not installed here (pip install 'optimize[tensorflow]', or set OPTIMIZE_TF_PYTHON)")
    d = tmp_path_factory.mktemp("tf")
    subprocess.run([python, "-c", BUILD, str(d)], check=True, capture_output=True, text=True, timeout=300)
    return d


PIPELINE = "schema_version: 1\npasses:\n  - type: prune\n    sparsity: 0.5\n  - type: quantize\n    mode: dynamic\n" \
    "measure: {repeat: 5, warmup: 1, single_thread: false}\n"


@pytest.mark.parametrize("name", ["mlp_saved", "mlp.keras"])
def test_keras_model_runs_end_to_end(keras_models, tmp_path, name):
    import onnxruntime as ort

    from optimize import pipeline
    from optimize.api import RunOptions
    from optimize.loaders import load_model

    # the conversion itself is faithful: the converted ONNX gives Keras's outputs
    handle = load_model(str(keras_models / name))
    assert handle.form == "onnx" and handle.exporter.startswith("tf2onnx ")
    x, y = np.load(keras_models / "x.npy"), np.load(keras_models / "y.npy")
    sess = ort.InferenceSession(str(handle.onnx_path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {sess.get_inputs()[0].name: x})[0], y, rtol=1e-4, atol=1e-5)

    (tmp_path / "p.yaml").write_text(PIPELINE)
    out = tmp_path / "out.onnx"
    report = pipeline.run(RunOptions(model=str(keras_models / name), config=str(tmp_path / "p.yaml"), output=str(out)))
    assert out.is_file()
    saved = json.loads(Path(report.files["report"]).read_text())
    assert saved["input"]["exporter"].startswith("tf2onnx ") and "tensorflow " in saved["input"]["exporter"]
    assert report.metrics["sparsity"].value > 0.4 and report.metrics["quantization_ratio"].value == pytest.approx(0.25)
