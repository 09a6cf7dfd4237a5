"""`bench A --vs B`: B is the baseline and a ratio above 1 means A is faster, in the JSON and the table
(measured on two real ONNX models, one about 16x the work of the other)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from cli.app import app

WIDTH = 384


def matmul_chain(path: Path, depth: int) -> Path:
    """x[8, WIDTH] → `depth` MatMuls with WIDTH × WIDTH weights → y: the work grows with depth."""
    rng = np.random.default_rng(depth)
    inits, nodes, prev = [], [], "x"
    for i in range(depth):
        w = (rng.standard_normal((WIDTH, WIDTH)) / np.sqrt(WIDTH)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        out = "y" if i == depth - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [out]))
        prev = out
    graph = helper.make_graph(
        nodes, f"chain{depth}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, WIDTH])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def cheap_and_costly(tmp_path: Path) -> tuple[Path, Path]:
    return matmul_chain(tmp_path / "cheap.onnx", 1), matmul_chain(tmp_path / "costly.onnx", 16)


def bench(*args: str) -> str:
    res = CliRunner().invoke(app, ["bench", *args, "--threads", "1", "--warmup", "2", "--repeat", "10",
                                   "--progress", "none"], env={"COLUMNS": "120"})
    assert res.exit_code == 0, res.stderr
    return res.stdout


def test_ratio_above_1_means_model_is_faster_than_baseline(cheap_and_costly):
    cheap, costly = cheap_and_costly
    row = json.loads(bench(str(cheap), "--vs", str(costly), "--json"))["results"][0]
    assert row["speedup_vs"] > 2, row  # the cheap model does 1/16 of the work
    assert row["speedup_vs_interval"][0] > 1
    reverse = json.loads(bench(str(costly), "--vs", str(cheap), "--json"))["results"][0]
    assert reverse["speedup_vs"] < 0.5, reverse


def test_table_header_says_what_above_1_means(cheap_and_costly):
    cheap, costly = cheap_and_costly
    flat = " ".join(bench(str(cheap), "--vs", str(costly)).split())
    assert "BASELINE latency / MODEL latency" in flat and "> 1: MODEL is faster" in flat, flat
    ratio = re.search(r" MODEL [\d.]+ [\d.]+ [\d.]+ [\d.]+ \d+/\d+ (\d+\.\d+)x", flat)  # after the outliers cell
    assert ratio and float(ratio.group(1)) > 2, flat
