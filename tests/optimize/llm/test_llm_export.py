"""Loading causal LMs and the KV-cache export: ONNX logits match torch on prefill and decode."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest

pytest.importorskip("transformers")
torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from tiny_llm import VOCAB, tiny_export, tiny_folder  # noqa: E402

from optimize.errors import ModelLoadError  # noqa: E402
from optimize.llm.export import io_names  # noqa: E402
from optimize.llm.load import is_causal_lm_source, load_causal_lm  # noqa: E402


def _torch_logits(model, ids, cache=None):
    arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"  # 5.2x / older
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(ids), use_cache=True, **({arg: cache} if cache is not None else {}))
    return out.logits.numpy(), getattr(out, arg)


def _past_feed(sess, layers, past):
    return {n: v for n, v in zip(io_names(layers)[0][3:], past, strict=True)}


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "mistral"])
def test_onnx_matches_torch_on_prefill_and_one_cached_decode_step(tmp_path, model_type):
    path = tiny_export(tmp_path, model_type)
    model = load_causal_lm(tmp_path / f"tiny-{model_type}").model
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ids = np.random.default_rng(0).integers(5, VOCAB, (1, 9))
    empty = [np.zeros((1, 2, 0, 16), np.float32)] * 4
    feed = {"input_ids": ids, "attention_mask": np.ones((1, 9), np.int64), "position_ids": np.arange(9)[None],
            **_past_feed(sess, 2, empty)}
    out = sess.run(None, feed)
    ref, cache = _torch_logits(model, ids)
    assert np.abs(out[0] - ref).max() < 1e-4
    nxt = np.array([[7]])
    feed = {"input_ids": nxt, "attention_mask": np.ones((1, 10), np.int64), "position_ids": np.array([[9]]),
            **_past_feed(sess, 2, out[1:])}
    step = sess.run(None, feed)
    ref_step, _ = _torch_logits(model, nxt, cache)
    assert step[1].shape == (1, 2, 10, 16)  # present = past + the new position
    assert np.abs(step[0] - ref_step).max() < 1e-4


def test_graph_has_symbolic_batch_sequence_and_past_and_serving_files(tmp_path):
    path = tiny_export(tmp_path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    shapes = {i.name: i.shape for i in sess.get_inputs()}
    assert shapes["input_ids"] == ["batch", "sequence"]
    assert shapes["past_key_values.1.value"] == ["batch", 2, "past_sequence", 16]
    assert [o.name for o in sess.get_outputs()] == ["logits", "present.0.key", "present.0.value",
                                                   "present.1.key", "present.1.value"]
    meta = json.loads((path.parent / "llm.json").read_text())
    assert meta["num_layers"] == 2 and meta["eos_token_ids"] == [2]
    for name in ("tokenizer.json", "generation_config.json"):
        assert (path.parent / name).is_file()
    assert "im_start" in (path.parent / "chat_template.jinja").read_text() or \
        "im_start" in (path.parent / "tokenizer_config.json").read_text()


def test_unsupported_model_type_is_refused_with_one_line_before_export(tmp_path):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    folder = tmp_path / "neox"
    cfg = GPTNeoXConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    GPTNeoXForCausalLM(cfg).save_pretrained(str(folder))
    assert is_causal_lm_source(folder)
    with pytest.raises(ModelLoadError, match="model_type 'gpt_neox' is not supported") as err:
        load_causal_lm(folder)
    assert "\n" not in str(err.value)


def test_folder_without_weights_and_non_gguf_file_are_load_errors(tmp_path):
    folder = tiny_folder(tmp_path)
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="no weights"):
        load_causal_lm(folder)
    other = tmp_path / "x.bin"
    other.write_bytes(b"0")
    with pytest.raises(ModelLoadError, match="not a .gguf file"):
        load_causal_lm(other)
    assert not is_causal_lm_source(other)


def test_optimize_run_on_a_causal_lm_folder_says_what_exists_and_checks_the_model_type(tmp_path):
    from transformers import AutoConfig

    from optimize.frameworks.hf import resolve_task

    llama = AutoConfig.for_model("llama", architectures=["LlamaForCausalLM"])
    with pytest.raises(ModelLoadError, match="decoder language model.*docs/llm.md"):
        resolve_task(tmp_path, llama, None, None)
    neox = AutoConfig.for_model("gpt_neox", architectures=["GPTNeoXForCausalLM"])
    with pytest.raises(ModelLoadError, match="model_type 'gpt_neox' is not supported"):
        resolve_task(tmp_path, neox, None, None)
