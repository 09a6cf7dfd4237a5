"""optimize.config: schema validation with FILE:LINE: key.path errors, overrides, shipped configs."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import ROOT

from optimize.config import apply_override, dump_config, json_schema, load_config, load_config_text
from optimize.errors import ConfigError

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))

BASE = """\
schema_version: 1
passes:
  - type: prune
    sparsity: 0.5
  - type: quantize
    mode: dynamic
"""


def config_error(text: str, overrides: tuple[str, ...] = (), file: str = "x.yaml") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, overrides, file=file)
    return info.value


# ---------------------------------------------------------------- valid input


def test_valid_config_loads_with_defaults() -> None:
    cfg = load_config_text(BASE, file="x.yaml")
    assert cfg.schema_version == 1
    assert [p.type for p in cfg.passes] == ["prune", "quantize"]
    assert cfg.passes[0].sparsity == 0.5
    assert cfg.passes[1].mode == "dynamic"
    assert cfg.passes[1].bits == 8
    assert cfg.hardware.device == "cpu"
    assert cfg.data.batch_size == 64
    assert cfg.gates.min_speedup is None
    dumped = dump_config(cfg)
    assert dumped["passes"][0]["type"] == "prune"
    assert dumped["passes"][1]["type"] == "quantize"


def test_scientific_notation_lr_is_a_float() -> None:
    # PyYAML (YAML 1.1) reads `1e-4` as a string; the schema must still accept it as a number.
    cfg = load_config_text("schema_version: 1\npasses:\n  - type: distill\n    lr: 1e-4\n")
    assert isinstance(cfg.passes[0].lr, float)
    assert cfg.passes[0].lr == pytest.approx(1e-4)


def test_load_config_from_file_uses_the_path_in_errors(tmp_path: Path) -> None:
    p = tmp_path / "pipe.yaml"
    p.write_text(BASE + "    bits: 3\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(p)
    assert str(info.value) == f"{p}:7: passes[1].quantize.bits: must be one of 1, 2, 4, 8"
    assert info.value.file == str(p)
    assert info.value.line == 7
    assert info.value.exit_code == 2


def test_load_config_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.yaml")


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_validates(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.schema_version == 1
    assert len(cfg.passes) >= 1


def test_shipped_configs_exist() -> None:
    names = {p.name for p in CONFIGS}
    assert {"default.yaml", "cpu-int8.yaml", "onnx-only.yaml", "gpu.yaml"} <= names


def test_default_config_is_prune_quantize_distill() -> None:
    cfg = load_config(ROOT / "configs" / "default.yaml")
    assert [p.type for p in cfg.passes] == ["prune", "quantize", "distill"]


# ---------------------------------------------------------------- errors: FILE:LINE: key: message


def test_unknown_key_with_did_you_mean() -> None:
    err = config_error(BASE.replace("    sparsity: 0.5", "    sparsty: 0.5"))
    assert str(err) == "x.yaml:4: passes[0].prune.sparsty: unknown key (did you mean 'sparsity'?)"


def test_unknown_top_level_key_with_did_you_mean() -> None:
    err = config_error(BASE + "hardwre:\n  threads: 2\n")
    assert str(err) == "x.yaml:7: hardwre: unknown key (did you mean 'hardware'?)"


def test_unknown_nested_key_with_did_you_mean() -> None:
    err = config_error(BASE + "hardware:\n  thread: 2\n")
    assert str(err) == "x.yaml:8: hardware.thread: unknown key (did you mean 'threads'?)"


def test_unknown_pass_type_with_did_you_mean() -> None:
    err = config_error(BASE.replace("type: quantize", "type: quantise"))
    msg = str(err)
    assert msg.startswith("x.yaml:5: passes[1]: unknown pass type 'quantise' (did you mean 'quantize'?)")
    assert "known: prune, quantize, distill" in msg


def test_pass_without_type() -> None:
    err = config_error("schema_version: 1\npasses:\n  - sparsity: 0.5\n")
    assert str(err) == "x.yaml:3: passes[0]: each pass needs a 'type' key"


def test_wrong_type_top_level() -> None:
    err = config_error("schema_version: 1\nseed: abc\npasses: []\n")
    assert str(err).startswith("x.yaml:2: seed: ")
    assert "integer" in str(err)


def test_wrong_type_in_a_pass() -> None:
    err = config_error(BASE.replace("sparsity: 0.5", "sparsity: lots"))
    assert str(err).startswith("x.yaml:4: passes[0].prune.sparsity: ")
    assert "number" in str(err)


@pytest.mark.parametrize(
    ("value", "message"),
    [("1.5", "must be less than 1.0 (got 1.5)"), ("-0.1", "must be at least 0.0 (got -0.1)")],
)
def test_sparsity_out_of_range(value: str, message: str) -> None:
    err = config_error(BASE.replace("sparsity: 0.5", f"sparsity: {value}"))
    assert str(err) == f"x.yaml:4: passes[0].prune.sparsity: {message}"


def test_bits_3_is_rejected_with_the_allowed_values() -> None:
    err = config_error(BASE + "    bits: 3\n")
    assert str(err) == "x.yaml:7: passes[1].quantize.bits: must be one of 1, 2, 4, 8"
    assert err.key == "passes[1].quantize.bits"
    assert err.line == 7


def test_out_of_range_in_a_section() -> None:
    err = config_error(BASE + "hardware:\n  threads: 0\n")
    assert str(err) == "x.yaml:8: hardware.threads: must be greater than 0 (got 0)"


def test_literal_in_a_section() -> None:
    err = config_error(BASE + "hardware:\n  device: tpu\n")
    assert str(err) == "x.yaml:8: hardware.device: must be one of 'cpu', 'cuda', 'auto'"


def test_cross_field_rule_fails_at_load_time() -> None:
    err = config_error("schema_version: 1\npasses:\n  - type: prune\n    method: nm\n    n: 4\n    m: 4\n")
    assert str(err).startswith("x.yaml:3: passes[0].prune: ")
    assert "n (4) must be smaller than m (4)" in str(err)


def test_several_errors_say_how_many_more() -> None:
    err = config_error(BASE.replace("sparsity: 0.5", "sparsity: 2") + "    bits: 3\n")
    assert str(err).startswith("x.yaml:4: passes[0].prune.sparsity: ")
    assert str(err).endswith("(+1 more)")


def test_missing_schema_version() -> None:
    err = config_error("passes: []\n")
    assert str(err) == "x.yaml:1: schema_version: required key missing; add 'schema_version: 1'"


def test_schema_version_2() -> None:
    err = config_error("name: n\nschema_version: 2\npasses: []\n")
    assert str(err) == "x.yaml:2: schema_version: must be 1"


def test_missing_passes() -> None:
    err = config_error("schema_version: 1\n")
    assert str(err).startswith("x.yaml:1: passes: required key missing")


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_top_level_not_a_mapping(text: str) -> None:
    err = config_error(text)
    assert str(err) == "x.yaml:1: config must be a mapping at the top level"


def test_empty_config() -> None:
    err = config_error("# nothing\n")
    assert str(err).startswith("x.yaml:1: config is empty")


def test_duplicate_key_through_load_config_text() -> None:
    err = config_error(BASE + "seed: 1\nseed: 2\n")
    assert str(err).startswith("x.yaml:8: seed: duplicate key 'seed' (first at line 7)")


# ---------------------------------------------------------------- --set overrides


@pytest.mark.parametrize("assignment", ["passes[0].sparsity=0.3", "passes.0.sparsity=0.3"])
def test_override_pass_option(assignment: str) -> None:
    cfg = load_config_text(BASE, [assignment], file="x.yaml")
    assert cfg.passes[0].sparsity == pytest.approx(0.3)
    assert cfg.passes[1].mode == "dynamic"  # untouched


def test_override_creates_a_section() -> None:
    cfg = load_config_text(BASE, ["hardware.threads=2", "seed=7", "gates.min_speedup=1.5"])
    assert cfg.hardware.threads == 2
    assert cfg.seed == 7
    assert cfg.gates.min_speedup == pytest.approx(1.5)


def test_override_replaces_existing_value() -> None:
    cfg = load_config_text(BASE + "hardware:\n  threads: 4\n", ["hardware.threads=1"])
    assert cfg.hardware.threads == 1


def test_override_value_is_yaml() -> None:
    cfg = load_config_text(BASE, ["passes[0].include=[conv*, fc1]", "hardware.device=auto"])
    assert cfg.passes[0].include == ["conv*", "fc1"]
    assert cfg.hardware.device == "auto"


def test_override_does_not_touch_the_parsed_document() -> None:
    from optimize.config import validate_document
    from optimize.yaml_source import parse_yaml

    doc = parse_yaml(BASE, "x.yaml")
    validate_document(doc, ["passes[0].sparsity=0.1"])
    assert doc.data["passes"][0]["sparsity"] == 0.5


@pytest.mark.parametrize(
    ("assignment", "fragment"),
    [
        ("passes[5].x=1", "no list item [5]"),
        ("nokey", "expects KEY=VALUE"),
        ("a..b=1", "bad --set key 'a..b'"),
        ("passes.x=1", "'x' is not inside a mapping"),
        ("seed=[1", "not valid YAML"),
    ],
)
def test_bad_override_raises_config_error(assignment: str, fragment: str) -> None:
    err = config_error(BASE, (assignment,))
    assert fragment in str(err)
    assert err.exit_code == 2


def test_override_to_an_invalid_value_is_validated() -> None:
    err = config_error(BASE, ("passes[0].sparsity=1.5",))
    assert err.key == "passes[0].prune.sparsity"
    assert "must be less than 1.0 (got 1.5)" in str(err)
    assert str(err).startswith("--set: ")  # the bad value came from the override, not from the file


def test_override_of_a_key_absent_from_the_file_names_the_override() -> None:
    err = config_error(BASE, ("passes[1].bits=3",))
    assert str(err) == "--set: passes[1].quantize.bits: must be one of 1, 2, 4, 8"


def test_override_with_an_unknown_key_is_rejected() -> None:
    err = config_error(BASE, ("hardware.thread=2",))
    assert err.key == "hardware.thread"
    assert "did you mean 'threads'" in str(err)


def test_apply_override_on_plain_data() -> None:
    data: dict = {"passes": [{"type": "prune"}]}
    apply_override(data, "passes[0].sparsity=0.25")
    apply_override(data, "measure.repeat=10")
    apply_override(data, "output.path=")
    assert data == {
        "passes": [{"type": "prune", "sparsity": 0.25}],
        "measure": {"repeat": 10},
        "output": {"path": None},
    }


# ---------------------------------------------------------------- JSON schema


def _find(obj, key):
    if isinstance(obj, dict):
        if key in obj:
            yield obj[key]
        for v in obj.values():
            yield from _find(v, key)
    elif isinstance(obj, list):
        for v in obj:
            yield from _find(v, key)


def test_json_schema_has_passes_and_a_discriminator() -> None:
    from optimize import registry

    schema = json_schema()
    assert "passes" in schema["properties"]
    assert schema["properties"]["passes"]["type"] == "array"
    assert "schema_version" in schema["required"]
    discriminators = list(_find(schema, "discriminator"))
    assert discriminators, "the passes union has no discriminator"
    disc = discriminators[0]
    assert disc["propertyName"] == "type"
    assert set(disc["mapping"]) == set(registry.names())


def test_json_schema_forbids_extra_keys_and_describes_fields() -> None:
    schema = json_schema()
    defs = schema["$defs"]
    hw = defs["HardwareSection"]
    assert hw["additionalProperties"] is False
    assert all(prop.get("description") for prop in hw["properties"].values())
    prune = defs["prune"]
    assert prune["additionalProperties"] is False
    sparsity = prune["properties"]["sparsity"]  # a number in [0, 1), or auto
    number = next(b for b in sparsity.get("anyOf", [sparsity]) if b.get("type") == "number")
    assert number["exclusiveMaximum"] == 1.0 and number["minimum"] == 0.0
    assert {"const": "auto", "type": "string"} in sparsity["anyOf"]
