"""`optimize inspect` at the terminal: human numbers, inputs and outputs with symbolic dims
called out, opset and producer. Keys this view does not know are shown generically."""

from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from cli.humanize import human_bytes, human_count, human_fraction
from cli.render import counts_table, data_renderable, new_table, spaced

SHOWN = {"model", "form", "producer", "ir_version", "opset", "bytes", "weights", "nonzero_weights", "sparsity",
         "quantization_ratio", "stored_quantization_ratio", "parameters", "inputs", "outputs", "ops", "weight_dtypes"}


def inspect_renderable(facts: dict[str, Any], title: str) -> RenderableType:
    parts: list[RenderableType] = [Group(Text(title, style="bold underline"), summary_grid(facts))]
    for key in ("inputs", "outputs"):
        if isinstance(facts.get(key), list) and facts[key]:
            parts.append(io_table(key.capitalize(), facts[key]))
    symbolic = symbolic_dims(facts)
    if symbolic:
        parts.append(Text(f"symbolic dims (*): {', '.join(symbolic)}; give sizes with --input-shape NAME=DIMS",
                          style="yellow"))
    ops = facts.get("ops")
    if isinstance(ops, dict) and ops:
        parts.append(counts_table("Ops", ops))
    rest = {k: v for k, v in facts.items() if k not in SHOWN}
    if rest:
        parts.append(data_renderable(rest))
    return Group(*spaced(parts))


def summary_grid(facts: dict[str, Any]) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    rows = [("form", facts.get("form")), ("producer", producer(facts)), ("size", _maybe(facts, "bytes", human_bytes))]
    if facts.get("parameters") is not None:
        rows.append(("parameters", human_count(facts["parameters"])))
    rows.append(("weights", weights_line(facts)))
    dtypes = facts.get("weight_dtypes")
    if isinstance(dtypes, dict) and dtypes:
        rows.append(("weight dtypes", ", ".join(f"{k} {human_count(v)}" for k, v in dtypes.items())))
    if facts.get("quantization_ratio") is not None:
        line = f"{facts['quantization_ratio']:.3g} of float32's bits"
        if facts.get("stored_quantization_ratio") is not None:
            line += f" (stored: {facts['stored_quantization_ratio']:.3g})"
        rows.append(("quantization", line))
    for name, value in rows:
        if value:
            grid.add_row(name, Text(str(value)))
    return grid


def producer(facts: dict[str, Any]) -> str | None:
    bits = []
    opset = facts.get("opset")
    if isinstance(opset, dict) and opset:
        main = opset.get("ai.onnx")
        others = [f"{k} {v}" for k, v in opset.items() if k != "ai.onnx"]
        bits.append("opset " + ", ".join(([str(main)] if main is not None else []) + others))
    if facts.get("ir_version") is not None:
        bits.append(f"IR {facts['ir_version']}")
    name = facts.get("producer")
    if not name and not bits:
        return None
    return f"{name or 'unknown'}" + (f" ({', '.join(bits)})" if bits else "")


def weights_line(facts: dict[str, Any]) -> str | None:
    total = facts.get("weights")
    if total is None:
        return None
    line = human_count(total)
    extra = []
    if facts.get("nonzero_weights") is not None:
        extra.append(f"{human_count(facts['nonzero_weights'])} non-zero")
    if facts.get("sparsity") is not None:
        extra.append(f"sparsity {human_fraction(facts['sparsity'])}")
    return line + (f" ({'; '.join(extra)})" if extra else "")


def io_table(title: str, rows: list[Any]) -> Table:
    t = new_table(title, ["name", "shape", "dtype"], nowrap=("shape", "dtype"))
    for row in rows:
        if not isinstance(row, dict):  # a name only
            t.add_row(Text(str(row)), "?", "")
            continue
        shape = shape_text(row.get("shape"))
        if row.get("example_shape"):
            shape += f" (example {shape_text(row['example_shape'])})"
        t.add_row(Text(str(row.get("name"))), Text(shape), Text(str(row.get("dtype") or "")))
    return t


def shape_text(shape: Any) -> str:
    """[batch, 3, 224, 224] → `batch* × 3 × 224 × 224`: a symbolic dim is marked with *."""
    if not isinstance(shape, list):
        return "?"
    if not shape:
        return "scalar"
    return " × ".join(f"{d}*" if isinstance(d, str) else str(d) for d in shape)


def symbolic_dims(facts: dict[str, Any]) -> list[str]:
    found: dict[str, None] = {}
    for key in ("inputs", "outputs"):
        for row in facts.get(key) or []:
            if isinstance(row, dict) and isinstance(row.get("shape"), list):
                for d in row["shape"]:
                    if isinstance(d, str) and d != "?":
                        found.setdefault(f"{d} ({row.get('name')})", None)
    return list(found)


def _maybe(facts: dict[str, Any], key: str, fmt: Any) -> str | None:
    return fmt(facts[key]) if facts.get(key) is not None else None
