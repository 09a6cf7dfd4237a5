"""quantize: the accuracy-aware fallback's search (doubling then bisection over the count of layers
kept in float) and the one-run ranking of layers by the error each adds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from passes.quantize.auto import Check, Goal
from passes.quantize.layer_error import added_errors
from passes.quantize.layer_search import Search, _scan, fallback, weighted_only


class Progress:
    def start(self, *a: Any, **k: Any) -> None: ...
    def advance(self, *a: Any, **k: Any) -> None: ...
    def finish(self, *a: Any, **k: Any) -> None: ...


class FakeCtx:
    threads = 1


class ScriptedEvaluator:
    """Min cosine as a function of how many of the ranked layers are in float."""

    def __init__(self, cosine_of_float_count: Any) -> None:
        self.f = cosine_of_float_count
        self.ctx = FakeCtx()
        self.inputs: dict[str, Any] = {}
        self.kept_by_path: dict[Path, int] = {}

    def check(self, path: Path) -> Check:
        c = self.f(self.kept_by_path[path])
        return Check(c, c, 0.0, True)


def scripted_search(tmp_path: Path, cos: Any, layers: list[str]) -> tuple[Search, list[int]]:
    ev = ScriptedEvaluator(cos)
    calls: list[int] = []

    def quantize(settings: dict[str, Any], out: Path, include: Any = None, exclude: Any = None) -> None:
        assert include is None or len(include) == 1
        kept = len(exclude or [])
        if include is None:
            calls.append(kept)
            ev.kept_by_path[out] = kept
        else:  # per-layer scan: layer i alone adds error 0.01 * (i + 1)
            ev.kept_by_path[out] = -1 - layers.index(include[0])
        out.write_bytes(b"model")

    def cos_with_scan(k: int) -> float:
        return 1.0 - 0.01 * (-k) if k < 0 else cos(k)

    ev.f = cos_with_scan
    return Search(quantize, {"mode": "dynamic"}, ev, Goal(0.98, None, "test"), tmp_path, [], tmp_path / "f.onnx"), calls


@pytest.mark.parametrize("needed", [1, 3, 6, 13, 31])
def test_search_finds_the_fewest_float_layers_in_logarithmic_steps(tmp_path, needed):
    layers = [f"L{i}" for i in range(32)]
    search, calls = scripted_search(tmp_path, lambda k: 0.99 if k >= needed else 0.5, layers)
    found = fallback(search, layers, None, Progress(), "k")
    assert len(found.kept) == needed and found.check is not None and found.check.min_cosine == 0.99
    # the most sensitive first: layer i adds 0.01 * (i + 1) in the scan, so L31 leads
    assert found.kept[0] == "L31"
    assert len(calls) <= 2 * 5 + 1, calls  # doubling + bisection over 31 counts
    assert found.path is not None and found.path.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [found.path.name]  # the others removed
    assert [t["float_layers"] for t in found.tried] == calls


def test_search_stops_at_all_but_one_layer_and_keeps_the_best_failing_variant(tmp_path):
    layers = [f"L{i}" for i in range(10)]
    search, calls = scripted_search(tmp_path, lambda k: 0.5 + 0.01 * k, layers)  # never reaches 0.98
    found = fallback(search, layers, None, Progress(), "k")
    assert max(calls) == 9  # at least one layer stays quantized
    assert len(found.kept) == 9 and found.check.min_cosine == pytest.approx(0.59)
    assert not search.goal.judge(found.check)[0]


def test_search_honours_fallback_max_layers(tmp_path):
    layers = [f"L{i}" for i in range(10)]
    search, calls = scripted_search(tmp_path, lambda k: 0.99 if k >= 8 else 0.5, layers)
    found = fallback(search, layers, 4, Progress(), "k")
    assert max(calls) == 4 and not search.goal.judge(found.check)[0]


def _slow_scan(tmp_path: Path, busy: bool) -> Search:
    """A search whose every quantization takes 20 ms: sleeping (a machine busy with other work) or computing."""
    import time

    tmp_path.mkdir()
    search, _ = scripted_search(tmp_path, lambda k: 0.99, [f"L{i}" for i in range(10)])
    quantize = search.quantize

    def slow(settings: dict[str, Any], out: Path, include: Any = None, exclude: Any = None) -> None:
        end = time.perf_counter() + 0.02
        while busy and time.perf_counter() < end:
            pass
        if not busy:
            time.sleep(0.02)
        quantize(settings, out, include, exclude)

    search.quantize = slow
    return search


def test_the_scans_budget_counts_this_process_cpu_time_not_a_busy_machines_wall_time(tmp_path):
    """Ten layers at 20 ms each against a 0.1 s budget: waiting (the machine busy elsewhere) keeps
    the scan, so load does not change the ranking and the model; computing that long gives it up."""
    layers = [f"L{i}" for i in range(10)]
    waited = _scan(_slow_scan(tmp_path / "a", busy=False), layers, Progress(), "k", budget_s=0.1)
    assert waited is not None and len(waited) == 10
    assert _scan(_slow_scan(tmp_path / "b", busy=True), layers, Progress(), "k", budget_s=0.1) is None


def test_weighted_only_keeps_the_users_weighted_op_types():
    assert weighted_only({"mode": "static"}, None)["op_types"] == ["MatMul", "Gemm", "Conv"]
    assert weighted_only({}, ["Conv", "Add"])["op_types"] == ["Conv"]


def _two_matmuls(path: Path, w1: np.ndarray, w2: np.ndarray) -> None:
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="first"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="second")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(w1.astype(np.float32), "w1"), numpy_helper.from_array(w2.astype(np.float32), "w2")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_operatorsetid("", 13)]), str(path))


def test_added_errors_blame_the_layer_that_adds_the_error(tmp_path):
    """The 'quantized' model differs from float only in the second layer's weight: the second layer
    gets the error, the first none (its output is identical; the second inherits nothing)."""
    rng = np.random.default_rng(0)
    w1, w2 = rng.standard_normal((8, 8)), rng.standard_normal((8, 4))
    _two_matmuls(tmp_path / "float.onnx", w1, w2)
    _two_matmuls(tmp_path / "quant.onnx", w1, w2 + 0.3 * rng.standard_normal((8, 4)))
    sample = {"x": rng.standard_normal((1, 8)).astype(np.float32)}
    errors = added_errors(tmp_path / "float.onnx", tmp_path / "quant.onnx", ["first", "second"], sample, tmp_path)
    assert errors["first"] == pytest.approx(0.0, abs=1e-6)
    assert errors["second"] > 0.05
    assert sorted(p.name for p in tmp_path.iterdir()) == ["float.onnx", "quant.onnx"]  # exposed copies removed
