"""Framework reach without the optional extras: detection of Hugging Face folders, SavedModels,
Keras and MindSpore files, and the one-line errors (exit 2) that say what to install or do;
text data errors; the embedding cosine. Runs in the default install (no transformers, no
TensorFlow needed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT

from optimize import frameworks
from optimize.config import load_config_text
from optimize.data import load_dataset
from optimize.errors import DataError, ModelLoadError
from optimize.frameworks.embedding import embedding_cosines
from optimize.frameworks.text_data import TokenizerInfo, _read_texts
from optimize.loaders import load_model

PIPELINE = "schema_version: 1\npasses:\n  - type: quantize\n    mode: dynamic\n"


def hf_folder(tmp_path: Path) -> Path:
    d = tmp_path / "bert"
    d.mkdir()
    (d / "config.json").write_text('{"model_type": "bert", "architectures": ["BertModel"]}')
    (d / "model.safetensors").write_bytes(b"\0" * 16)
    (d / "tokenizer.json").write_text("{}")
    return d


def test_detect_each_framework(tmp_path):
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "saved_model.pb").write_bytes(b"x")
    empty = tmp_path / "empty"
    empty.mkdir()
    for name in ("m.keras", "m.h5", "m.mindir", "m.ckpt", "m.onnx", "m.pt"):
        (tmp_path / name).write_bytes(b"x")
    assert frameworks.detect(hf_folder(tmp_path)) == "hf"
    assert frameworks.detect(saved) == "savedmodel"
    assert frameworks.detect(tmp_path / "m.keras") == "keras"
    assert frameworks.detect(tmp_path / "m.h5") is None  # ambiguous HDF5: left to the core loaders
    assert frameworks.detect(tmp_path / "m.mindir") == "mindspore"
    assert frameworks.detect(tmp_path / "m.ckpt") == "mindspore"
    assert frameworks.detect(tmp_path / "m.onnx") is None
    assert frameworks.detect(tmp_path / "m.pt") is None
    assert frameworks.detect(empty) is None


@pytest.mark.parametrize("suffix", [".mindir", ".ckpt"])
def test_mindspore_file_says_how_to_export_onnx(tmp_path, suffix):
    f = tmp_path / f"net{suffix}"
    f.write_bytes(b"\x08\x01mindspore")
    with pytest.raises(ModelLoadError) as info:
        load_model(str(f))
    msg = str(info.value)
    assert "\n" not in msg
    assert "mindspore.export(net, input, file_name='model', file_format='ONNX')" in msg
    assert "optimize run model.onnx" in msg
    if suffix == ".ckpt":
        assert "mindspore.load_checkpoint('net.ckpt', net)" in msg


def test_hf_folder_without_transformers_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setattr(frameworks.common, "has_module", lambda name: False)
    with pytest.raises(ModelLoadError, match=r"pip install 'optimize\[hf\]'") as info:
        load_model(str(hf_folder(tmp_path)))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("kind", ["savedmodel", "keras"])
def test_tensorflow_without_the_extra_names_it(tmp_path, monkeypatch, kind):
    monkeypatch.setattr(frameworks.common, "has_module", lambda name: False)
    monkeypatch.delenv("OPTIMIZE_TF_PYTHON", raising=False)
    if kind == "keras":
        path = tmp_path / "m.keras"
        path.write_bytes(b"PK\x03\x04")
    else:
        path = tmp_path / "saved"
        path.mkdir()
        (path / "saved_model.pb").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match=r"pip install 'optimize\[tensorflow\]'"):
        load_model(str(path))


def test_tf_python_that_does_not_exist_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("OPTIMIZE_TF_PYTHON", str(tmp_path / "no-python"))
    path = tmp_path / "m.keras"
    path.write_bytes(b"PK\x03\x04")
    with pytest.raises(ModelLoadError, match="OPTIMIZE_TF_PYTHON=.*no such Python"):
        load_model(str(path))


def test_tf_python_without_tensorflow_names_the_extra(tmp_path, monkeypatch):
    """A converting Python that lacks tensorflow (here: this one, unless it has it) → the extra."""
    if frameworks.has_module("tensorflow") and frameworks.has_module("tf2onnx"):
        pytest.skip("tensorflow is installed here")
    monkeypatch.setenv("OPTIMIZE_TF_PYTHON", sys.executable)  # taken as 'another' Python: checked by the worker
    monkeypatch.setattr(sys, "executable", sys.executable + "-not-this-one")
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "saved_model.pb").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match=r"optimize\[tensorflow\]"):
        load_model(str(saved))


def test_a_folder_of_nothing_known_says_what_a_model_folder_holds(tmp_path):
    (tmp_path / "stuff").mkdir()
    with pytest.raises(ModelLoadError, match="Hugging Face model folder .* SavedModel folder"):
        load_model(str(tmp_path / "stuff"))


def test_cli_exit_2_and_one_line_for_mindspore(tmp_path):
    f = tmp_path / "net.mindir"
    f.write_bytes(b"\x08\x01")
    cfg = tmp_path / "p.yaml"
    cfg.write_text(PIPELINE)
    p = subprocess.run(
        [sys.executable, "-m", "cli", "run", str(f), "-c", str(cfg), "-o", str(tmp_path / "out.onnx")],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "file_format='ONNX'" in lines[0]
    assert not (tmp_path / "out.onnx").exists()


# ---------------------------------------------------------------------------- text data


def test_text_source_without_a_tokenizer_is_a_data_error(tmp_path):
    (tmp_path / "t.txt").write_text("hello\nworld\n")
    cfg = load_config_text("schema_version: 1\npasses: []\ndata: {train: {source: t.txt}}\n")
    with pytest.raises(DataError, match="model.tokenizer.path"):
        load_dataset(cfg.data.train, [], tmp_path)


def test_jsonl_fields_and_errors(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"text": "a b", "label": 1}\n\n{"text": "c", "label": 0}\n')
    texts, labels = _read_texts(f, "d", "text", None)
    assert texts == ["a b", "c"] and labels == [1, 0]  # label field found by name, blank lines skipped
    f.write_text('{"sentence": "a b"}\n')
    with pytest.raises(DataError, match="line 1 has no text field 'text' .*sentence"):
        _read_texts(f, "d", "text", None)
    f.write_text('{"text": "a"}\nnot json\n')
    with pytest.raises(DataError, match="line 2 is not valid JSON"):
        _read_texts(f, "d", "text", None)
    f.write_text('{"text": "a", "y": 1}\n{"text": "b"}\n')
    texts, labels = _read_texts(f, "d", "text", None)
    assert labels is None  # not every record has it: unlabeled
    with pytest.raises(DataError, match="line 2 has no label field 'y'"):
        _read_texts(f, "d", "text", "y")
    t = tmp_path / "d.txt"
    t.write_text("one\n  \ntwo\n")
    assert _read_texts(t, "d", "text", None) == (["one", "two"], None)
    with pytest.raises(DataError, match="needs a .jsonl"):
        _read_texts(t, "d", "text", "label")


def test_label_names_map_through_the_model_labels():
    from optimize.frameworks.text_data import _label_array

    info = TokenizerInfo(Path("."), 8, label2id={"neg": 0, "pos": 1})
    assert _label_array(["pos", "neg", "pos"], info, "d").tolist() == [1, 0, 1]
    with pytest.raises(DataError, match="not among the model's labels"):
        _label_array(["maybe"], info, "d")
    assert _label_array([0.5, 1], TokenizerInfo(Path("."), 8), "d").dtype == np.float32
    with pytest.raises(DataError, match="per-token labels"):
        _label_array([[0, 1]], info, "d")


def test_text_config_fields_validate():
    from optimize.errors import ConfigError

    cfg = load_config_text(
        "schema_version: 1\npasses: []\nmodel: {tokenizer: {max_length: 64, padding: max_length}}\n"
        "data: {train: {source: d.jsonl, text_field: sentence, label_field: gold}}\n"
    )
    assert cfg.model.tokenizer.max_length == 64 and cfg.data.train.text_field == "sentence"
    with pytest.raises(ConfigError, match="model.tokenizer.padding: must be one of"):
        load_config_text("schema_version: 1\npasses: []\nmodel: {tokenizer: {padding: right}}\n")
    with pytest.raises(ConfigError, match="gates.min_embedding_cosine"):
        load_config_text("schema_version: 1\npasses: []\ngates: {min_embedding_cosine: 2}\n")


# ---------------------------------------------------------------------------- embedding cosine


def test_embedding_cosines():
    a = np.array([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0], [1.0, 1.0]], dtype=np.float32)
    b = np.array([[2.0, 0.0], [1.0, 0.0], [0.0, 0.0], [np.nan, 1.0]], dtype=np.float32)
    cos = embedding_cosines(a, b)
    assert cos[0] == pytest.approx(1.0) and cos[1] == pytest.approx(0.0) and cos[2] == 1.0
    assert np.isnan(cos[3])
