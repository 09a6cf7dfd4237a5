"""Config errors in the tool's own words: strict booleans on every bool option, and every pydantic
error type the schema raises rendered without pydantic's wording."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import pytest
from pydantic import BaseModel

from optimize import registry
from optimize.config import PipelineConfig, load_config_text
from optimize.errors import ConfigError

PYDANTIC_WORDING = ("Input should be", "Value error,", "type=", "For further information", "errors.pydantic.dev")
PASS = "schema_version: 1\npasses:\n  - type: quantize\n    mode: dynamic\n"


def takes_bool(annotation: Any) -> bool:
    if get_origin(annotation) is Literal:
        return any(v is True for v in get_args(annotation))
    members = get_args(annotation) if get_origin(annotation) is not None else (annotation,)
    return bool in members or any(takes_bool(m) for m in members if get_origin(m) is Literal)


def submodel(annotation: Any) -> type[BaseModel] | None:
    members = get_args(annotation) if get_origin(annotation) is Union or "|" in repr(annotation) else (annotation,)
    return next((m for m in members if isinstance(m, type) and issubclass(m, BaseModel)), None)


def section_bool_fields(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Key paths of every bool option in the sections (nested mappings, not lists)."""
    for name, field in model.model_fields.items():
        if takes_bool(field.annotation):
            yield (*prefix, name)
        sub = submodel(field.annotation)
        if sub is not None:
            yield from section_bool_fields(sub, (*prefix, name))


def yaml_for(path: tuple[str, ...], value: str) -> tuple[str, int]:
    """PASS plus a nested mapping setting `path` to `value`, and the line of the value."""
    lines = PASS.splitlines()
    for depth, key in enumerate(path):
        lines.append("  " * depth + f"{key}:" + (f" {value}" if depth == len(path) - 1 else ""))
    return "\n".join(lines) + "\n", len(lines)


SECTION_BOOLS = sorted(section_bool_fields(PipelineConfig))
PASS_BOOLS = sorted(
    (name, field)
    for name, cls in registry.all_passes().items()
    for field, info in cls.config_cls.model_fields.items()
    if takes_bool(info.annotation)
)


def config_error(text: str, overrides: tuple[str, ...] = ()) -> str:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, overrides, file="x.yaml")
    return str(info.value)


# ---------------------------------------------------------------- strict booleans


def test_the_walk_finds_the_known_bool_options() -> None:
    assert {("output", "markdown"), ("output", "charts"), ("measure", "single_thread"), ("model", "tokenizer", "truncation")} <= set(SECTION_BOOLS)
    assert ("quantize", "per_channel") in PASS_BOOLS
    assert ("fp16", "keep_io_types") in PASS_BOOLS


@pytest.mark.parametrize("path", SECTION_BOOLS, ids=[".".join(p) for p in SECTION_BOOLS])
@pytest.mark.parametrize("bad", ['"yes"', '"true"', "1", '"on"'])
def test_section_bool_refuses_anything_but_true_false(path: tuple[str, ...], bad: str) -> None:
    text, line = yaml_for(path, bad)
    msg = config_error(text)
    assert msg.startswith(f"x.yaml:{line}: {'.'.join(path)}: expected true")
    assert msg.endswith(f", got {bad.replace(chr(34), chr(39))}")
    load_config_text(yaml_for(path, "false")[0])  # a real bool still validates


@pytest.mark.parametrize(("pass_name", "field"), PASS_BOOLS, ids=[f"{p}.{f}" for p, f in PASS_BOOLS])
def test_pass_bool_refuses_a_string(pass_name: str, field: str) -> None:
    text = f"schema_version: 1\npasses:\n  - type: {pass_name}\n    {field}: \"yes\"\n"
    msg = config_error(text)
    assert msg.startswith(f"x.yaml:4: passes[0].{pass_name}.{field}: expected true")
    assert msg.endswith(", got 'yes'")


def test_exact_line_for_per_channel_yes() -> None:
    assert config_error(PASS + '    per_channel: "yes"\n') == (
        "x.yaml:5: passes[0].quantize.per_channel: expected true or false, got 'yes'"
    )


def test_bool_with_auto_names_the_choices() -> None:
    msg = config_error(PASS + '    reduce_range: "on"\n')
    assert msg == "x.yaml:5: passes[0].quantize.reduce_range: expected true, false or 'auto', got 'on'"
    cfg = load_config_text(PASS + "    reduce_range: auto\noutput:\n  charts: auto\n")
    assert cfg.passes[0].reduce_range == "auto"


def test_yaml_booleans_and_set_overrides_still_work() -> None:
    # unquoted yes/no are booleans in YAML 1.1 (PyYAML): the user wrote a bool, not a string
    cfg = load_config_text(PASS + "    per_channel: no\n")
    assert cfg.passes[0].per_channel is False
    cfg = load_config_text(PASS, ("passes[0].per_channel=false", "output.markdown=true", "measure.single_thread=no"))
    assert (cfg.passes[0].per_channel, cfg.output.markdown, cfg.measure.single_thread) == (False, True, False)
    msg = config_error(PASS, ('passes[0].per_channel="yes"',))
    assert msg == "--set: passes[0].quantize.per_channel: expected true or false, got 'yes'"


def test_a_bool_is_not_a_number() -> None:
    assert config_error(PASS + "hardware:\n  threads: true\n") == "x.yaml:6: hardware.threads: expected a number, got true"


def test_validate_exits_2_with_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "p.yaml"
    cfg.write_text(PASS + '    per_channel: "yes"\n', encoding="utf-8")
    r = subprocess.run([sys.executable, "-m", "cli", "validate", str(cfg)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"error: {cfg}:5: passes[0].quantize.per_channel: expected true or false, got 'yes'"]


# ---------------------------------------------------------------- every error type, in our words

ERROR_CASES = [
    # (pydantic error type, YAML, expected message)
    ("literal_error (one choice)", "schema_version: 2\npasses: []\n", "x.yaml:1: schema_version: must be 1"),
    ("literal_error", PASS + "hardware:\n  device: tpu\n", "x.yaml:6: hardware.device: must be one of 'cpu', 'cuda', 'auto'"),
    ("int_parsing", PASS + "hardware:\n  threads: many\n", "x.yaml:6: hardware.threads: expected an integer, got 'many'"),
    ("int_from_float", PASS + "hardware:\n  threads: 2.5\n", "x.yaml:6: hardware.threads: expected an integer, got 2.5"),
    ("int_type", PASS + "hardware:\n  threads: [1]\n", "x.yaml:6: hardware.threads: expected an integer, got [1]"),
    ("float_parsing", PASS + "gates:\n  min_speedup: fast\n", "x.yaml:6: gates.min_speedup: expected a number, got 'fast'"),
    ("float_type", PASS + "gates:\n  min_speedup: [1]\n", "x.yaml:6: gates.min_speedup: expected a number, got [1]"),
    ("greater_than", PASS + "hardware:\n  threads: 0\n", "x.yaml:6: hardware.threads: must be greater than 0 (got 0)"),
    ("less_than_equal", PASS + "hardware:\n  threads: 5000\n", "x.yaml:6: hardware.threads: must be at most 1024 (got 5000)"),
    ("greater_than_equal", PASS + "output:\n  opset: 5\n", "x.yaml:6: output.opset: must be at least 13 (got 5)"),
    ("less_than", "schema_version: 1\npasses:\n  - type: prune\n    sparsity: 1.5\n",
     "x.yaml:4: passes[0].prune.sparsity: must be less than 1.0 (got 1.5)"),
    ("missing", "schema_version: 1\n", "x.yaml:1: passes: required key missing"),
    ("extra_forbidden", PASS + "hardware:\n  thread: 2\n", "x.yaml:6: hardware.thread: unknown key (did you mean 'threads'?)"),
    ("string_type", PASS + "name: [1, 2]\n", "x.yaml:5: name: expected a string, got [1, 2]"),
    ("list_type", PASS + "model:\n  outputs: abc\n", "x.yaml:6: model.outputs: expected a list, got 'abc'"),
    ("dict_type", PASS + "model:\n  input_shapes: [1, 2]\n",
     "x.yaml:6: model.input_shapes: expected a mapping (key: value), got [1, 2]"),
    ("model_type", PASS + "hardware: 5\n", "x.yaml:5: hardware: expected a mapping (key: value), got 5"),
    ("model_type (pass)", "schema_version: 1\npasses:\n  - quantize\n",
     "x.yaml:3: passes[0]: expected a mapping (key: value), got 'quantize'"),
    ("string_too_short", PASS + "data:\n  eval:\n    source: builtin:digits\n    text_field: ''\n",
     "x.yaml:8: data.eval.text_field: must not be empty"),
    ("value_error", PASS + "model:\n  input_shapes:\n    x: [0, 3]\n",
     "x.yaml:6: model.input_shapes: input_shapes.x: every dim must be a positive integer, got [0, 3]"),
    ("union of int | str", PASS + "model:\n  inputs:\n    - name: x\n      shape: [[1], 3]\n",
     "x.yaml:8: model.inputs[0].shape[0]: expected an integer or a string, got [1]"),
    ("strict_bool", PASS + "    per_channel: 'true'\n", "x.yaml:5: passes[0].quantize.per_channel: expected true or false, got 'true'"),
]


@pytest.mark.parametrize(("kind", "text", "expected"), ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_error_type_in_the_tools_words(kind: str, text: str, expected: str) -> None:
    msg = config_error(text)
    assert not any(w in msg for w in PYDANTIC_WORDING), msg
    assert msg == expected


def test_more_errors_are_counted_not_listed() -> None:
    msg = config_error(PASS + "hardware:\n  device: tpu\n  threads: many\n")
    assert msg == "x.yaml:6: hardware.device: must be one of 'cpu', 'cuda', 'auto' (+1 more)"


def test_unknown_error_type_falls_back_without_pydantic_wording() -> None:
    from optimize.config_messages import message

    msg = message({"type": "url_parsing", "msg": "Input should be a valid URL, empty input", "input": ""})
    assert msg == "must be a valid URL, empty input"
    assert message({"type": "value_error", "msg": "Value error, bad", "ctx": {}}) == "bad"
