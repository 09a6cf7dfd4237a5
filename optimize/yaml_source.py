"""YAML reading that keeps line numbers and refuses what PyYAML would silently accept.

PyYAML's `safe_load` drops source positions and keeps the last of duplicate keys without a word;
a config error must name the file and line, and a duplicated key is almost always a mistake, so
this module composes the node tree itself (still only safe tags) and records where each key
path came from.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from optimize.errors import ConfigError

KeyPath = tuple[Any, ...]


class ConfigLoader(yaml.SafeLoader):
    """SafeLoader (only plain tags) that reads `1e-4` and `5E+3` as floats, as YAML 1.2 does.

    PyYAML follows YAML 1.1, where a float needs a dot (`1.0e-4`), so `lr: 1e-4` arrives as the
    string "1e-4": pydantic would coerce it for a float field, but anywhere a string is also
    accepted it would stay a string. Users write 1e-4; read it as the number they meant.
    """


ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


MAX_DEPTH = 64  # nesting levels a config may use (PyYAML recurses once per level: a deep file crashes it)


def safe_load(text: str) -> Any:
    """`yaml.safe_load` with `ConfigLoader` (used for `--set` values)."""
    try:
        return yaml.load(text, Loader=ConfigLoader)  # noqa: S506 - ConfigLoader is a SafeLoader
    except RecursionError:
        raise yaml.YAMLError("nested too deeply") from None


class YamlDocument:
    """A parsed YAML document plus the line (1-based) of every key path in it."""

    def __init__(self, data: Any, lines: dict[KeyPath, int], file: str | None) -> None:
        self.data = data
        self.lines = lines
        self.file = file

    def line_of(self, path: KeyPath) -> int | None:
        """Line of the deepest prefix of `path` that the document contains."""
        path = tuple(path)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), None)


def _walk(
    node: yaml.Node, path: KeyPath, lines: dict[KeyPath, int], file: str | None, walked: set[int] | None = None
) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if len(path) > MAX_DEPTH:
        raise ConfigError(f"nested deeper than {MAX_DEPTH} levels", file=file, line=node.start_mark.line + 1)
    if walked is None:
        walked = set()
    if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
        # An alias is the same node object again: walk it once, or nested aliases
        # ("billion laughs") make this exponential. Paths below an alias fall back to its line.
        if id(node) in walked:
            return
        walked.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                raise ConfigError(
                    "mapping keys must be plain names, not lists or mappings", file=file, line=line, key=_render(path) or None
                )
            key = key_node.value
            if key in seen:
                raise ConfigError(
                    f"duplicate key {key!r} (first at line {seen[key]}); YAML would keep only the last",
                    file=file,
                    line=line,
                    key=_render(path + (key,)),
                )
            seen[key] = line
            lines[path + (key,)] = line
            _walk(value_node, path + (key,), lines, file, walked)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, path + (i,), lines, file, walked)


def _render(path: KeyPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse_yaml(text: str, file: str | None = None) -> YamlDocument:
    try:
        loader = ConfigLoader(text)
    except yaml.YAMLError as exc:  # the reader refuses control characters (NUL) before any parsing
        raise ConfigError(f"invalid YAML: {_one_line(exc)}", file=file) from None
    try:
        node = loader.get_single_node()
        if node is None:
            return YamlDocument(None, {}, file)
        lines: dict[KeyPath, int] = {}
        _walk(node, (), lines, file)
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        col = f", column {mark.column + 1}" if mark else ""
        problem = exc.problem or exc.context or "invalid YAML"
        if "could not determine a constructor" in str(exc):
            problem = f"tag not allowed ({problem.strip()}); only plain YAML is accepted"
        raise ConfigError(f"invalid YAML{col}: {problem}", file=file, line=line) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {_one_line(exc)}", file=file) from None
    except RecursionError:
        raise ConfigError(f"invalid YAML: nested deeper than {MAX_DEPTH} levels", file=file) from None
    finally:
        loader.dispose()
    return YamlDocument(data, lines, file)


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def read_yaml(path: str | Path) -> YamlDocument:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("config file not found", file=str(path)) from None
    except IsADirectoryError:
        raise ConfigError("is a directory; give a pipeline YAML file (e.g. configs/default.yaml)", file=str(path)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not a text file: byte {exc.start} is not UTF-8; a pipeline is a YAML text file",
                          file=str(path)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config: {exc}", file=str(path)) from None
    return parse_yaml(text, str(path))


render_key_path = _render
