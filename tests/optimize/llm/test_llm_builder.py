"""ONNX Runtime GenAI's model builder as a decoder exporter (optimize/llm/builder_export.py,
export_choice.py): its fused graph matches torch, `exporter: auto` times it against the TorchScript
export and keeps the faster, a graph whose logits differ is refused, and the output folder names
itself in genai_config.json."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import onnx
import pytest

pytest.importorskip("transformers")
torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
if importlib.util.find_spec("onnxruntime_genai") is None:
    pytest.skip("onnxruntime-genai is not installed (the [llm] extra)", allow_module_level=True)

from tiny_llm import VOCAB, tiny_folder  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from cli.app import app  # noqa: E402
from optimize.llm.builder_export import export_with_builder  # noqa: E402
from optimize.llm.generation import OrtCausalLM  # noqa: E402
from optimize.llm.load import load_causal_lm  # noqa: E402

FFN = 96  # not VOCAB: the builder takes any Linear with vocabulary-size outputs for the head
CONFIG = """\
schema_version: 1
data:
  eval: {{source: {eval}}}
passes:
  - type: export
{exporter}  - type: quantize
    mode: weight_only
    bits: 4
    algorithm: minmax
    block_size: 32
    accuracy_level: 4
"""


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("builder")
    tiny_folder(root, intermediate=FFN)
    tiny_folder(root)  # intermediate == VOCAB: the builder's graph feeds the head from the wrong layer
    (root / "eval.txt").write_text("the capital of france is\nwhat a nice day\nhello world\n", encoding="utf-8")
    return root


def _torch_logits(model, ids, cache=None):
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(ids), use_cache=True, **({"cache": cache} if cache is not None else {}))
    return out.logits.numpy(), out.cache


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "mistral"])
def test_builder_graph_matches_torch_on_prefill_and_a_cached_step_and_names_its_cache_dims(tmp_path, model_type):
    lm = load_causal_lm(tiny_folder(tmp_path, model_type, intermediate=FFN))
    path = export_with_builder(lm, tmp_path / "g" / "model.onnx")
    for name in ("genai_config.json", "llm.json", "tokenizer.json"):
        assert (path.parent / name).is_file(), name
    assert not list(path.parent.glob(".builder.*"))  # its scratch folder is gone
    (path.parent / "genai_config.json").unlink()  # the graph describes its cache without the json
    model = OrtCausalLM(path)
    assert (model.kv_heads, model.head_dim) == (2, 16) and not model.has_positions
    ids = np.random.default_rng(1).integers(5, VOCAB, (1, 9))
    out = model.step(ids, model.empty_cache(), 0)
    ref, cache = _torch_logits(lm.model, ids)
    assert np.abs(out.logits - ref).max() < 1e-3
    nxt = np.array([[7]])
    step = model.step(nxt, out.cache, 9)
    ref_step, _ = _torch_logits(lm.model, nxt, cache)
    assert np.abs(step.logits - ref_step).max() < 1e-3


def _run(root, tmp_path, folder, exporter_line=""):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(CONFIG.format(eval=root / "eval.txt", exporter=exporter_line), encoding="utf-8")
    out = tmp_path / "out" / "tiny.onnx"
    r = CliRunner().invoke(app, ["run", str(root / folder), "-c", str(cfg), "-o", str(out), "--json", "--no-cache",
                                 "--set", "measure.repeat=3", "--set", "measure.single_thread=false"])
    return r, out


def test_exporter_auto_times_both_graphs_and_keeps_the_shorter_request(root, tmp_path):
    r, out = _run(root, tmp_path, f"tiny-llama-ffn{FFN}")
    assert r.exit_code == 0, r.stderr
    record = json.loads(r.stdout)["steps"][0]["metrics"]["export_choice"]
    rows = {row["name"]: row for row in record["candidates"]}
    assert set(rows) == {"torchscript", "genai-builder"}
    assert all(row["status"] == "ok" and row["request_s"] > 0 for row in rows.values())
    assert rows["genai-builder"]["parity"]["top1_agreement"] == 1.0
    assert record["chosen"] == min(rows, key=lambda n: rows[n]["request_s"])
    genai = out.parent / "genai_config.json"
    assert genai.is_file() == (record["chosen"] == "genai-builder")


def test_exporter_genai_builder_hands_on_its_graph_and_the_output_folder_names_its_file(root, tmp_path):
    r, out = _run(root, tmp_path, f"tiny-llama-ffn{FFN}", "    exporter: genai-builder\n")
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["steps"][0]["metrics"]["export_choice"]["chosen"] == "genai-builder"
    assert report["output"]["ops"].get("com.microsoft.GroupQueryAttention", 0) == 2
    assert report["metrics"]["token_agreement"]["value"] is not None
    genai = json.loads((out.parent / "genai_config.json").read_text(encoding="utf-8"))
    assert genai["model"]["decoder"]["filename"] == "tiny.onnx"
    gen = CliRunner().invoke(app, ["generate", str(out.parent), "hello world", "--max-new-tokens", "3", "-q"])
    assert gen.exit_code == 0, gen.stderr


def test_a_builder_graph_whose_logits_differ_is_refused(root, tmp_path):
    """With intermediate size == vocabulary size the builder wires the head to a gate projection's
    layer: auto keeps the TorchScript graph and says why; asked for by name, the run fails."""
    r, _ = _run(root, tmp_path, "tiny-llama")
    assert r.exit_code == 0, r.stderr
    record = json.loads(r.stdout)["steps"][0]["metrics"]["export_choice"]
    assert record["chosen"] == "torchscript"
    builder = next(row for row in record["candidates"] if row["name"] == "genai-builder")
    assert builder["status"].startswith("failed: its logits differ")
    r, out = _run(root, tmp_path, "tiny-llama", "    exporter: genai-builder\n")
    assert r.exit_code == 1 and "logits differ" in r.stderr
    assert not out.exists()


def test_genai_builder_is_refused_at_plan_time_off_decoders_and_when_not_installed(root, tmp_path, monkeypatch):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("schema_version: 1\npasses:\n  - type: export\n    exporter: genai-builder\n", encoding="utf-8")
    r = CliRunner().invoke(app, ["run", "-c", str(cfg), "-o", str(tmp_path / "m.onnx")])  # the built-in example
    assert r.exit_code == 2 and "decoder LLM graphs" in r.stderr
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime_genai" else real(name, *a))
    r, _ = _run(root, tmp_path, f"tiny-llama-ffn{FFN}", "    exporter: genai-builder\n")
    assert r.exit_code == 2 and "pip install 'optimize[llm]'" in r.stderr


def test_the_prompt_path_finds_the_builders_tied_head_and_computes_it_in_float(root, tmp_path):
    """The builder ties the head by reading its K × V weight through Transpose → Gather; the prompt
    path's head multiplies by that table (after ONNX Runtime's folding, a V × K initializer)."""
    from passes.quantize.int4 import quantize_int4, save
    from passes.quantize.prefill_branch import add_prompt_path

    lm = load_causal_lm(tiny_folder(tmp_path, tied=True, intermediate=FFN))
    fp32 = export_with_builder(lm, tmp_path / "fp32" / "model.onnx")
    plain, level1 = tmp_path / "plain" / "model.onnx", tmp_path / "level1" / "model.onnx"
    facts = quantize_int4(fp32, plain, block_size=16, algorithm="minmax")
    quantize_int4(fp32, level1, block_size=16, algorithm="minmax", accuracy_level=1, head="float")
    assert facts["tied_embedding"] == "lm_head.MatMul.weight"
    info = add_prompt_path(plain, tmp_path / "branched" / "model.onnx", facts["tied_embedding"], save)
    assert info["prompt_head"] == "float (tied embedding)"
    ids = np.asarray([list(range(5, 37))], np.int64)
    a = OrtCausalLM(level1).step(ids, OrtCausalLM(level1).empty_cache(), 0).logits
    branched = OrtCausalLM(tmp_path / "branched" / "model.onnx")
    b = branched.step(ids, branched.empty_cache(), 0).logits
    assert np.abs(a - b).max() < 1e-3 * np.abs(a).max()
    # prompts on 8-bit copies: every body MatMul (the builder's fused q/k/v included), the tied head still float
    info8 = add_prompt_path(plain, tmp_path / "int8" / "model.onnx", facts["tied_embedding"], save, body="int8_weights")
    body = sum(n.op_type == "MatMulNBits" and "down_proj" not in n.name for n in onnx.load(str(plain)).graph.node) - 1
    assert info8["prompt_int8_kernels"] == body and info8["prompt_head"] == "float (tied embedding)"  # down stays 4-bit
    int8 = OrtCausalLM(tmp_path / "int8" / "model.onnx")
    c = int8.step(ids, int8.empty_cache(), 0).logits
    assert (c[0].argmax(-1) == a[0].argmax(-1)).mean() >= 0.9 and np.abs(c - a).mean() < 0.1 * np.abs(a).mean()


@pytest.mark.parametrize("model_type", ["qwen2", "mistral"])
def test_prompts_on_8_bit_copies_per_architecture(tmp_path, model_type):
    """qwen2's q/k/v carry biases; each body MatMul of the builder's graph but the down projections
    gets its 8-bit copy and the prompt's logits stay near the 4-bit weights' at float activations."""
    from passes.quantize.int4 import quantize_int4, save
    from passes.quantize.prefill_branch import add_prompt_path

    fp32 = export_with_builder(load_causal_lm(tiny_folder(tmp_path, model_type, intermediate=FFN)),
                               tmp_path / "fp32" / "model.onnx")
    plain, level1 = tmp_path / "plain" / "model.onnx", tmp_path / "level1" / "model.onnx"
    facts = quantize_int4(fp32, plain, block_size=16, algorithm="minmax")
    quantize_int4(fp32, level1, block_size=16, algorithm="minmax", accuracy_level=1)
    info = add_prompt_path(plain, tmp_path / "int8" / "model.onnx", facts["tied_embedding"], save, body="int8_weights")
    kernels = [n for n in onnx.load(str(plain)).graph.node if n.op_type == "MatMulNBits" and "down_proj" not in n.name]
    assert info["prompt_int8_kernels"] == len(kernels) - 1  # all but the head and the down projections
    ids = np.asarray([list(range(5, 37))], np.int64)
    ref, got = OrtCausalLM(level1), OrtCausalLM(tmp_path / "int8" / "model.onnx")
    a, c = ref.step(ids, ref.empty_cache(), 0).logits, got.step(ids, got.empty_cache(), 0).logits
    assert (c[0].argmax(-1) == a[0].argmax(-1)).mean() >= 0.9 and np.abs(c - a).mean() < 0.1 * np.abs(a).mean()


def test_block_sums_on_the_builders_graph_take_the_reshape_form(root, tmp_path):
    """ONNX shape inference stops at the builder's com.microsoft ops; ONNX Runtime's symbolic
    inference knows the inputs' ranks, so no block sum is a MatMul by the dense 0/1 matrix."""
    from passes.quantize.int4 import quantize_int4

    fp32 = export_with_builder(load_causal_lm(root / f"tiny-llama-ffn{FFN}"), tmp_path / "fp32" / "model.onnx")
    quantize_int4(fp32, tmp_path / "q" / "model.onnx", block_size=16, algorithm="minmax")
    ops = [n.op_type for n in onnx.load(str(tmp_path / "q" / "model.onnx")).graph.node]
    assert ops.count("ReduceSum") > 0 and "MatMul" not in ops


def test_the_builders_output_runs_with_plain_onnxruntime_and_the_tokenizer(root, tmp_path):
    """The loop without optimize on the fused graph: no position_ids; present.N.x feeds past_key_values.N.x."""
    import onnxruntime as ort
    from transformers import AutoTokenizer

    from optimize.llm.generation import generate

    path = export_with_builder(load_causal_lm(root / f"tiny-llama-ffn{FFN}"), tmp_path / "g" / "model.onnx")
    tok = AutoTokenizer.from_pretrained(str(path.parent))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    past = {i.name: np.zeros((1, 2, 0, 16), np.float32) for i in sess.get_inputs() if i.name.startswith("past_")}
    outputs = [o.name for o in sess.get_outputs()]
    prompt = tok("the capital of france is")["input_ids"]
    ids, total, new = np.array([prompt], np.int64), len(prompt), []
    for _ in range(6):
        out = dict(zip(outputs, sess.run(None, {"input_ids": ids, "attention_mask": np.ones((1, total), np.int64), **past}),
                       strict=True))
        new.append(int(out["logits"][0, -1].argmax()))
        past = {n: out[n.replace("past_key_values.", "present.")] for n in past}
        ids, total = np.array([[new[-1]]], np.int64), total + 1
    assert new == list(generate(OrtCausalLM(path), prompt, 6))
