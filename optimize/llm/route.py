"""`optimize run` on a decoder LLM: what the pipeline does differently for `model.task: text-generation`.

- `resolve_task`: a `.gguf` file or a `…ForCausalLM` folder is text-generation when the task is
  unset; an explicit other task on one (or text-generation on anything else) is one line, exit 2;
- `check_plan`: before any weights are read, the passes a causal LM takes (export + quantize), the
  gates that apply, and the eval text (a .txt file);
- `load_handle`: the model type checked against the allow-list from config.json alone, then the
  float model and its tokenizer as a torch-form handle;
- `export_handle`: the KV-cache export (optimize.llm.export), which is the FP32 baseline and what
  the export step hands on (the step reuses the baseline's file when the opset is the same);
- `write_serving_files`: tokenizer, chat template, generation config and llm.json beside the
  output ONNX, each written under a temporary name and renamed into place.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from optimize.errors import ConfigError, ModelLoadError, UsageError
from optimize.handle import ModelHandle, TensorSpec

TASK = "text-generation"
ALLOWED_PASSES = ("export", "quantize")
# gates whose metric a decoder run does not measure (it measures tokens/s, agreement, perplexity)
OTHER_GATES = ("max_accuracy_drop", "min_speedup", "min_sparsity", "min_parity_cosine", "min_output_agreement",
               "max_latency_ms", "min_embedding_cosine")


def _is_causal_lm(model_spec: str | None) -> bool:
    from optimize.llm.load import is_causal_lm_source

    return bool(model_spec) and Path(model_spec).exists() and is_causal_lm_source(Path(model_spec))  # type: ignore[arg-type]


def resolve_task(model_spec: str | None, cfg: Any, config_file: str | None) -> bool:
    """Whether this run is a decoder-LLM run; sets `model.task` to text-generation when detected
    and unset. Exit 2 on a task that contradicts the model."""
    causal = _is_causal_lm(model_spec)
    explicit = "task" in cfg.model.model_fields_set
    task = cfg.model.task
    if causal and explicit and task != TASK:
        raise ConfigError(f"{model_spec} is a decoder language model; it takes model.task: {TASK} (not '{task}')",
                          file=config_file, key="model.task")
    if not causal and explicit and task == TASK:
        raise ConfigError(f"{TASK} needs a .gguf file or a Hugging Face folder whose config.json architectures end "
                          f"in ForCausalLM; {model_spec or 'the built-in example'} is neither",
                          file=config_file, key="model.task")
    if causal and not explicit:
        cfg.model.task = TASK
    return causal


def _refuse(message: str, config_file: str | None, *path: str | int) -> ConfigError:
    """A ConfigError at `path` (FILE:LINE: key.path: message; the line when the file has the key)."""
    from optimize.yaml_source import read_yaml, render_key_path

    line = None
    if config_file and Path(config_file).is_file():
        try:
            line = read_yaml(config_file).line_of(path)
        except ConfigError:
            line = None
    return ConfigError(message, file=config_file, line=line, key=render_key_path(path))


def check_plan(cfg: Any, config_file: str | None) -> None:
    """What a decoder run can do, checked before the model is loaded (exit 2, one line)."""
    for i, p in enumerate(cfg.passes):
        if p.type not in ALLOWED_PASSES:
            raise _refuse(f"pass '{p.type}' does not run on a decoder LLM: {TASK} supports "
                          f"{' + '.join(ALLOWED_PASSES)} for now", config_file, "passes", i, "type")
    from optimize.llm.builder_export import builder_installed

    for i, p in enumerate(cfg.passes):
        if p.type == "export" and getattr(p, "exporter", None) == "genai-builder":
            if not builder_installed():
                raise _refuse("genai-builder needs onnxruntime-genai: pip install 'optimize[llm]'",
                              config_file, "passes", i, "exporter")
    for name in OTHER_GATES:
        if getattr(cfg.gates, name) is not None:
            raise _refuse(f"does not apply to {TASK}; its gates are min_token_agreement, max_perplexity_ratio, "
                          "min_decode_speedup, min_prefill_speedup and max_size_mb", config_file, "gates", name)
    for role in ("train", "calibration"):
        if getattr(cfg.data, role) is not None:
            raise _refuse(f"{TASK} reads only data.eval (a .txt file)", config_file, "data", role)
    if cfg.hardware.device == "cuda" or cfg.measure.batch != 1:
        where = ("hardware", "device") if cfg.hardware.device == "cuda" else ("measure", "batch")
        raise _refuse(f"a {TASK} run is measured on the CPU at batch 1 for now", config_file, *where)
    if cfg.output.charts is True:
        raise _refuse(f"a {TASK} run draws no charts yet (its metrics are in the report); set charts: auto or false",
                      config_file, "output", "charts")
    spec = cfg.data.eval
    if spec is not None and not spec.source.lower().endswith(".txt"):
        raise _refuse(f"{TASK}: must be a .txt file (its lines are the prompts, its text the perplexity text), "
                      f"got {spec.source}", config_file, "data", "eval", "source")


def load_handle(model_spec: str) -> ModelHandle:
    """The model type checked from its config alone (exit 2 before any weights are read), then
    the float model + tokenizer (optimize.llm.load) as a torch-form handle."""
    from optimize.llm.load import load_causal_lm

    path = Path(model_spec)
    check_type_early(path)
    lm = load_causal_lm(path)
    vocab = int(lm.config.vocab_size)
    specs = [TensorSpec("input_ids", ("batch", "sequence"), "int64", 0, vocab),
             TensorSpec("attention_mask", ("batch", "total_sequence"), "int64", 1, 2),
             TensorSpec("position_ids", ("batch", "sequence"), "int64", 0, 1)]
    desc = f"{lm.source} ({type(lm.model).__name__}, {TASK})"
    return ModelHandle(form="torch", inputs=specs, outputs=["logits"], module=lm, source=desc)


def check_type_early(path: Path) -> None:
    """A folder's config.json read as JSON (no transformers import, no weights): its model_type
    against the allow-list. A GGUF's type is in its header; load_causal_lm checks it before the
    weights are dequantized."""
    import json

    from optimize.llm.load import SUPPORTED_MODEL_TYPES

    cfg = path / "config.json"
    if not path.is_dir() or not cfg.is_file():
        return
    try:
        model_type = str(json.loads(cfg.read_text(encoding="utf-8")).get("model_type") or "unknown")
    except (OSError, ValueError, AttributeError):
        raise ModelLoadError(f"{path}: config.json is not readable JSON") from None
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ModelLoadError(f"{path}: model_type '{model_type}' is not supported for {TASK} export "
                             f"(tested: {', '.join(SUPPORTED_MODEL_TYPES)})")


def export_handle(handle: ModelHandle, path: Path, opset: int, reuse: Path | None = None) -> ModelHandle:
    """The KV-cache export of the handle's causal LM at `path` (serving files beside it). With
    `reuse` (an export of the same model at the same opset, e.g. the baseline), its files are
    linked or copied instead of exporting again."""
    from optimize.llm.export import export_causal_lm

    meta = reuse.parent / "export.json" if reuse is not None else None
    if reuse is not None and reuse.is_file() and meta is not None and _same_opset(meta, opset):
        path.parent.mkdir(parents=True, exist_ok=True)
        for f in reuse.parent.iterdir():
            if f.is_file():
                _link_or_copy(f, path.parent / (path.name if f == reuse else f.name))
    else:
        export_causal_lm(handle.module, path, opset=opset)
        (path.parent / "export.json").write_text(f'{{"opset": {int(opset)}}}\n', encoding="utf-8")
    return handle.replace(form="onnx", onnx_path=path, module=None, exporter="torchscript (KV cache)", opset=opset)


def _same_opset(meta: Path, opset: int) -> bool:
    import json

    try:
        return int(json.loads(meta.read_text(encoding="utf-8"))["opset"]) == int(opset)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def write_serving_files(src_dir: Path, dst_dir: Path, model_name: str = "model.onnx") -> dict[str, str]:
    """The serving files of an export (optimize.llm.export.SERVING_FILES) from `src_dir` beside
    the output in `dst_dir`, each copied under a temporary folder there and renamed into place
    (genai_config.json names the output, `model_name`, as its decoder file).
    Returns {"serving/NAME": path} for the report."""
    from optimize.llm.export import SERVING_FILES

    dst_dir.mkdir(parents=True, exist_ok=True)
    if src_dir.resolve() == dst_dir.resolve():
        return {}
    tmp = Path(tempfile.mkdtemp(prefix=".serving.", dir=dst_dir))
    written: dict[str, str] = {}
    try:
        for name in SERVING_FILES:
            if (src_dir / name).is_file():
                shutil.copyfile(src_dir / name, tmp / name)
                if name == "genai_config.json":
                    _name_decoder_file(tmp / name, model_name)
                os.replace(tmp / name, dst_dir / name)
                written[f"serving/{name}"] = str(dst_dir / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return written


def _name_decoder_file(genai_config: Path, model_name: str) -> None:
    """ONNX Runtime GenAI's runtime opens the file genai_config.json names: the output's name."""
    import json

    doc = json.loads(genai_config.read_text(encoding="utf-8"))
    doc["model"]["decoder"]["filename"] = model_name
    genai_config.write_text(json.dumps(doc, indent=4) + "\n", encoding="utf-8")


def baseline_path(work_dir: Path) -> Path:
    """Where the pipeline writes a decoder's FP32 export (its baseline); the export step reuses it."""
    return Path(work_dir) / "input" / "model.onnx"


def check_output_dir(model_spec: str, output: Path) -> None:
    """The serving files are written beside the output: never into the input model's own folder
    (they would replace its tokenizer files)."""
    src = Path(model_spec).resolve()
    folder = src if src.is_dir() else None
    if folder is not None and output.resolve().parent == folder:
        raise UsageError(f"output {output}: its folder is the input model's; the tokenizer and generation files "
                         "written beside the output would replace the model's own: choose another folder")
