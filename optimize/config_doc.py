"""Renders docs/config.md from the config schema itself, so the reference cannot drift from the
code (a test compares the file with this output). Regenerate: `python -m optimize.config_doc`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

HEADER = """# Configuration reference

A pipeline is a YAML file validated against a strict schema: unknown keys are errors (with a
"did you mean"), values are range-checked, and errors read `FILE:LINE: key.path: message`.
`optimize schema` prints the JSON Schema; `optimize validate FILE` checks a file; `--set KEY=VALUE`
overrides any field from the command line (`--set passes[0].sparsity=0.3`, `--set hardware.threads=1`).
This page is generated from the schema (`python -m optimize.config_doc > docs/config.md`).

```yaml
schema_version: 1          # required
name: my-pipeline          # optional
seed: 0
model: {...}
data: {...}
hardware: {...}
measure: {...}
output: {...}
gates: {...}
passes:
  - type: prune            # the pass name, then its options
    sparsity: 0.5
```
"""


def _type_name(ann: Any) -> str:
    import re

    text = str(ann).replace("typing.", "").replace("<class '", "").replace("'>", "")
    text = re.sub(r"[\w.]*\.(\w+(?:Config|Shape))\b", r"\1", text)  # drop module paths
    text = re.sub(r"Annotated\[(\w+), FieldInfo\(.*?\]\)\]", r"\1", text)  # bounds are shown after the meaning
    text = re.sub(r"Literal\[([^\]]*)\]", lambda m: "one of " + m.group(1).replace("'", ""), text)
    text = re.sub(r"^Union\[(\w+), one of (\w+)\]$", r"\1 or \2", text)
    return text.replace("NoneType", "null")


def _default(field: Any) -> str:
    if field.default is PydanticUndefined:
        if field.default_factory is None:
            return "required"
        try:
            value = field.default_factory()
        except TypeError:  # a factory that wants the validated data
            return "(computed)"
        return f"`{value!r}`".replace("'", "") if value not in ([], {}) and not isinstance(value, BaseModel) else "(empty)"
    return "null" if field.default is None else f"`{field.default!r}`".replace("'", "")


def _table(model: type[BaseModel], skip: tuple[str, ...] = ()) -> list[str]:
    rows = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        desc = (field.description or "").replace("|", "\\|")
        extras = []
        for meta in field.metadata:
            for attr, word in (("gt", ">"), ("ge", "≥"), ("lt", "<"), ("le", "≤")):
                if getattr(meta, attr, None) is not None:
                    extras.append(f"{word} {getattr(meta, attr)}")
        if extras:
            desc += f" ({', '.join(extras)})"
        type_text = _type_name(field.annotation).replace("|", "\\|")
        rows.append(f"| `{name}` | {type_text} | {_default(field)} | {desc} |")
    return rows


def render() -> str:
    from optimize import config as c
    from optimize import registry

    out = [HEADER]
    sections = [
        ("model", c.ModelSection), ("model.inputs[]", c.InputSpecConfig), ("model.tokenizer", c.TokenizerSection),
        ("data", c.DataSection),
        ("data.train / data.eval / data.calibration", c.DataSourceConfig), ("hardware", c.HardwareSection),
        ("measure", c.MeasureSection), ("output", c.OutputSection), ("gates", c.GatesSection),
    ]
    for title, model in sections:
        out += [f"## `{title}`", "", *_table(model), ""]
    out += ["## Passes", ""]
    for name, cls in registry.all_passes().items():
        accepts = " and ".join(sorted(cls.accepts))
        out += [f"### `{name}`", "", f"{cls.summary}. Runs on: {accepts}.", "", *_table(cls.config_cls, skip=("type",)), ""]
    return "\n".join(out).rstrip() + "\n"


def main() -> None:
    text = render()
    if len(sys.argv) > 1:
        Path(sys.argv[1]).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
