"""`optimize generate OUTPUT PROMPT` on a tiny exported Llama: streams the same tokens the library's
greedy loop produces, seeded sampling repeats, and a folder without a model is exit 2."""

from __future__ import annotations

import re

import pytest

pytest.importorskip("transformers")
pytest.importorskip("torch")
from tiny_llm import tiny_export
from typer.testing import CliRunner

from cli.app import app


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return tiny_export(tmp_path_factory.mktemp("gen"))


def _run(*args):
    return CliRunner().invoke(app, ["generate", *map(str, args)])


def test_generate_prints_the_greedy_continuation(exported):
    from optimize.llm.generation import OrtCausalLM, generate, open_output

    r = _run(exported.parent, "the capital of france", "--max-new-tokens", 6, "--raw", "-q")
    assert r.exit_code == 0, r.output
    _, tok = open_output(exported.parent)
    ids = tok("the capital of france")["input_ids"]
    expected = tok.decode(list(generate(OrtCausalLM(exported), ids, 6, eos_ids=(2,))), skip_special_tokens=True)
    assert r.stdout.strip() == expected.strip()


def test_seeded_sampling_repeats_and_the_chat_template_is_used_by_default(exported):
    a = _run(exported, "hello world", "--temperature", 1.5, "--seed", 7, "--max-new-tokens", 8)
    b = _run(exported, "hello world", "--temperature", 1.5, "--seed", 7, "--max-new-tokens", 8)
    assert a.exit_code == 0 and a.stdout == b.stdout
    assert re.search(r"\d+ tokens in [\d.]+ s", a.stderr)


def test_a_folder_without_a_model_is_exit_2(tmp_path):
    r = _run(tmp_path, "hi")
    assert r.exit_code == 2
    assert "no model.onnx" in r.output
