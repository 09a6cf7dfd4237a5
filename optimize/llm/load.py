"""Load a causal language model for export: a Hugging Face folder (config.json + weights) or a
`.gguf` file (transformers' GGUF loader dequantizes it to float; needs the `gguf` and `accelerate`
packages, the `[llm]` extra). Offline: nothing is downloaded.

Only model types whose export this project has tested are accepted (`SUPPORTED_MODEL_TYPES`);
any other is refused with one line before the weights are read.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optimize.errors import ModelLoadError
from optimize.frameworks.common import HF_WEIGHTS, has_module, quiet_transformers

# model_type → what was tested: the KV-cache export matched torch (tests/optimize/llm/test_export.py)
SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "mistral")
GGUF_SUFFIX = ".gguf"


@dataclass
class CausalLM:
    """A loaded decoder model: the float torch module (eval mode), its tokenizer, its config and
    generation config, and where it came from."""

    model: Any
    tokenizer: Any
    source: str

    @property
    def config(self) -> Any:
        return self.model.config

    def parameters(self) -> Any:
        """The torch model's parameters, so the pipeline counts this handle's weights like a module's."""
        return self.model.parameters()


def is_causal_lm_source(path: Path) -> bool:
    """A `.gguf` file, or a folder whose config.json names a `…ForCausalLM` architecture."""
    if path.is_file():
        return path.suffix.lower() == GGUF_SUFFIX
    cfg = path / "config.json"
    if not cfg.is_file():
        return False
    import json

    try:
        archs = json.loads(cfg.read_text(encoding="utf-8")).get("architectures") or []
    except (OSError, ValueError, AttributeError):
        return False
    return any(str(a).endswith("ForCausalLM") for a in archs)


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def _where(path: Path) -> tuple[str, dict[str, Any]]:
    """transformers' (folder, kwargs) for a folder or a GGUF file."""
    if path.is_file():
        if path.suffix.lower() != GGUF_SUFFIX:
            raise ModelLoadError(f"{path}: not a .gguf file or a Hugging Face causal-LM folder")
        missing = [m for m in ("transformers", "gguf", "accelerate") if not has_module(m)]
        if missing:
            raise ModelLoadError(
                f"{path}: reading a GGUF file needs {', '.join(missing)}: pip install 'optimize[llm]'"
            )
        return str(path.parent), {"gguf_file": path.name}
    if not has_module("transformers"):
        raise ModelLoadError(f"{path}: loading a causal-LM folder needs the [llm] extra: pip install 'optimize[llm]'")
    if not any((path / w).is_file() for w in HF_WEIGHTS):
        raise ModelLoadError(f"{path}: has config.json but no weights (model.safetensors or pytorch_model.bin)")
    return str(path), {}


def check_model_type(path: Path, config: Any) -> None:
    """One line, before any weights are read, for a model type outside the tested allow-list."""
    model_type = str(getattr(config, "model_type", "") or "unknown")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ModelLoadError(
            f"{path}: model_type '{model_type}' is not supported for text-generation export "
            f"(tested: {', '.join(SUPPORTED_MODEL_TYPES)})"
        )


def load_causal_lm(path: Path) -> CausalLM:
    """Folder or GGUF → `CausalLM` with a float32 torch model in eval mode (see module doc)."""
    folder, kwargs = _where(path)
    quiet_transformers()
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    common = {"local_files_only": True, "trust_remote_code": False, **kwargs}
    try:
        config = AutoConfig.from_pretrained(folder, **common)
    except Exception as exc:
        raise ModelLoadError(f"{path}: transformers {transformers.__version__} cannot read its config ({_first_line(exc)})") from None
    check_model_type(path, config)
    try:
        # transformers' GGUF reader draws a tqdm bar on stderr that no setting turns off; stderr
        # carries only progress and errors here, and its errors come back as exceptions
        with contextlib.redirect_stderr(io.StringIO()) if "gguf_file" in kwargs else contextlib.nullcontext():
            model = AutoModelForCausalLM.from_pretrained(folder, dtype="float32", **common)
        tokenizer = AutoTokenizer.from_pretrained(folder, **common)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"{path}: transformers cannot load it as a causal LM ({_first_line(exc)})") from None
    model.eval()
    return CausalLM(model=model, tokenizer=tokenizer, source=str(path))
