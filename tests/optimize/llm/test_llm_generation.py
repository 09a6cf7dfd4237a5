"""The ONNX Runtime decode loop and the LLM metrics on a tiny random Llama."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pytest.importorskip("transformers")
torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from tiny_llm import tiny_export  # noqa: E402

from optimize.llm.generation import OrtCausalLM, generate, stream_text  # noqa: E402
from optimize.llm.llm_metrics import measure_speed, perplexity, token_agreement  # noqa: E402
from optimize.llm.load import load_causal_lm  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("llm")
    path = tiny_export(root)
    return path, load_causal_lm(root / "tiny-llama")


def test_greedy_loop_with_cache_matches_transformers_generate(exported):
    path, lm = exported
    prompt = [5, 9, 14, 3, 22]
    ours = list(generate(OrtCausalLM(path), prompt, 12))
    with torch.no_grad():
        ref = lm.model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, eos_token_id=None,
                                pad_token_id=2)
    assert ours == ref[0, len(prompt):].tolist()


def test_output_folder_runs_with_plain_onnxruntime_and_the_tokenizer(exported):
    """The loop a user writes without optimize: tokenizer from the folder, empty cache, feed back present.*"""
    path, _ = exported
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path.parent))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    past_names = [i.name for i in sess.get_inputs() if i.name.startswith("past_key_values.")]
    ids = np.array([tok("the capital of france is")["input_ids"]], np.int64)
    past = {n: np.zeros((1, 2, 0, 16), np.float32) for n in past_names}
    total, new = ids.shape[1], []
    for _ in range(6):
        n = ids.shape[1]
        out = sess.run(None, {"input_ids": ids, "attention_mask": np.ones((1, total), np.int64),
                              "position_ids": np.arange(total - n, total)[None], **past})
        new.append(int(out[0][0, -1].argmax()))
        past = dict(zip(past_names, out[1:], strict=True))
        ids = np.array([[new[-1]]], np.int64)
        total += 1
    ours = list(generate(OrtCausalLM(path), tok("the capital of france is")["input_ids"], 6))
    assert new == ours
    assert isinstance(tok.decode(new), str)


def test_sampling_is_reproducible_with_a_seed_and_streaming_emits_the_decoded_text(exported):
    path, lm = exported
    model = OrtCausalLM(path)
    a = list(generate(model, [5, 6, 7], 10, temperature=1.5, seed=3))
    b = list(generate(model, [5, 6, 7], 10, temperature=1.5, seed=3))
    assert a == b
    pieces: list[str] = []
    new = stream_text(model, lm.tokenizer, "hello world", 5, emit=pieces.append)
    assert "".join(pieces).strip() == lm.tokenizer.decode(new, skip_special_tokens=True).strip()


def test_agreement_with_itself_is_one_and_perplexity_matches_torch(exported):
    path, lm = exported
    model = OrtCausalLM(path)
    agree = token_agreement(model, model, [[5, 6, 7], [9, 10]], positions=4)
    assert agree["value"] == 1.0 and agree["positions"] == 8
    ids = list(np.random.default_rng(1).integers(5, 100, 40))
    ours = perplexity(model, ids, window=64)["value"]
    with torch.no_grad():
        loss = lm.model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss
    assert ours == pytest.approx(float(torch.exp(loss)), rel=1e-4)


def test_speed_reports_tokens_per_second_and_ratios_against_the_reference(exported):
    path, _ = exported
    models = {"a": OrtCausalLM(path), "b": OrtCausalLM(path)}
    res = measure_speed(models, "a", list(range(5, 21)), new_tokens=4, rounds=3, warmup=1)
    assert res.prefill_tps["a"] > 0 and res.decode_tps["b"] > 0
    assert set(res.decode_ratio) == {"b"} and res.decode_ratio["b"].rounds == 3


def test_torch_eager_runs_the_same_rounds_as_a_reference_line(exported):
    """The float torch model behind OrtCausalLM's step interface: its cache grows one position per
    decode step (so decode timing is real cached decoding), torch's thread setting is restored."""
    from optimize.llm.eager import TorchCausalLM

    path, lm = exported
    eager = TorchCausalLM(lm.model, threads=1)
    before = torch.get_num_threads()
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # transformers 5.2x: past_key_values= is deprecated
        out = eager.step(np.asarray([[5, 9, 14]], np.int64), eager.empty_cache(), 0)
        out = eager.step(np.asarray([[3]], np.int64), out.cache, 3)
    assert out.cache.get_seq_length() == 4 and torch.get_num_threads() == before
    res = measure_speed({"onnx": OrtCausalLM(path), "torch_eager": eager}, "onnx", list(range(5, 21)), new_tokens=4,
                        rounds=3, warmup=1)
    assert res.decode_tps["torch_eager"] > 0 and res.prefill_ratio["torch_eager"].rounds == 3


def test_a_symbolic_cache_dim_is_read_from_genai_config(exported, tmp_path):
    """ONNX Runtime GenAI's model builder declares the cache's last dim as `kv_cache_dim`; its
    genai_config.json gives the sizes (bench/llm_genai_peer.py runs its graphs through this class)."""
    import json

    import onnx

    from optimize.errors import ModelLoadError

    path, _ = exported
    model = onnx.load(str(path))
    for inp in model.graph.input:
        if inp.name.startswith("past_key_values."):
            inp.type.tensor_type.shape.dim[3].dim_param = "kv_cache_dim"
    sym = tmp_path / "model.onnx"
    onnx.save(model, str(sym), save_as_external_data=True, location="model.onnx.data")
    with pytest.raises(ModelLoadError, match="symbolic"):
        OrtCausalLM(sym)
    ref = OrtCausalLM(path)
    (tmp_path / "genai_config.json").write_text(json.dumps(
        {"model": {"decoder": {"num_key_value_heads": ref.kv_heads, "head_size": ref.head_dim}}}))
    lm = OrtCausalLM(sym)
    assert (lm.kv_heads, lm.head_dim) == (ref.kv_heads, ref.head_dim)
    assert list(generate(lm, [5, 9, 14], 6)) == list(generate(ref, [5, 9, 14], 6))
