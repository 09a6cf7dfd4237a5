"""The decoder graph made by ONNX Runtime GenAI's model builder: fused FP32 (GroupQueryAttention with
the rotary embedding inside, SkipSimplifiedLayerNormalization, q/k/v as one MatMul).

Why the builder and not fusions of our own: on SmolLM2-135M its FP32 graph decodes 1.28–1.33x and
prefills 1.12x faster than the TorchScript export on the same CPU, and onnxscript's ORT fusions on a
dynamo export gained nothing in the ratio (docs/llm.md); writing GroupQueryAttention fusion by hand
would redo what the builder, kept by ONNX Runtime's team, already does for these architectures.

It runs as a subprocess (`python -m onnxruntime_genai.models.builder`, its documented command
line): its Python entry takes prepared options that change between releases, and the subprocess
keeps its memory out of the run. It reads a Hugging Face folder of float weights, so the loaded
model (a GGUF's dequantized weights too) is saved as one first. The graph's inputs are
`input_ids`, `attention_mask`, `past_key_values.{i}.key/value` (no `position_ids`); the cache
sizes are in `genai_config.json`, which stays beside the model (optimize.llm.generation reads it,
and ONNX Runtime GenAI's own runtime runs the folder).
"""

from __future__ import annotations

import copy
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from optimize.export import ExportError
from optimize.llm.load import CausalLM

BUILDER_MODULE = "onnxruntime_genai.models.builder"
# model types the builder has a graph for, among optimize.llm.load.SUPPORTED_MODEL_TYPES
BUILDER_TYPES = ("llama", "qwen2", "mistral")
GENAI_CONFIG = "genai_config.json"
EXPORTER_NAME = "onnxruntime-genai model builder (fp32, fused)"


def builder_installed() -> bool:
    return importlib.util.find_spec("onnxruntime_genai") is not None


def builder_unavailable(model_type: str) -> str | None:
    """Why the builder cannot export this model here, or None when it can."""
    if not builder_installed():
        return "onnxruntime-genai is not installed (pip install 'optimize[llm]')"
    if model_type not in BUILDER_TYPES:
        return f"the model builder is not used for model_type '{model_type}' here (tried: {', '.join(BUILDER_TYPES)})"
    return None


def _save_float_folder(lm: CausalLM, folder: Path) -> None:
    """The model's float weights as a Hugging Face folder (transformers refuses to save a model
    loaded from a GGUF file: the same weights go into a plain model of the same class)."""
    cfg = copy.deepcopy(lm.model.config)
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    plain = type(lm.model)(cfg)
    plain.load_state_dict(lm.model.state_dict())
    plain.save_pretrained(str(folder))
    lm.tokenizer.save_pretrained(str(folder))


def export_with_builder(lm: CausalLM, path: Path) -> Path:
    """The builder's FP32 CPU graph of `lm` at `path` (its external data and genai_config.json
    beside it), plus this tool's serving files. ExportError with the builder's last line on failure."""
    from optimize.llm.export import write_serving_files

    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".builder.", dir=path.parent))
    try:
        _save_float_folder(lm, scratch / "hf")
        out = scratch / "out"
        cmd = [sys.executable, "-m", BUILDER_MODULE, "-i", str(scratch / "hf"), "-o", str(out),
               "-p", "fp32", "-e", "cpu", "-c", str(scratch / "cache")]
        # offline: the builder reads the local folder and must never reach a hub
        env = {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if done.returncode or not (out / "model.onnx").is_file():
            raise ExportError(f"the model builder failed (exit {done.returncode}): {_last_line(done.stderr)}")
        _move_graph(out, path)
        shutil.copyfile(out / GENAI_CONFIG, path.parent / GENAI_CONFIG)
        _tidy_graph(path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    write_serving_files(lm, path.parent)
    return path


def _move_graph(out: Path, path: Path) -> None:
    """model.onnx → `path`; its external data keeps the name the graph refers to."""
    for f in out.iterdir():
        if f.name == "model.onnx":
            os.replace(f, path)
        elif f.name.startswith("model.onnx."):
            os.replace(f, path.parent / f.name)


def _tidy_graph(path: Path) -> None:
    """Two mends of the builder's annotations (only the graph's proto is rewritten: its weights stay
    in the external data file it names):
    - it leaves the cache's last axis symbolic (`kv_cache_dim`): the head size from genai_config.json
      goes into the cache inputs and outputs, so the graph describes itself (a copy without the json
      beside it — a pass cache entry — still runs);
    - its intermediate `value_info` declares some constants with the wrong rank (a [1] tensor as a
      scalar, onnxruntime-genai 0.18), which the ONNX checker's shape inference refuses: the
      intermediate annotations are dropped (ONNX Runtime infers them itself)."""
    import json

    import onnx

    dec = json.loads((path.parent / GENAI_CONFIG).read_text(encoding="utf-8"))["model"]["decoder"]
    model = onnx.load(str(path), load_external_data=False)
    for v in [*model.graph.input, *model.graph.output]:
        if v.name.startswith(("past_key_values.", "present.")):
            dims = v.type.tensor_type.shape.dim
            if len(dims) == 4 and dims[3].dim_param:
                dims[3].dim_value = int(dec["head_size"])
    del model.graph.value_info[:]
    tmp = path.with_name(path.name + ".tmp")
    onnx.save(model, str(tmp))
    os.replace(tmp, path)


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "no message"
