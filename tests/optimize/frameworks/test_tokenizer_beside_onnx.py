"""An ONNX text model with its tokenizer files beside it (an output folder this tool wrote, or any
export that keeps them) is read with that tokenizer, so text data works without
`model.tokenizer.path`, and a later run's output folder gets the files as they are, never over a
file already there and never into the working directory."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from optimize.frameworks.hf import write_serving_files
from optimize.frameworks.text_data import tokenizer_beside
from optimize.loaders import load_model


def _onnx(path: Path, input_name: str) -> Path:
    x = helper.make_tensor_value_info(input_name, TensorProto.INT64, ["batch", "seq"])
    y = helper.make_tensor_value_info("y", TensorProto.INT64, ["batch", "seq"])
    graph = helper.make_graph([helper.make_node("Identity", [input_name], ["y"])], "g", [x], [y])
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_a_token_model_with_tokenizer_files_beside_it_carries_them(tmp_path):
    model = _onnx(tmp_path / "m" / "model.onnx", "input_ids")
    assert load_model(str(model)).tokenizer is None  # no tokenizer files yet
    (tmp_path / "m" / "tokenizer.json").write_text("{}")
    (tmp_path / "m" / "tokenizer_config.json").write_text(json.dumps({"max_length": 96, "model_max_length": 512}))
    info = load_model(str(model)).tokenizer
    assert info.path == (tmp_path / "m").resolve() and info.max_length == 96 and info.beside_onnx
    assert info.input_names == ("input_ids",)
    (tmp_path / "m" / "tokenizer_config.json").write_text("not json")
    assert tokenizer_beside(model, ["input_ids"]).max_length == 128  # unreadable config: the default length


def test_a_model_without_token_ids_ignores_tokenizer_files(tmp_path):
    model = _onnx(tmp_path / "model.onnx", "pixels")
    (tmp_path / "vocab.txt").write_text("[PAD]\n")
    assert load_model(str(model)).tokenizer is None


def test_the_files_are_copied_to_a_new_folder_but_never_over_a_file_or_into_the_working_directory(tmp_path, monkeypatch):
    src = tmp_path / "src"
    _onnx(src / "model.onnx", "input_ids")
    (src / "tokenizer.json").write_text('{"v": 1}')
    (src / "vocab.txt").write_text("[PAD]\n")
    info = tokenizer_beside(src / "model.onnx", ["input_ids"])
    written = write_serving_files(info, tmp_path / "out")
    assert sorted(written) == ["tokenizer/tokenizer.json", "tokenizer/vocab.txt"]
    assert (tmp_path / "out" / "tokenizer.json").read_text() == '{"v": 1}'
    assert [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")] == []  # no temporary left

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "vocab.txt").write_text("the user's own")
    assert write_serving_files(info, mine) == {}
    assert (mine / "vocab.txt").read_text() == "the user's own" and not (mine / "tokenizer.json").exists()

    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    assert write_serving_files(info, work) == {} and list(work.iterdir()) == []


def test_text_data_runs_on_the_output_of_an_earlier_run(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    pytest.importorskip("torch")
    from optimize import pipeline
    from optimize.api import RunOptions
    from tests.test_frameworks_hf import save_folder, sentences

    folder = save_folder(tmp_path / "bert")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "eval.txt").write_text("\n".join(sentences(16, 1)) + "\n")
    data = "schema_version: 1\ndata:\n  eval: {source: eval.txt}\nmodel:\n  tokenizer: {max_length: 24}\n"
    (tmp_path / "export.yaml").write_text(data + "passes:\n  - type: export\n")
    (tmp_path / "int8.yaml").write_text(data.replace("model:\n", "model:\n  task: embedding\n")
                                        + "passes:\n  - type: quantize\n    mode: dynamic\n")
    first = pipeline.run(RunOptions(model=str(folder), config="export.yaml", threads=1))
    second = pipeline.run(RunOptions(model=first.files["model"], config="int8.yaml", threads=1,
                                     output=str(tmp_path / "int8" / "model.onnx")))
    acc = second.metrics["accuracy"]
    assert acc.inputs["metric"] == "embedding_cosine" and acc.inputs["samples"] == 16
    assert (tmp_path / "int8" / "tokenizer.json").is_file()  # the second output folder serves too
