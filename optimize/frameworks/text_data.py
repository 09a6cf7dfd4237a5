"""Text data sources: a `.txt` file (one example per line) or a `.jsonl` file (one JSON object per
line: a text field and an optional label field), tokenized with the model's own tokenizer into
the arrays the model takes (`input_ids`, `attention_mask`, and `token_type_ids` when the model
has that input), int64, shape (samples, tokens).

Tokenization is the `tokenizers`/`transformers` library's (`AutoTokenizer`), with the max length,
padding and truncation from `model.tokenizer` in the config. Unlabeled text is enough for
distillation (the teacher's outputs are the targets) and for calibration.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from optimize.errors import DataError
from optimize.frameworks.common import TOKENIZER_MARKERS
from optimize.frameworks.text_variants import word_spans, word_variants

TEXT_SUFFIXES = (".txt", ".jsonl")
LABEL_FIELDS = ("label", "labels", "y", "target", "class")


@dataclass(frozen=True)
class TokenizerInfo:
    """What text data needs to know about a text model (carried on `ModelHandle.tokenizer`)."""

    path: Path  # folder with the tokenizer files
    max_length: int  # the model's default tokens per example
    input_names: tuple[str, ...] = ("input_ids", "attention_mask")
    label2id: dict[str, int] = field(default_factory=dict)  # class names → ids (Hugging Face config)
    task: str = "embedding"  # feature-extraction / sequence-classification / token-classification
    beside_onnx: bool = False  # found beside an input ONNX file (tokenizer_beside), not with a model folder


def is_text_source(source: str) -> bool:
    return source.lower().endswith(TEXT_SUFFIXES)


def tokenizer_for(config: Any, handle: Any, base_dir: Path) -> TokenizerInfo | None:
    """The tokenizer text sources use: `model.tokenizer.path` from the config, else the one the
    model came with (a Hugging Face folder); None when neither exists."""
    section = getattr(getattr(config, "model", None), "tokenizer", None)
    own = getattr(handle, "tokenizer", None)
    path = getattr(section, "path", None)
    if path:
        p = Path(path) if Path(path).is_absolute() else base_dir / path
        if own is not None:
            return TokenizerInfo(p, own.max_length, own.input_names, own.label2id, own.task)
        names = tuple(s.name for s in getattr(handle, "inputs", []) or []) or ("input_ids", "attention_mask")
        return TokenizerInfo(p, 128, names)
    return own


def tokenizer_beside(onnx_path: Path, input_names: list[str]) -> TokenizerInfo | None:
    """The tokenizer in the folder of an ONNX file that takes `input_ids` (an output folder this
    tool wrote, or any exported text model with its tokenizer files beside it); None when there is
    none. Its max length is the `max_length` its tokenizer_config.json keeps, else 128."""
    folder = Path(onnx_path).resolve().parent
    if "input_ids" not in input_names or not any((folder / n).is_file() for n in TOKENIZER_MARKERS):
        return None
    max_length = 128
    try:
        saved = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8")).get("max_length")
        if isinstance(saved, int) and 0 < saved < 1_000_000:
            max_length = saved
    except (OSError, ValueError, AttributeError):
        pass  # no tokenizer_config.json or not a JSON object: the default length
    return TokenizerInfo(folder, max_length, tuple(input_names), beside_onnx=True)


def _read_texts(path: Path, where: str, text_field: str, label_field: str | None) -> tuple[list[str], list[Any] | None]:
    try:
        raw = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{where}: cannot read ({exc})") from None
    lines = raw.splitlines()
    if path.suffix.lower() == ".txt":
        if label_field:
            raise DataError(f"{where}: a .txt file has no fields; label_field needs a .jsonl file")
        texts = [ln.strip() for ln in lines if ln.strip()]
        return texts, None
    texts, labels = [], []
    label_key = label_field
    records = []
    for i, ln in enumerate(lines, start=1):
        if not ln.strip():
            continue
        try:
            rec = json.loads(ln)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: line {i} is not valid JSON ({exc.msg})") from None
        if not isinstance(rec, dict):
            raise DataError(f"{where}: line {i} is not a JSON object")
        records.append((i, rec))
    if label_key is None and records:  # like CSV: a column named label/y/target/class, when every record has it
        label_key = next((k for k in LABEL_FIELDS if all(k in r for _, r in records)), None)
    for i, rec in records:
        text = rec.get(text_field)
        if not isinstance(text, str):
            have = ", ".join(sorted(rec)) or "none"
            raise DataError(f"{where}: line {i} has no text field '{text_field}' (fields: {have}); set text_field")
        texts.append(text)
        if label_key is not None:
            if label_key not in rec:
                raise DataError(f"{where}: line {i} has no label field '{label_key}'")
            labels.append(rec[label_key])
    return texts, (labels if label_key is not None else None)


def _label_array(labels: list[Any], info: TokenizerInfo, where: str) -> np.ndarray:
    if any(isinstance(v, (list, dict)) for v in labels):
        raise DataError(f"{where}: labels must be one class id, class name or number per example (per-token labels are not read)")
    if all(isinstance(v, bool) or isinstance(v, int) for v in labels):
        return np.asarray(labels, dtype=np.int64)
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in labels):
        return np.asarray(labels, dtype=np.float32)
    names = [str(v) for v in labels]
    if info.label2id:
        unknown = sorted({n for n in names if n not in info.label2id})
        if unknown:
            raise DataError(f"{where}: labels {unknown[:3]} are not among the model's labels ({', '.join(list(info.label2id)[:8])})")
        return np.asarray([info.label2id[n] for n in names], dtype=np.int64)
    lookup = {n: i for i, n in enumerate(sorted(set(names)))}
    return np.asarray([lookup[n] for n in names], dtype=np.int64)


def load_text(path: Path, where: str, spec: Any, info: TokenizerInfo | None,
              options: Any = None) -> tuple[dict[str, np.ndarray], Any, Any]:
    """Read and tokenize a .txt/.jsonl source. `spec` is the DataSourceConfig (text_field,
    label_field, text_spans, text_variants); `options` the config's `model.tokenizer` section
    (max_length, padding, truncation). Returns (input name → int64 array, labels or None, rounds or
    None: each sample's variant round, -1 for the lines themselves; see word_variants)."""
    if info is None:
        raise DataError(
            f"{where}: text needs a tokenizer: use a Hugging Face model folder (its tokenizer is used), keep "
            "the tokenizer files beside the ONNX file, or set model.tokenizer.path to a folder with them"
        )
    texts, labels = _read_texts(path, where, getattr(spec, "text_field", "text") or "text", getattr(spec, "label_field", None))
    if not texts:
        raise DataError(f"{where}: contains no text")
    texts, rounds = _with_variants(texts, labels, spec, where)
    max_length = getattr(options, "max_length", None) or info.max_length
    padding = getattr(options, "padding", "longest")
    truncation = bool(getattr(options, "truncation", True))
    tok = load_tokenizer(info.path, where)
    enc = tok(texts, padding=padding, truncation=truncation, max_length=max_length, return_tensors="np")
    if not truncation:
        lengths = np.asarray(enc["attention_mask"]).sum(axis=1)
        too_long = np.flatnonzero(lengths > max_length)
        if too_long.size:
            n = int(too_long[0])
            raise DataError(
                f"{where}: example {n + 1} has {int(lengths[n])} tokens, more than max_length {max_length} "
                "(model.tokenizer.truncation is false)"
            )
    arrays: dict[str, np.ndarray] = {}
    for name in info.input_names:
        if name in enc:
            arrays[name] = np.asarray(enc[name], dtype=np.int64)
        elif name == "token_type_ids":
            arrays[name] = np.zeros_like(np.asarray(enc["input_ids"]), dtype=np.int64)
        else:
            raise DataError(f"{where}: the tokenizer does not produce the model input '{name}' (it gives {', '.join(enc)})")
    return arrays, (None if labels is None else _label_array(labels, info, where)), rounds


def _with_variants(texts: list[str], labels: Any, spec: Any, where: str) -> tuple[list[str], Any]:
    """The lines (at most `samples`) plus their word spans and variants, and each sample's variant
    round (-1: a line or span; None without text_variants); the texts unchanged without either."""
    n_spans = int(getattr(spec, "text_spans", 0) or 0)
    n_rounds = int(getattr(spec, "text_variants", 0) or 0)
    if not (n_spans or n_rounds):
        return texts, None
    if labels is not None:
        field = "text_spans" if n_spans else "text_variants"
        raise DataError(f"{where}: {field} adds parts of lines, which would not carry their line's label; "
                        "use it with unlabeled text")
    lines = texts[: spec.samples] if getattr(spec, "samples", None) else texts
    out = lines + word_spans(lines, n_spans)
    variants, variant_rounds = word_variants(lines, n_rounds)
    rounds = np.concatenate([np.full(len(out), -1, dtype=np.int64), variant_rounds]) if n_rounds else None
    return out + variants, rounds


def load_tokenizer(path: Path, where: str) -> Any:
    """`AutoTokenizer.from_pretrained(path)`, offline, with one-line errors."""
    from optimize.frameworks.common import has_module, quiet_transformers

    if not has_module("transformers"):
        raise DataError(f"{where}: tokenizing text needs the [hf] extra: pip install 'optimize[hf]'")

    quiet_transformers()
    from transformers import AutoTokenizer

    if not Path(path).is_dir():
        raise DataError(f"{where}: tokenizer folder not found: {path}")
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise DataError(f"{where}: cannot load the tokenizer in {path} ({first})") from None
