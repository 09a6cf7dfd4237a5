"""Terminal renderings: the report as rich tables, dry-run plans, pass options, inspect/bench facts.

The report's JSON (`Report.model_dump(mode="json")`) and Markdown (`optimize.report_md.to_markdown`)
live in the library; this module is the third rendering and the only one that uses rich. All text
that comes from users or models is inserted as `Text`, never as markup, so a `[` in a path or
message is printed as is.
"""

from __future__ import annotations

import json
import math
import types
import typing
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text


def gate_failure_lines(report: Any) -> list[str]:
    """One line per failed gate: `gate min_speedup: 0.82 < 1.0 FAILED`."""
    lines = []
    for g in getattr(report, "gates", None) or []:
        if g.passed:
            continue
        if g.message.startswith(f"{g.name}:") and g.message.rstrip().endswith("FAILED"):
            lines.append(f"gate {g.message.strip()}")  # the library's wording, with units
            continue
        if g.value is None:
            lines.append(f"gate {g.name}: not measured (limit {fmt_number(g.limit)}) FAILED")
            continue
        op = "<" if g.name.startswith("min_") else ">" if g.name.startswith("max_") else "vs"
        lines.append(f"gate {g.name}: {fmt_number(g.value)} {op} {fmt_number(g.limit)} FAILED")
    return lines


def gate_passed_lines(report: Any) -> list[str]:
    """One line per passed gate: `gate min_sparsity: 0.5 >= 0.4 passed`."""
    lines = []
    for g in getattr(report, "gates", None) or []:
        if not g.passed:
            continue
        if g.message.startswith(f"{g.name}:"):
            lines.append(f"gate {g.message.strip()} passed")
        else:
            op = ">=" if g.name.startswith("min_") else "<=" if g.name.startswith("max_") else "vs"
            lines.append(f"gate {g.name}: {fmt_number(g.value)} {op} {fmt_number(g.limit)} passed")
    return lines


def github_error(message: str, title: str = "optimize gate") -> str:
    """A GitHub Actions workflow command that shows `message` as an error annotation."""

    def data(s: str) -> str:
        return s.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")

    def prop(s: str) -> str:
        return data(s).replace(":", "%3A").replace(",", "%2C")

    return f"::error title={prop(title)}::{data(message)}"


# ---------------------------------------------------------------- dry run


def plan_to_dict(plan: Any) -> dict[str, Any]:
    """The --dry-run --json document: config, steps, model, output, report."""
    doc = {
        "config": plan.config_dump,
        "steps": [_plain(s) for s in plan.steps],
        "model": plan.model,
        "output": str(plan.output_path),
        "report": str(plan.report_path),
    }
    if getattr(plan, "device", None):
        doc["device"] = plan.device
    doc["notes"] = list(getattr(plan, "notes", None) or [])
    return doc


def plan_yaml(plan: Any) -> str:
    """The resolved config as YAML, headed by the plan as comments, so the output is a config file."""
    import yaml

    lines = [
        "# optimize run --dry-run: the resolved config; run it with `optimize run -c FILE`",
        f"# model:  {plan.model}",
        f"# output: {plan.output_path}",
        f"# report: {plan.report_path}",
    ]
    if getattr(plan, "device", None):
        lines.append(f"# device: {plan.device}")
    lines.append("# steps:")
    for s in plan.steps:
        d = _plain(s)
        index = "-" if d.get("index") is None else str(d["index"])
        inserted = " (inserted" + (f": {d['why']}" if d.get("why") else "") + ")" if d.get("inserted") else ""
        lines.append(f"#   {index:>2}  {d.get('type', '?'):<10} {d.get('form_in')} → {d.get('form_out')}{inserted}")
    for note in getattr(plan, "notes", None) or []:
        lines.append(f"# note: {_one_line(str(note))}")
    config = dict(plan.config_dump)
    if isinstance(config.get("passes"), list):  # `type:` first reads like a hand-written file
        config["passes"] = [
            {"type": p["type"], **{k: v for k, v in p.items() if k != "type"}} if isinstance(p, dict) and "type" in p else p
            for p in config["passes"]
        ]
    body = yaml.safe_dump(config, sort_keys=False, allow_unicode=True, default_flow_style=False)
    return "\n".join(lines) + "\n" + body


# ---------------------------------------------------------------- passes


def type_name(annotation: Any) -> str:
    """A short, readable name for a pydantic field annotation: `dynamic|static`, `int | None`."""
    if annotation is type(None):
        return "None"
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return "|".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(type_name(a) for a in args)}]" if args else name
    return getattr(annotation, "__name__", str(annotation))


_BOUND_SYMBOLS = (("gt", ">"), ("ge", "≥"), ("lt", "<"), ("le", "≤"), ("multiple_of", "×"))


def _constraints(field: Any) -> str:
    found = []
    for meta in getattr(field, "metadata", []):
        for attr, sym in _BOUND_SYMBOLS:
            value = getattr(meta, attr, None)
            if value is not None:
                found.append(f"{sym}{value}")
        for attr in ("min_length", "max_length"):
            value = getattr(meta, attr, None)
            if value is not None:
                found.append(f"{attr}={value}")
    return ", ".join(found)


def pass_options(config_cls: Any) -> list[dict[str, Any]]:
    """The options of a pass's config class as plain data (name, type, default, ...)."""
    from pydantic_core import PydanticUndefined

    options = []
    for name, field in config_cls.model_fields.items():
        if name == "type":
            continue
        required = field.is_required()
        if required:
            default: Any = None
        elif field.default_factory is not None:
            try:
                default = field.default_factory()  # type: ignore[call-arg]
            except TypeError:
                default = None
        else:
            default = None if field.default is PydanticUndefined else field.default
        options.append(
            {
                "name": name,
                "type": type_name(field.annotation),
                "constraints": _constraints(field) or None,
                "default": _jsonable(default),
                "required": required,
                "description": field.description or "",
            }
        )
    return options


def passes_table(rows: list[dict[str, Any]]) -> Table:
    t = new_table(None, ["pass", "accepts", "summary"])
    for r in rows:
        t.add_row(Text(r["name"], style="bold"), ", ".join(r["accepts"]), Text(r["summary"]))
    return t


def pass_detail(info: dict[str, Any]) -> RenderableType:
    head = Text()
    head.append(info["name"], style="bold")
    head.append(f"  accepts: {', '.join(info['accepts'])}")
    if info.get("trains"):
        head.append("  (trains)")
    head.append("\n" + info["summary"])
    t = new_table("Options", ["option", "type", "default", "description"])
    for o in info["options"]:
        kind = o["type"] + (f" ({o['constraints']})" if o["constraints"] else "")
        default = Text("required", style="bold") if o["required"] else Text(_yamlish(o["default"]))
        t.add_row(Text(o["name"], style="bold"), Text(kind), default, Text(o["description"]))
    return Group(head, Text(""), t)


# ---------------------------------------------------------------- generic data (inspect, bench)


def data_renderable(data: Any, title: str | None = None) -> RenderableType:
    """A readable rendering of JSON-like facts: scalars as a key/value grid, lists of mappings as
    tables, nested mappings as their own sections. Used for `inspect` and `bench`, whose shape the
    library owns."""
    if isinstance(data, dict):
        scalars = {k: v for k, v in data.items() if not isinstance(v, dict | list)}
        nested = {k: v for k, v in data.items() if isinstance(v, dict | list)}
        parts: list[RenderableType] = []
        if scalars:
            grid = Table.grid(padding=(0, 2))
            grid.add_column(style="bold")
            grid.add_column()
            for k, v in scalars.items():
                grid.add_row(Text(str(k)), Text(_yamlish(v)))
            parts.append(grid)
        for k, v in nested.items():
            parts.append(data_renderable(v, title=str(k)))
        body = Group(*spaced(parts))
        return Group(Text(title, style="bold underline"), body) if title else body
    if isinstance(data, list):
        if data and all(isinstance(x, dict) for x in data):
            columns: list[str] = []
            for row in data:
                columns += [c for c in row if c not in columns]
            t = new_table(title, columns)
            for row in data:
                t.add_row(*(Text(_yamlish(row.get(c, ""))) for c in columns))
            return t
        text = Text(", ".join(_yamlish(x) for x in data) if data else "(none)")
        return Group(Text(title, style="bold underline"), text) if title else text
    text = Text(_yamlish(data))
    return Group(Text(title, style="bold underline"), text) if title else text


def bench_renderable(result: dict[str, Any]) -> RenderableType:
    """`optimize bench` results: one row per batch, thread count and model.

    Expects `optimize.benchmark.bench_models`' shape ({"results": [{"batch", "threads", "model": {...},
    "vs": {...}, "speedup_vs", "parallel_speedup"}], "models": {...}, "memory": {...}}); anything
    else is shown generically."""
    rows = result.get("results") if isinstance(result, dict) else None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        return data_renderable(result)
    labels = {"model": "MODEL", "vs": "BASELINE"}
    has_vs = any("speedup_vs" in r for r in rows)
    columns = ["batch", "threads", "model", "p50 ms", "p90 ms", "p99 ms", "per s", "outliers"]
    columns += ["vs BASELINE"] * has_vs + ["parallel"]
    t = new_table("Latency" + SPEEDUP_VS * has_vs, columns, nowrap=tuple(columns))
    runtimes: dict[str, None] = {}
    for row in rows:
        for label in ("model", "vs"):
            timing = row.get(label)
            if not isinstance(timing, dict):
                continue
            first = label == "model"
            out = timing.get("outliers") or {}
            cells: list[Any] = [
                str(row.get("batch", "")), str(row.get("threads", "")), labels[label],
                _ms(timing.get("p50_ms")), _ms(timing.get("p90_ms")), _ms(timing.get("p99_ms")),
                f"{timing['throughput_per_s']:.1f}" if isinstance(timing.get("throughput_per_s"), int | float) else "",
                f"{out.get('count', 0)}/{timing.get('runs', '')}",
            ]
            runtimes.setdefault(f"{timing.get('runtime', '?')} ({timing.get('device', '?')})", None)
            if has_vs:
                cells.append(_ratio_interval(row) if first else "")
            cells.append(_ratio(row.get("parallel_speedup")) if first else "")
            t.add_row(*cells)
    head: dict[str, Any] = {labels.get(k, k): v for k, v in (result.get("models") or {}).items()}
    head.update({k: result[k] for k in ("device", "warmup", "repeat") if k in result})
    head["runtime"] = ", ".join(runtimes)
    hw = result.get("hardware") or {}
    if hw:
        head["cpu"] = f"{hw.get('cpu')} ({hw.get('cores')} cores; {', '.join(hw.get('isa') or [])})"
    mem = result.get("memory") or {}
    for k, v in mem.items():
        if isinstance(v, dict):
            head[f"{labels.get(k, k)} memory"] = (
                v.get("reason") or f"model {v['model_peak_mb']:.1f} MB (process peak {v.get('peak_rss_mb') or 0:.1f} MB)"
                if isinstance(v.get("model_peak_mb"), int | float) else f"process peak {v.get('peak_rss_mb') or 0:.1f} MB"
            )
        elif k != "what" and isinstance(v, int | float):
            head[k] = f"{v:.1f} MB"
    notes = [f"{k}: {v}" for k, v in (result.get("formulas") or {}).items() if has_vs or k != "speedup_vs"]
    if mem.get("what"):
        notes.append(f"memory: {mem['what']}")
    return Group(*spaced([data_renderable(head), t, Text("\n".join(notes), style="dim")]))


# One direction everywhere, as `run`'s speedup: BASELINE latency / MODEL latency, > 1 when MODEL is faster.
SPEEDUP_VS = " (vs BASELINE = BASELINE latency / MODEL latency; > 1: MODEL is faster)"


def _ratio_interval(row: dict[str, Any]) -> str:
    """`1.04x (0.95–1.12), no measurable change` when the row has an interval, else the plain ratio."""
    from optimize.speed import format_ratio

    value, interval = row.get("speedup_vs"), row.get("speedup_vs_interval")
    if isinstance(value, int | float) and isinstance(interval, list) and len(interval) == 2:
        return format_ratio(value, interval, row.get("speedup_vs_verdict"))
    return _ratio(value)


def _ms(x: Any) -> str:
    return f"{x:.3f}" if isinstance(x, int | float) else ""


def _ratio(x: Any) -> str:
    return f"{x:.2f}x" if isinstance(x, int | float) else ""


def counts_table(title: str, counts: dict[str, int]) -> Table:
    t = new_table(title, ["name", "count"])
    for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        t.add_row(Text(k), str(v))
    return t


# ---------------------------------------------------------------- helpers


def new_table(title: str | None, columns: list[str], nowrap: tuple[str, ...] = ()) -> Table:
    """A plain table; a cell wraps between words (rich folds a word only when it is wider than the column)."""
    t = Table(title=title, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD, show_edge=False)
    for c in columns:
        t.add_column(c, overflow="fold", no_wrap=c in nowrap)
    return t


def spaced(parts: list[RenderableType]) -> list[RenderableType]:
    out: list[RenderableType] = []
    for i, p in enumerate(parts):
        if i:
            out.append(Text(""))
        out.append(p)
    return out


def fmt_number(x: float | None) -> str:
    if x is None:
        return "null"
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return str(x)
    return f"{x:.4g}"


def _yamlish(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, dict | list):
        return json.dumps(v, default=str)
    return str(v)


def _plain(obj: Any) -> dict[str, Any]:
    if callable(getattr(obj, "describe", None)):
        return _jsonable(obj.describe())
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if isinstance(obj, dict):
        return _jsonable(obj)
    keys = ("index", "type", "form_in", "form_out", "inserted", "why")
    return _jsonable({k: getattr(obj, k) for k in keys if hasattr(obj, k)})


def _one_line(s: str) -> str:
    return " ".join(s.split())


def _jsonable(v: Any) -> Any:
    """Plain JSON data from config defaults and plan steps (paths, enums, tuples, sets)."""
    if v is None or isinstance(v, bool | int | float | str):
        return v
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple | set | frozenset):
        items = [_jsonable(x) for x in v]
        return sorted(items, key=str) if isinstance(v, set | frozenset) else items
    if hasattr(v, "model_dump"):
        return v.model_dump(mode="json")
    if hasattr(v, "value"):  # enums
        return _jsonable(v.value)
    return str(v)
