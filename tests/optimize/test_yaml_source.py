"""optimize.yaml_source: line numbers, duplicate keys, YAML errors with positions, no unsafe tags."""

from __future__ import annotations

from pathlib import Path

import pytest

from optimize.errors import ConfigError
from optimize.yaml_source import parse_yaml, read_yaml, render_key_path

TEXT = """\
schema_version: 1
name: demo
passes:
  - type: prune
    sparsity: 0.5
  - type: quantize

    mode: dynamic
hardware:
  threads: 2
"""


def test_records_the_line_of_every_key_path() -> None:
    doc = parse_yaml(TEXT, "p.yaml")
    assert doc.data == {
        "schema_version": 1,
        "name": "demo",
        "passes": [{"type": "prune", "sparsity": 0.5}, {"type": "quantize", "mode": "dynamic"}],
        "hardware": {"threads": 2},
    }
    assert doc.file == "p.yaml"
    assert doc.lines[("schema_version",)] == 1
    assert doc.lines[("name",)] == 2
    assert doc.lines[("passes",)] == 3
    assert doc.lines[("passes", 0)] == 4
    assert doc.lines[("passes", 0, "type")] == 4
    assert doc.lines[("passes", 0, "sparsity")] == 5
    assert doc.lines[("passes", 1)] == 6
    assert doc.lines[("passes", 1, "mode")] == 8  # after a blank line
    assert doc.lines[("hardware", "threads")] == 10


def test_line_of_falls_back_to_the_deepest_known_prefix() -> None:
    doc = parse_yaml(TEXT, "p.yaml")
    assert doc.line_of(("passes", 1, "bits")) == 6  # key not in the file: its pass item
    assert doc.line_of(("hardware", "device")) == 9
    assert doc.line_of(("nothing", "here")) == 1  # the document root


def test_render_key_path() -> None:
    assert render_key_path(("passes", 1, "quantize", "bits")) == "passes[1].quantize.bits"
    assert render_key_path(("hardware", "threads")) == "hardware.threads"
    assert render_key_path(()) == ""


def test_duplicate_key_names_both_lines() -> None:
    text = "schema_version: 1\nhardware:\n  threads: 2\n  device: cpu\n  threads: 4\n"
    with pytest.raises(ConfigError) as info:
        parse_yaml(text, "dup.yaml")
    err = info.value
    assert err.line == 5  # the second occurrence
    assert err.key == "hardware.threads"
    assert str(err).startswith("dup.yaml:5: hardware.threads: duplicate key 'threads'")
    assert "first at line 3" in str(err)


def test_duplicate_top_level_key() -> None:
    with pytest.raises(ConfigError, match=r"^d\.yaml:3: seed: duplicate key 'seed' \(first at line 1\)"):
        parse_yaml("seed: 1\nname: x\nseed: 2\n", "d.yaml")


def test_same_key_in_different_mappings_is_fine() -> None:
    doc = parse_yaml("a:\n  x: 1\nb:\n  x: 2\nl:\n  - x: 3\n  - x: 4\n", "ok.yaml")
    assert doc.data == {"a": {"x": 1}, "b": {"x": 2}, "l": [{"x": 3}, {"x": 4}]}
    assert doc.lines[("l", 1, "x")] == 7


@pytest.mark.parametrize(
    ("text", "line", "column"),
    [
        ("a: 1\nb: [1, 2\nc: 3\n", 3, 2),  # unclosed flow sequence
        ("a: 1\n  b: 2\n", 2, 4),  # bad indentation
        ("a:\n\t- 1\n", 2, 1),  # tab
    ],
)
def test_invalid_yaml_reports_line_and_column(text: str, line: int, column: int) -> None:
    with pytest.raises(ConfigError) as info:
        parse_yaml(text, "bad.yaml")
    assert info.value.line == line
    assert str(info.value).startswith(f"bad.yaml:{line}: invalid YAML, column {column}: ")


def test_python_object_tag_is_refused_and_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    text = f"schema_version: 1\nname: !!python/object/apply:os.system ['touch {marker}']\n"
    with pytest.raises(ConfigError) as info:
        parse_yaml(text, "evil.yaml")
    msg = str(info.value)
    assert msg.startswith("evil.yaml:2: invalid YAML, column 7: tag not allowed")
    assert "python/object/apply:os.system" in msg
    assert not marker.exists()


def test_python_object_tag_without_apply_is_refused() -> None:
    with pytest.raises(ConfigError, match="tag not allowed"):
        parse_yaml("a: !!python/object:builtins.dict {}\n", "evil.yaml")


@pytest.mark.parametrize("text", ["", "# only a comment\n", "\n\n"])
def test_empty_document(text: str) -> None:
    doc = parse_yaml(text, "empty.yaml")
    assert doc.data is None
    assert doc.lines == {}
    assert doc.line_of(("anything",)) is None


def test_several_documents_are_refused() -> None:
    with pytest.raises(ConfigError) as info:
        parse_yaml("a: 1\n---\nb: 2\n", "multi.yaml")
    assert info.value.line == 2
    assert "invalid YAML" in str(info.value)


def test_read_yaml_from_file(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("x: 1\ny:\n  z: 2\n", encoding="utf-8")
    doc = read_yaml(p)
    assert doc.data == {"x": 1, "y": {"z": 2}}
    assert doc.file == str(p)
    assert doc.lines[("y", "z")] == 3


def test_read_yaml_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        read_yaml(p)
    assert str(info.value) == f"{p}: config file not found"


def test_read_yaml_not_utf8(tmp_path: Path) -> None:
    p = tmp_path / "latin.yaml"
    p.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"not a text file: byte 9 is not UTF-8"):
        read_yaml(p)


@pytest.mark.parametrize("text", ["? [a, b]\n: 1\n", "schema_version: 1\nx:\n  ? {a: 1}\n  : 1\n"])
def test_non_scalar_mapping_keys_are_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match="mapping keys must be plain names"):
        parse_yaml(text, "k.yaml")


def test_anchors_aliases_and_merge_keys() -> None:
    doc = parse_yaml("base: &b\n  x: 1\nother:\n  <<: *b\n  y: 2\ncopy: *b\n", "a.yaml")
    assert doc.data == {"base": {"x": 1}, "other": {"x": 1, "y": 2}, "copy": {"x": 1}}
    assert doc.lines[("other", "y")] == 5
    assert doc.line_of(("copy", "x")) == 6  # below an alias: the alias's line


def test_nested_aliases_are_not_expanded_exponentially() -> None:
    import time

    # 9^7 ≈ 4.8 million leaves if every alias were walked again
    text = "a: &a [x, x, x, x, x, x, x, x, x]\n"
    prev = "a"
    for name in "bcdefg":
        text += f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]\n"
        prev = name
    start = time.perf_counter()
    doc = parse_yaml(text, "lol.yaml")
    assert time.perf_counter() - start < 1.0
    assert len(doc.data["g"]) == 9
