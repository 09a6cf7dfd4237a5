"""The pipeline configuration: a pydantic schema (extra keys forbidden everywhere), YAML loading
with file:line errors, and `--set KEY=VALUE` overrides.

`PipelineConfig` is written out here; its `passes:` items are a union discriminated on `type` over
the registered passes' config classes (each declares `type: Literal["NAME"]`). The union is built
when the schema is first needed (`defer_build`), through the registry, so the library never imports
a pass module, and each pass's options are validated by its own config class at load time.
"""

from __future__ import annotations

import copy
import difflib
import functools
import json
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    ValidationError,
    field_validator,
)
from pydantic_core import CoreSchema

from optimize import config_messages
from optimize.errors import ConfigError
from optimize.pass_api import PassConfig
from optimize.strict_bool import check_bool_field
from optimize.yaml_source import YamlDocument, parse_yaml, read_yaml, render_key_path
from optimize.yaml_source import safe_load as yaml_safe_load


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    _strict_bools = field_validator("*", mode="before")(check_bool_field)


class InputSpecConfig(Section):
    name: str = Field(description="Input name as the model (and its ONNX export) calls it.")
    shape: list[int | str] = Field(
        description="Shape; the first axis is the batch axis. Strings (e.g. 'batch') are symbolic."
    )
    dtype: Literal["float32", "float16", "float64", "int64", "int32", "int8", "uint8", "bool"] = Field(
        "float32", description="Element type."
    )
    low: float | None = Field(None, description="Lower bound for random inputs (default -1, or 0 for ints).")
    high: float | None = Field(
        None, description="Upper bound (exclusive for ints) for random inputs; token ids need the vocabulary size."
    )


class TokenizerSection(Section):
    path: str | None = Field(
        None, min_length=1,
        description="Folder with the tokenizer files (tokenizer.json, vocab.txt, ...); default: the model's own folder (Hugging Face folders).",
    )
    max_length: int | None = Field(
        None, gt=0, le=1_000_000,
        description="Tokens per text example; default: the model's (sentence-transformers max_seq_length, else the tokenizer's model_max_length, at most the position embeddings).",
    )
    padding: Literal["longest", "max_length"] = Field(
        "longest", description="Pad every example of a data source to its longest example, or to max_length."
    )
    truncation: bool = Field(
        True, description="Cut examples longer than max_length; false: such an example is a data error."
    )


class ModelSection(Section):
    inputs: list[InputSpecConfig] | None = Field(
        None, description="Model inputs, needed for torch models whose file does not carry them."
    )
    input_shapes: dict[str, list[int]] | None = Field(
        None,
        description="Concrete shapes for inputs with symbolic dims, by input name ({images: [1, 3, 640, 640]}; "
        "--input-shape images=1x3x640x640). Calibration, parity and latency run at these shapes; the first dim is "
        "the measured batch unless measure.batch is set. A symbolic non-batch dim that nothing resolves (this, the "
        "file's metadata, or the data for token inputs) is exit 2 before any work.",
    )
    outputs: list[str] | None = Field(None, description="Output names for the exported ONNX.")
    weights: str | None = Field(
        None,
        description="Weights for a `package.module:callable` factory: .safetensors or a state_dict (.pt, loaded weights_only).",
    )
    task: Literal["classification", "regression", "embedding", "text-generation"] = Field(
        "classification",
        description="What the outputs mean; decides the accuracy metric. A Hugging Face folder sets it from its architecture unless given (embedding turns any folder's encoder into a mean-pooled embedder). text-generation: a decoder LLM (a …ForCausalLM folder or a .gguf file, detected when unset): exported with a KV cache, passes export and quantize, measured by tokens/s, token agreement and perplexity (docs/llm.md).",
    )
    tokenizer: TokenizerSection = Field(
        default_factory=TokenizerSection, description="How text data sources (.txt, .jsonl) are tokenized (see model.tokenizer)."
    )

    @field_validator("input_shapes")
    @classmethod
    def _positive_dims(cls, shapes: dict[str, list[int]] | None) -> dict[str, list[int]] | None:
        for name, dims in (shapes or {}).items():
            if any(d <= 0 for d in dims):
                raise ValueError(f"input_shapes.{name}: every dim must be a positive integer, got {dims}")
        return shapes


class DataSourceConfig(Section):
    source: str = Field(
        description="'builtin:digits', a .npz file (arrays named as the inputs, 'x' for one input, optional 'y'; each as the model takes it, samples on its batch axis: axis 0, or axis 1 of an RNN state [2, batch, 128]), a .csv file (header row; label column label/y/target/class), a folder of images by class (root/<class>/*.png|jpg|npy; Pillow reads png/jpg), a .txt file (one text per line) or .jsonl file (one JSON object per line) tokenized with the model's tokenizer, or 'package.module:callable' returning (inputs, labels)."
    )
    split: Literal["train", "test", "all"] = Field(
        "all", description="For built-in data sets, CSV files and image folders: the fixed train (80%) / test (20%) split (stratified by label)."
    )
    samples: int | None = Field(None, gt=0, description="Use at most this many samples.")
    text_spans: int = Field(
        0, ge=0, le=16,
        description="Text sources without labels: add this many random word spans of each line (4 words up to all but "
        "one, fixed seed) after the lines (`samples` counts lines). More varied inputs from few lines when a student "
        "learns the teacher's outputs: on the real MiniLM halving the FFN, 1 span per line raised held-out cosine "
        "mean / min from 0.968 / 0.888 to 0.973 / 0.904 (docs/distill.md).",
    )
    text_variants: int = Field(
        0, ge=0, le=64,
        description="Text sources without labels: this many rounds of one new variant of each line of 3 words or more "
        "(a random word span, or the line with ~15% of its words dropped; fixed seed), after the lines and any "
        "text_spans (`samples` counts lines). The distill pass "
        "trains each epoch on the lines plus its share of the rounds (E epochs: epoch e takes rounds e, e + E, …; "
        "fewer rounds than epochs are cycled), so the student meets new inputs every epoch; other passes use every "
        "sample. On the real MiniLM halving the FFN (hand loop, torch): held-out cosine mean / min 0.965 / 0.870 → "
        "0.971 / 0.906 with one round per epoch (docs/distill.md).",
    )
    text_field: str = Field("text", min_length=1, description=".jsonl: the field holding each example's text.")
    label_field: str | None = Field(
        None, min_length=1,
        description=".jsonl: the field holding each example's label (class id, class name or number); default: label/labels/y/target/class when every record has it.",
    )


class DataSection(Section):
    train: DataSourceConfig | None = Field(None, description="Training data (distillation, fine-tuning).")
    eval: DataSourceConfig | None = Field(None, description="Held-out data for accuracy and parity.")
    calibration: DataSourceConfig | None = Field(
        None, description="Calibration data for static quantization (defaults to train, then random inputs)."
    )
    batch_size: int = Field(64, gt=0, le=65536, description="Batch size for training and evaluation.")


class HardwareSection(Section):
    device: Literal["cpu", "cuda", "auto"] = Field("cpu", description="Where the distill and prune passes train and score, and where models are measured.")
    threads: int | None = Field(None, gt=0, le=1024, description="Intra-op threads (default: all cores).")


class MeasureSection(Section):
    batch: int = Field(1, gt=0, le=4096, description="Batch size for latency measurement.")
    warmup: int = Field(5, ge=0, le=10000, description="Untimed runs before timing.")
    repeat: int = Field(30, gt=2, le=100000, description="Timed runs per model (interleaved A/B).")
    single_thread: bool = Field(True, description="Also measure with 1 thread for parallel_speedup.")
    speed_tolerance: float = Field(
        0.03, ge=0, lt=1,
        description="Band around 1 within which a speed ratio is 'no measurable change': faster needs the 95% "
        "interval's lower bound above 1 + this, slower its upper bound below 1 − this.",
    )
    max_repeat: int | None = Field(
        None, gt=2, le=1000000,
        description="While a speed ratio's interval straddles the tolerance band, rounds are added up to this many "
        "(default 3 × repeat; at most 10 s of extra timing). Equal to repeat: no extra rounds.",
    )
    parity_samples: int = Field(
        64, gt=0, le=100000,
        description="Samples used for output parity when it runs on random probes (no data.eval). With data.eval, "
        "parity reads every sample, up to 2^26 input elements (e.g. 27 images of 3x736x1088) but never fewer than "
        "this many: the report's parity and the quantize pass's choices (format auto, the fallback) alike.",
    )


class OutputSection(Section):
    path: str | None = Field(None, description="Output ONNX path (default: MODEL_STEM.opt.onnx beside the input).")
    report: str | None = Field(None, description="Report JSON path (default: OUTPUT.report.json).")
    markdown: bool = Field(True, description="Also write the report as Markdown beside the JSON.")
    charts: Literal["auto", True, False] = Field(
        "auto",
        description="PNG charts beside the report, linked from the Markdown (latency by threads, per-layer sparsity, "
        "accuracy vs size): auto = when matplotlib is installed and markdown is on (else a finding says why not); "
        "true = required (exit 2 at plan time without matplotlib: pip install 'optimize[charts]'); false = never.",
    )
    opset: int = Field(18, ge=13, le=23, description="ONNX opset for torch exports.")
    exporter: Literal["auto", "dynamo", "torchscript"] = Field(
        "auto", description="torch.onnx exporter. auto: for a transformers model, build the candidate exports "
        "(TorchScript + eager attention, with and without ONNX Runtime's fusion, dynamo), check each against torch, "
        "time them here and keep the fastest (a tie within 3% goes to the one closest to torch after int8; "
        "docs/frameworks.md); for other models, dynamo, then TorchScript."
    )
    skip_layernorm: Literal["auto", "avoid", "allow"] = Field(
        "auto",
        description="Residual Add + LayerNormalization, which ONNX Runtime fuses into SkipLayerNormalization, whose "
        "CPU kernel is several times slower than the two ops it replaces (docs/architecture.md). auto: on a --device cpu "
        "run, write the Adds ONNX Runtime fuses as Sum (same values, not fused) when the two files, timed interleaved "
        "here, say it is faster; avoid: write every residual Add before a layer norm as Sum, untimed (a Sum also hides "
        "the add from the runtime's Attention fusion); allow: leave the graph as the passes wrote it.",
    )
    pad_trim: Literal["auto", "always", "never"] = Field(
        "auto",
        description="Inputs padded past the batch's longest row cut inside the graph: every input shaped like "
        "attention_mask sliced to the last column any row keeps, before anything reads it; the outputs are those of "
        "the batch padded to its longest row (the same in float). MiniLM's int8 model ran 2.4x faster on 8 sentences "
        "padded to 128 tokens (docs/architecture.md). Only for a model with an attention_mask input and no output "
        "along the sequence axis, checked on the eval batch with masked columns added. auto: on a --device cpu run, "
        "keep it when the two files, timed interleaved on the eval batch, say it is faster (a batch padded only to "
        "its longest row gains nothing); always: cut wherever the check passes, untimed; never: leave the inputs "
        "as they come.",
    )
    softmax_guard: Literal["auto", "always", "never"] = Field(
        "auto",
        description="Softmax inputs floored at the row's maximum minus 60 (exact to float32), so a masked score never "
        "makes exp compute denormal floats, which stall Intel CPUs: MiniLM's int8 model ran 1.4x faster on padded "
        "batches (docs/architecture.md). auto: on a --device cpu run, keep the guard when the two files, timed "
        "interleaved here, say it is faster; always: guard every float32 Softmax, untimed; never: leave the graph "
        "as the passes wrote it.",
    )
    cache: bool = Field(
        True,
        description="Reuse and store ONNX pass outputs in the pass cache, keyed by input content, pass config, "
        "data, seed, device, threads and tool/library versions (re-runs and --resume skip finished passes; "
        "--no-cache sets false). See docs/reliability.md.",
    )
    cache_dir: str | None = Field(
        None, min_length=1,
        description="Pass cache folder (--cache-dir); default $OPTIMIZE_PASS_CACHE (a folder, or 'off'), "
        "else $OPTIMIZE_CACHE/passes, else ~/.cache/optimize/passes.",
    )
    cache_max_gb: float | None = Field(
        None, gt=0,
        description="Largest size of the pass cache folder in GB (10^9 bytes): after each store, the least recently "
        "used entries are removed until the rest fits; default: no limit.",
    )


class GatesSection(Section):
    max_accuracy_drop: float | None = Field(
        None, ge=0, le=100, description="Largest allowed accuracy drop, in percentage points."
    )
    min_speedup: float | None = Field(None, gt=0, description="Smallest allowed speedup (input latency / output latency).")
    speed_bound: Literal["upper", "lower"] = Field(
        "upper",
        description="Which end of the speedup's 95% interval min_speedup judges: upper = fail only when the "
        "measurement shows the limit missed (an interval containing the limit passes with a finding); "
        "lower = pass only when the lower bound clears the limit.",
    )
    max_size_mb: float | None = Field(None, gt=0, description="Largest allowed output size in MB (10^6 bytes).")
    min_sparsity: float | None = Field(None, ge=0, le=1, description="Smallest allowed weight sparsity.")
    min_parity_cosine: float | None = Field(
        None, ge=-1, le=1, description="Smallest allowed min cosine between input and output model outputs."
    )
    min_output_agreement: float | None = Field(
        None, ge=0, le=1,
        description="Smallest allowed share of equal elements between input and output model integer/bool outputs "
        "(class indices, masks); min_parity_cosine implies it for a model whose outputs are all integer/bool.",
    )
    max_latency_ms: float | None = Field(None, gt=0, description="Largest allowed output latency (median, ms).")
    min_embedding_cosine: float | None = Field(
        None, ge=-1, le=1,
        description="model.task embedding: smallest allowed min cosine between the output model's and the input model's embeddings over data.eval.",
    )
    min_token_agreement: float | None = Field(
        None, ge=0, le=1,
        description="Decoder LLMs (docs/llm.md): smallest allowed share of positions where the output's top-1 token "
        "equals the FP32 model's, teacher-forced along the FP32 model's greedy continuation.",
    )
    max_perplexity_ratio: float | None = Field(
        None, gt=0, description="Decoder LLMs (docs/llm.md): largest allowed output perplexity / FP32 perplexity on the eval text."
    )
    min_decode_speedup: float | None = Field(
        None, gt=0, description="Decoder LLMs (docs/llm.md): smallest allowed decode_speedup (output decode tokens/s / "
        "FP32's), judged on its 95% interval as speed_bound says."
    )
    min_prefill_speedup: float | None = Field(
        None, gt=0, description="Decoder LLMs (docs/llm.md): smallest allowed prefill_speedup (output prompt tokens/s / "
        "FP32's), judged on its 95% interval as speed_bound says."
    )


class _ByPassType:
    """Validates a `passes:` item as the union of the registered passes' config classes,
    discriminated on `type` (built on first use: the registry imports the pass modules by name)."""

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return handler.generate_schema(_pass_union())


@functools.cache
def _pass_union() -> Any:
    from optimize import registry

    classes = tuple(cls.config_cls for cls in registry.all_passes().values())
    return Annotated[Union[classes], Field(discriminator="type")]  # noqa: UP007


class PipelineConfig(Section):
    # the whole pipeline file (a comment, not a docstring: a docstring becomes the schema's description)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, defer_build=True)

    schema_version: Literal[1] = Field(description="Config format version; must be 1.")
    name: str | None = Field(None, description="A name for this pipeline, copied into the report.")
    seed: int = Field(0, ge=0, description="Seed for every random choice (data order, random inputs).")
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    hardware: HardwareSection = Field(default_factory=HardwareSection)
    measure: MeasureSection = Field(default_factory=MeasureSection)
    output: OutputSection = Field(default_factory=OutputSection)
    gates: GatesSection = Field(default_factory=GatesSection)
    passes: list[Annotated[PassConfig, _ByPassType()]] = Field(
        description="Ordered list of passes: {type: NAME, ...options}."
    )


def json_schema() -> dict[str, Any]:
    """The JSON Schema; each pass's options are the definition named after the pass."""
    from optimize import registry

    text = json.dumps(PipelineConfig.model_json_schema())
    for name, cls in registry.all_passes().items():
        text = text.replace(f'"#/$defs/{cls.config_cls.__name__}"', f'"#/$defs/{name}"')
    schema = json.loads(text)
    defs = schema.get("$defs", {})
    for name, cls in registry.all_passes().items():
        if cls.config_cls.__name__ in defs:
            defs[name] = {**defs.pop(cls.config_cls.__name__), "title": name}
            # `type` defaults to the pass name in code, but a pipeline file must say it
            defs[name]["properties"]["type"].pop("default", None)
            defs[name]["required"] = sorted({*defs[name].get("required", []), "type"})
    return schema


# ---------------------------------------------------------------- error rendering


def _friendly(err: dict[str, Any], loc: tuple[Any, ...], data: Any) -> str:
    kind = err.get("type", "")
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1], data)
        hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        msg = "unknown key"
        if hint:
            msg += f" (did you mean '{hint[0]}'?)"
        elif allowed:
            msg += f" (allowed: {', '.join(sorted(allowed))})"
        return msg
    if kind == "union_tag_invalid":
        from optimize import registry

        tag = str(ctx.get("tag", ""))
        hint = difflib.get_close_matches(tag, registry.names(), n=1)
        extra = f" (did you mean '{hint[0]}'?)" if hint else ""
        return f"unknown pass type '{tag}'{extra}; known: {', '.join(registry.names())}"
    if kind == "union_tag_not_found":
        return "each pass needs a 'type' key"
    return config_messages.message(err)


def _allowed_keys(loc: tuple[Any, ...], data: Any) -> list[str]:
    """Field names of the model at `loc` (best effort; used only for 'did you mean')."""
    model: Any = PipelineConfig
    node = data
    i = 0
    while i < len(loc):
        part = loc[i]
        if isinstance(node, list) and isinstance(part, int):
            node = node[part] if part < len(node) else None
            if loc[:1] == ("passes",) and i == 1 and isinstance(node, dict):
                from optimize import registry

                try:
                    model = registry.get(str(node.get("type"))).config_cls
                except KeyError:
                    return []
                i += 2  # skip index and discriminator tag
                continue
            i += 1
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        sub = next((a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        model = sub if sub is not None else ann
        node = node.get(part) if isinstance(node, dict) else None
        i += 1
    fields = getattr(model, "model_fields", None)
    return [k for k in fields if k != "type"] if fields else []


def _yaml_path(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    # pydantic puts the union tag after a pass index: ('passes', 1, 'quantize', 'bits')
    if len(loc) >= 3 and loc[0] == "passes" and isinstance(loc[1], int):
        return loc[:2] + loc[3:]
    return loc


def _raise_validation(exc: ValidationError, doc: YamlDocument, overridden: list[tuple[Any, ...]]) -> None:
    errors = exc.errors()
    first = errors[0]
    loc = tuple(first["loc"])
    message = _friendly(first, loc, doc.data)
    union = config_messages.union_group(errors)
    if union is not None:  # one message for the value, not one per union member
        loc, message = union
        errors = [e for e in errors if tuple(e["loc"])[: len(loc)] != loc] + [first]
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    key = render_key_path(loc) if loc else None
    path = _yaml_path(loc)
    if any(path[: len(o)] == o for o in overridden):
        # the bad value came from --set, not from the file: point there, not at a file line
        raise ConfigError(message + more, file="--set", key=key) from None
    raise ConfigError(message + more, file=doc.file, line=doc.line_of(path), key=key) from None


# ---------------------------------------------------------------- overrides


def _parse_key(key: str) -> list[Any]:
    parts: list[Any] = []
    for raw in key.replace("[", ".").replace("]", "").split("."):
        if raw == "":
            raise ConfigError(f"bad --set key {key!r}", key=key)
        parts.append(int(raw) if raw.isdigit() else raw)
    return parts


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one `KEY=VALUE` (`hardware.threads=2`, `passes[0].sparsity=0.5`); VALUE is YAML."""
    if "=" not in assignment:
        raise ConfigError(f"--set expects KEY=VALUE, got {assignment!r}")
    key, _, raw = assignment.partition("=")
    parts = _parse_key(key.strip())
    try:
        value = yaml_safe_load(raw) if raw.strip() else None  # 1e-4 is a float, as in the file
    except yaml.YAMLError:
        raise ConfigError(f"--set {key}: value is not valid YAML: {raw!r}") from None
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                raise ConfigError(f"--set {key}: no list item [{part}] here", key=key)
            node = node[part]
        else:
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: '{part}' is not inside a mapping", key=key)
            node = node.setdefault(part, [] if isinstance(nxt, int) else {})
    last = parts[-1]
    if isinstance(last, int):
        if not isinstance(node, list) or last >= len(node):
            raise ConfigError(f"--set {key}: no list item [{last}] here", key=key)
        node[last] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"--set {key}: '{last}' is not inside a mapping", key=key)


# ---------------------------------------------------------------- loading


def validate_document(doc: YamlDocument, overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
    data = copy.deepcopy(doc.data)
    if data is None:
        raise ConfigError("config is empty; it needs at least 'schema_version: 1' and 'passes:'", file=doc.file, line=1)
    if not isinstance(data, dict):
        raise ConfigError("config must be a mapping at the top level", file=doc.file, line=1)
    overridden: list[tuple[Any, ...]] = []
    for assignment in overrides:
        apply_override(data, assignment)
        overridden.append(tuple(_parse_key(assignment.partition("=")[0].strip())))
    if "schema_version" not in data:
        raise ConfigError("required key missing; add 'schema_version: 1'", file=doc.file, line=1, key="schema_version")
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        _raise_validation(exc, YamlDocument(data, doc.lines, doc.file), overridden)


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
    return validate_document(read_yaml(path), overrides)


def load_config_text(text: str, overrides: list[str] | tuple[str, ...] = (), file: str = "<string>") -> PipelineConfig:
    return validate_document(parse_yaml(text, file), overrides)


def dump_config(cfg: PipelineConfig) -> dict[str, Any]:
    """The effective config as plain data (what --dry-run prints and the report records)."""
    return cfg.model_dump(mode="json")
