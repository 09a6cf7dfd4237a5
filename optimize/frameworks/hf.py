"""Hugging Face model folders (config.json + weights + tokenizer files, or a sentence-transformers
folder) as torch models for the pipeline. Needs the `[hf]` extra (transformers, tokenizers).

The folder is loaded for its task with transformers' Auto classes, offline
(`local_files_only=True`, `HF_HUB_OFFLINE=1`: nothing is downloaded):

| folder | task | model output |
| --- | --- | --- |
| sentence-transformers (modules.json + 1_Pooling/config.json) | embedding | pooled as its config says (mean over the attention mask, CLS, max, mean-sqrt-len), L2-normalized when it has a Normalize module |
| `…Model` (AutoModel, e.g. BertModel) | embedding (feature extraction) | mean over the attention mask |
| `…ForSequenceClassification` | classification (or regression when num_labels is 1) | logits (batch, labels) |
| `…ForTokenClassification` | classification per token | logits (batch, tokens, labels) |

`model.task: embedding` in the config turns any folder's encoder into an embedder (mean pooling).

The loaded model is wrapped in `HFTextModel`: a plain `nn.Module` whose positional inputs are the
tokenizer's (`input_ids`, `attention_mask`, and `token_type_ids` when the tokenizer emits it) and
whose one output is a tensor, so the torch passes (structured pruning of heads and FFN neurons
through passes/prune/transformer.py, distillation, quantization) and the ONNX export treat it
like any other model. The inputs are int64 with symbolic `batch` and `sequence` dims; random ids
are drawn below the vocabulary size.

The pooling is written here (a few tensor lines) rather than taken from sentence-transformers,
so the `[hf]` extra stays transformers + tokenizers and the pooling is part of the exported graph.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from optimize.errors import ConfigError, ModelLoadError
from optimize.frameworks.common import (
    HF_OTHER_WEIGHTS,
    HF_WEIGHTS,
    TOKENIZER_MARKERS,
    quiet_transformers,
)
from optimize.frameworks.text_data import TokenizerInfo
from optimize.handle import ModelHandle, TensorSpec

POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len")  # sentence-transformers' concatenation order
EXAMPLE_TOKENS = 16  # sequence length of example/random inputs (export, tracing)
TASKS = {"feature-extraction": "embedding", "sequence-classification": "classification",
         "token-classification": "classification"}


def _read_json(path: Path, where: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{where}: cannot read {path.name} ({exc})") from None


def sentence_transformers_layout(folder: Path) -> dict[str, Any] | None:
    """For a sentence-transformers folder: the transformer's subfolder, the pooling modes, whether
    embeddings are normalized, and the max sequence length. None for other folders."""
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return None
    modules = _read_json(modules_file, str(folder))
    if not isinstance(modules, list):
        raise ModelLoadError(f"{folder}: modules.json is not a list of modules")
    layout: dict[str, Any] = {"transformer": folder, "pooling": ["mean"], "normalize": False, "max_length": None}
    seen_transformer = False
    for m in sorted(modules, key=lambda m: int(m.get("idx", 0)) if isinstance(m, dict) else 0):
        if not isinstance(m, dict):
            continue
        kind = str(m.get("type", "")).rsplit(".", 1)[-1]
        sub = folder / str(m.get("path", ""))
        if kind == "Transformer":
            seen_transformer = True
            layout["transformer"] = sub
            cfg_file = sub / "sentence_bert_config.json"
            if not cfg_file.is_file():
                cfg_file = folder / "sentence_bert_config.json"
            if cfg_file.is_file():
                layout["max_length"] = _read_json(cfg_file, str(folder)).get("max_seq_length")
        elif kind == "Pooling":
            pcfg = _read_json(sub / "config.json", str(folder)) if (sub / "config.json").is_file() else {}
            modes = [mode for mode in POOLING_MODES if pcfg.get(f"pooling_mode_{mode}_tokens" if mode != "cls" else "pooling_mode_cls_token")]
            unsupported = [k for k in ("pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken") if pcfg.get(k)]
            if unsupported:
                raise ModelLoadError(f"{folder}: pooling {', '.join(unsupported)} is not supported (cls, max, mean, mean_sqrt_len are)")
            layout["pooling"] = modes or ["mean"]
        elif kind == "Normalize":
            layout["normalize"] = True
        else:
            raise ModelLoadError(
                f"{folder}: sentence-transformers module '{kind}' is not supported (Transformer, Pooling and Normalize are)"
            )
    if not seen_transformer:
        raise ModelLoadError(f"{folder}: modules.json lists no Transformer module")
    return layout


def _task_of(arch: str | None) -> str | None:
    if not arch:
        return None
    if arch.endswith("ForSequenceClassification"):
        return "sequence-classification"
    if arch.endswith("ForTokenClassification"):
        return "token-classification"
    if arch.endswith("Model"):
        return "feature-extraction"
    return None


def resolve_task(folder: Path, config: Any, st: dict[str, Any] | None, model_cfg: Any) -> str:
    """The task the folder is loaded for: its own (sentence-transformers, architectures) unless
    the config's model.task says otherwise."""
    explicit = model_cfg is not None and "task" in getattr(model_cfg, "model_fields_set", set())
    wanted = getattr(model_cfg, "task", None) if explicit else None
    archs = list(getattr(config, "architectures", None) or [])
    own = "feature-extraction" if st else _task_of(archs[0] if archs else None)
    if wanted == "embedding":
        return "feature-extraction"
    if wanted in ("classification", "regression"):
        if own in ("sequence-classification", "token-classification"):
            return own
        raise ConfigError(
            f"{folder} has no classification head (architectures: {', '.join(archs) or 'none'}); "
            "set model.task: embedding, or use a …ForSequenceClassification / …ForTokenClassification folder",
            key="model.task",
        )
    if own is None and any(str(a).endswith("ForCausalLM") for a in archs):
        from optimize.llm.load import check_model_type

        check_model_type(folder, config)  # an untested model type: its own one line
        raise ModelLoadError(
            f"{folder}: {', '.join(archs)} is a decoder language model; load it with model.task: text-generation "
            "(docs/llm.md: `optimize run` exports it with a KV cache, quantizes and measures it)"
        )
    if own is None:
        raise ModelLoadError(
            f"{folder}: architecture {', '.join(archs) or '(none in config.json)'} is not supported; optimize loads "
            "feature extraction (…Model, sentence-transformers), …ForSequenceClassification and "
            "…ForTokenClassification folders, or set model.task: embedding to use its encoder with mean pooling"
        )
    return own


class _Wrapper:
    """Built on first use (so importing this module does not import torch)."""

    cls: Any = None


def _wrapper_class() -> Any:
    if _Wrapper.cls is not None:
        return _Wrapper.cls
    import torch
    from torch import nn

    class HFTextModel(nn.Module):
        """A transformers model as one tensor in, one tensor out: positional inputs in
        `input_names` order; output the pooled sentence embedding (feature extraction) or the
        logits (classification)."""

        def __init__(self, model: nn.Module, task: str, input_names: list[str], pooling: list[str],
                     normalize: bool) -> None:
            super().__init__()
            self.model = model
            self.task = task
            self.input_names = list(input_names)
            self.pooling = list(pooling)
            self.normalize = normalize

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
            kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                kwargs["token_type_ids"] = token_type_ids
            out = self.model(**kwargs)
            if self.task != "feature-extraction":
                return out.logits
            hidden = out.last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            parts = []
            for mode in self.pooling:
                if mode == "cls":
                    parts.append(hidden[:, 0])
                elif mode == "max":
                    parts.append(hidden.masked_fill(mask == 0, -1e9).max(dim=1).values)
                elif mode == "mean":
                    parts.append((hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9))
                else:  # mean_sqrt_len
                    parts.append((hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9).sqrt())
            emb = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
            if self.normalize:
                emb = torch.nn.functional.normalize(emb, p=2.0, dim=-1)
            return emb

    _Wrapper.cls = HFTextModel
    return HFTextModel


def _max_length(config: Any, tokenizer: Any, st: dict[str, Any] | None) -> int:
    limit = int(getattr(config, "max_position_embeddings", 0) or 0) or 512
    if st and st.get("max_length"):
        return min(int(st["max_length"]), limit)
    tok_max = int(getattr(tokenizer, "model_max_length", 0) or 0)
    if 0 < tok_max < 1_000_000:
        return min(tok_max, limit)
    return min(512, limit)


def load_hf_folder(folder: Path, model_cfg: Any = None, *, trust_model: bool = False) -> ModelHandle:
    """Load a Hugging Face / sentence-transformers folder into a torch handle (see module doc)."""
    from optimize.frameworks.common import has_module  # looked up per call: tests patch it

    if not has_module("transformers"):
        raise ModelLoadError(
            f"{folder}: is a Hugging Face model folder; loading it needs the [hf] extra: pip install 'optimize[hf]'"
        )
    quiet_transformers()
    st = sentence_transformers_layout(folder)
    tdir = st["transformer"] if st else folder
    if not any((tdir / w).is_file() for w in HF_WEIGHTS):
        others = [w for w in HF_OTHER_WEIGHTS if (tdir / w).is_file()]
        if others:
            raise ModelLoadError(
                f"{tdir}: holds only {', '.join(others)} weights; optimize loads PyTorch weights: in transformers, "
                "load it with from_tf=True / from_flax=True and save_pretrained it (writes model.safetensors)"
            )
        raise ModelLoadError(f"{tdir}: has config.json but no weights (model.safetensors or pytorch_model.bin)")

    import transformers
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
        AutoTokenizer,
    )

    def first_line(exc: Exception) -> str:
        return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]

    try:
        config = AutoConfig.from_pretrained(str(tdir), local_files_only=True, trust_remote_code=False)
    except Exception as exc:
        raise ModelLoadError(f"{tdir}: transformers {transformers.__version__} cannot read config.json ({first_line(exc)})") from None
    task = resolve_task(folder, config, st, model_cfg)
    auto = {"feature-extraction": AutoModel, "sequence-classification": AutoModelForSequenceClassification,
            "token-classification": AutoModelForTokenClassification}[task]
    try:
        model = auto.from_pretrained(str(tdir), local_files_only=True, trust_remote_code=False)
    except Exception as exc:
        raise ModelLoadError(f"{tdir}: transformers cannot load the model for {task} ({first_line(exc)})") from None
    tok_dir = next((d for d in (folder, tdir) if any((d / f).is_file() for f in TOKENIZER_MARKERS)), None)
    if tok_dir is None:
        raise ModelLoadError(
            f"{folder}: no tokenizer files (tokenizer.json, vocab.txt, ...); save the tokenizer into the folder "
            "with tokenizer.save_pretrained(folder)"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    except Exception as exc:
        raise ModelLoadError(
            f"{folder}: no usable tokenizer ({first_line(exc)}); save it into the folder with tokenizer.save_pretrained(folder)"
        ) from None
    import inspect

    if task == "feature-extraction" and getattr(model, "pooler", None) is not None \
            and "add_pooling_layer" in inspect.signature(type(model).__init__).parameters:
        model.pooler = None  # unused for embeddings; what add_pooling_layer=False builds
    model.eval()

    accepted = set(inspect.signature(model.forward).parameters)
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in getattr(tokenizer, "model_input_names", []) and "token_type_ids" in accepted:
        names.append("token_type_ids")
    vocab = int(getattr(config, "vocab_size", 0) or len(tokenizer))
    high = min(len(tokenizer), vocab) if len(tokenizer) else vocab
    max_length = _max_length(config, tokenizer, st)
    example = max(2, min(EXAMPLE_TOKENS, max_length))
    specs = [
        TensorSpec("input_ids", ("batch", "sequence"), "int64", 0, high, example_size=example),
        TensorSpec("attention_mask", ("batch", "sequence"), "int64", 1, 2, example_size=example),
    ]
    if "token_type_ids" in names:
        specs.append(TensorSpec("token_type_ids", ("batch", "sequence"), "int64", 0, 1, example_size=example))
    pooling = st["pooling"] if st else ["mean"]
    normalize = bool(st["normalize"]) if st else False
    module = _wrapper_class()(model, task, names, pooling, normalize)
    module.eval()
    output = "sentence_embedding" if task == "feature-extraction" else "logits"
    if model_cfg is not None:
        explicit = "task" in getattr(model_cfg, "model_fields_set", set())
        if not explicit:  # the folder decides what its outputs mean (distill loss, accuracy metric)
            regression = task == "sequence-classification" and (
                getattr(config, "problem_type", None) == "regression" or int(getattr(config, "num_labels", 2)) == 1
            )
            model_cfg.task = "regression" if regression else TASKS[task]
    label2id = {str(k): int(v) for k, v in (getattr(config, "label2id", None) or {}).items()} if task != "feature-extraction" else {}
    # absolute: the quantize pass reads data from inside a scratch directory (passes/quantize/job.py)
    info = TokenizerInfo(path=tok_dir.resolve(), max_length=max_length, input_names=tuple(names), label2id=label2id, task=task)
    desc = f"Hugging Face {type(model).__name__}, {task}"
    desc += f", pooling {'+'.join(pooling)}{', normalized' if normalize else ''}" if task == "feature-extraction" else ""
    logging.getLogger("optimize").info("%s: %s; inputs %s", folder, desc, ", ".join(names))
    return ModelHandle(form="torch", inputs=specs, outputs=[output], module=module, source=str(folder), tokenizer=info)


def write_serving_files(info: TokenizerInfo, out_dir: Path) -> dict[str, str]:
    """Write the tokenizer (with transformers' own `save_pretrained`) beside the ONNX file, so the
    output folder serves as is. Each file is written under a temporary folder in `out_dir` and
    renamed into place. Returns {"tokenizer/NAME": path} for the report."""
    import shutil
    import tempfile

    from optimize.frameworks.text_data import load_tokenizer

    out_dir.mkdir(parents=True, exist_ok=True)
    if out_dir.resolve() == Path(info.path).resolve():
        return {}  # the tokenizer is already there (output written into the model's own folder)
    if info.beside_onnx:
        return _copy_tokenizer_files(Path(info.path), out_dir)
    tok = load_tokenizer(info.path, "tokenizer")
    tmp = Path(tempfile.mkdtemp(prefix=".tokenizer.", dir=out_dir))
    written: dict[str, str] = {}
    try:
        tok.save_pretrained(str(tmp))
        for f in sorted(tmp.iterdir()):
            if f.is_file():
                os.replace(f, out_dir / f.name)
                written[f"tokenizer/{f.name}"] = str(out_dir / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return written


def _copy_tokenizer_files(src: Path, out_dir: Path) -> dict[str, str]:
    """The tokenizer files beside an input ONNX file, copied as they are (no [hf] extra needed) to
    the output's folder. Not into the working directory (where an ONNX file's output goes by default)
    and not where the folder already holds one of those names: those files may be the user's."""
    import shutil

    names = [n for n in TOKENIZER_MARKERS if (src / n).is_file()]
    clash = [n for n in names if (out_dir / n).exists()]
    log = logging.getLogger("optimize")
    if out_dir.resolve() == Path.cwd().resolve():
        log.info("tokenizer files not copied into the working directory; -o DIR/model.onnx gives a folder that serves")
        return {}
    if clash:
        log.warning("tokenizer files not copied beside the output: %s already holds %s", out_dir, ", ".join(clash))
        return {}
    written: dict[str, str] = {}
    for n in names:
        tmp = out_dir / f".{n}.part"
        try:
            shutil.copyfile(src / n, tmp)
            os.replace(tmp, out_dir / n)
        finally:
            tmp.unlink(missing_ok=True)  # nothing half-copied left behind
        written[f"tokenizer/{n}"] = str(out_dir / n)
    return written


__all__ = ["load_hf_folder", "write_serving_files", "sentence_transformers_layout", "resolve_task", "quiet_transformers"]
