"""Shared fixtures: tiny torch models and ONNX files built in code, in each test's tmp_path.

Everything here is CPU-only and takes well under a second per fixture: the MLP is exported with the
TorchScript exporter (`dynamo=False`), and the subgraph model is written with onnx.helper.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from tiny_models import IN_FEATURES, export_onnx, make_mlp  # noqa: F401 (re-exported for fixtures)

# The pass cache is on by default for users; the suite runs without it so every test (and every
# subprocess it starts) recomputes its passes. tests/optimize/test_cache.py turns it on with --cache-dir.
os.environ["OPTIMIZE_PASS_CACHE"] = "off"
# Charts cost 0.5–2 s per pipeline run: `output.charts: auto` draws none in the suite (subprocesses
# included) except where a chart test asks for them with the `charts_on` fixture.
os.environ["OPTIMIZE_CHARTS"] = "off"


def _write_test_models_at_an_ir_the_runtime_reads() -> None:
    """onnx and onnxruntime are installed independently: onnx 1.23 writes IR 14 by default, which
    onnxruntime 1.30 refuses (and the tool rightly rejects, exit 2). The models the tests build with
    onnx.helper.make_model get the newest IR the installed runtime reads, as a user's exporter
    pinned to their runtime would write; a test that sets ir_version itself keeps its own. Calls
    from outside tests/ (the library, onnxruntime's tools) are left as they are, so a library call
    that writes an IR its runtime refuses still fails here."""
    import sys

    import onnx

    from optimize.runtime import runtime_refuses_ir

    newest = runtime_refuses_ir(onnx.IR_VERSION)
    if newest is None:
        return
    make_model = onnx.helper.make_model
    tests_dir = str(Path(__file__).resolve().parent)

    def at_runtime_ir(graph, **kwargs):
        if sys._getframe(1).f_code.co_filename.startswith(tests_dir):
            kwargs.setdefault("ir_version", newest)
        return make_model(graph, **kwargs)

    onnx.helper.make_model = at_runtime_ir


_write_test_models_at_an_ir_the_runtime_reads()


@pytest.fixture
def charts_on(monkeypatch):
    """`output.charts: auto` draws again (matplotlib permitting) for this test."""
    monkeypatch.delenv("OPTIMIZE_CHARTS", raising=False)


@pytest.fixture
def mlp():
    return make_mlp(0)


@pytest.fixture
def mlp_onnx(tmp_path: Path, mlp) -> Path:
    """The `mlp` fixture exported to tmp_path/mlp.onnx (Gemm → Relu → Gemm)."""
    return export_onnx(mlp, tmp_path / "mlp.onnx")


@dataclass
class SubgraphModel:
    path: Path
    gemm_weight: np.ndarray  # main-graph initializer (Gemm input 1)
    gemm_bias: np.ndarray  # Gemm input 2: a bias, not a weight
    then_weight: np.ndarray  # Constant node inside the If's then_branch (MatMul input 1)
    else_weight: np.ndarray  # initializer of the If's else_branch (MatMul input 1)
    main_const_weight: np.ndarray  # Constant node in the main graph feeding a MatMul

    @property
    def weight_arrays(self) -> list[np.ndarray]:
        return [self.gemm_weight, self.then_weight, self.else_weight, self.main_const_weight]


def build_subgraph_model(path: Path) -> SubgraphModel:
    """X[N,4] → Gemm(W0,B0) → H; If(cond): then H @ Wc (Constant node), else H @ We (subgraph
    initializer) → Z[N,3]; Z @ Wm (main-graph Constant node) → Y[N,2].

    Some weights contain exact zeros so non-zero counts are checked too.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    w0 = rng.standard_normal((4, 4)).astype(np.float32)
    w0[0, :] = 0.0  # 4 zeros
    b0 = rng.standard_normal(4).astype(np.float32)
    wc = rng.standard_normal((4, 3)).astype(np.float32)
    wc[1, 1] = 0.0  # 1 zero
    we = rng.standard_normal((4, 3)).astype(np.float32)
    wm = rng.standard_normal((3, 2)).astype(np.float32)

    then_graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["Wc"], value=numpy_helper.from_array(wc, "Wc_value")),
            helper.make_node("MatMul", ["H", "Wc"], ["Z_then"]),
        ],
        "then_branch",
        [],
        [helper.make_tensor_value_info("Z_then", TensorProto.FLOAT, ["N", 3])],
    )
    else_graph = helper.make_graph(
        [helper.make_node("MatMul", ["H", "We"], ["Z_else"])],
        "else_branch",
        [],
        [helper.make_tensor_value_info("Z_else", TensorProto.FLOAT, ["N", 3])],
        initializer=[numpy_helper.from_array(we, "We")],
    )
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["X", "W0", "B0"], ["H"]),
            helper.make_node("If", ["cond"], ["Z"], then_branch=then_graph, else_branch=else_graph),
            helper.make_node("Constant", [], ["Wm"], value=numpy_helper.from_array(wm, "Wm_value")),
            helper.make_node("MatMul", ["Z", "Wm"], ["Y"]),
        ],
        "if_const",
        [
            helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 2])],
        initializer=[numpy_helper.from_array(w0, "W0"), numpy_helper.from_array(b0, "B0")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save_model(model, str(path))
    return SubgraphModel(path, w0, b0, wc, we, wm)


@pytest.fixture
def subgraph_model(tmp_path: Path) -> SubgraphModel:
    return build_subgraph_model(tmp_path / "if_const.onnx")


@pytest.fixture
def restore_sys_path(monkeypatch):
    """Factories and callables put folders on sys.path; undo that after the test."""
    import sys

    monkeypatch.setattr(sys, "path", list(sys.path))
    return sys.path


@pytest.fixture(scope="session")
def teacher_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in example's digits CNN trained with its real recipe (~99% test accuracy), once per
    session (shared by the distill tests)."""
    from optimize import example

    path = tmp_path_factory.mktemp("teacher") / "digits.safetensors"
    example.train_teacher(path, seed=0)
    return path


@pytest.fixture
def cfg():
    """An empty pipeline config (a test module may define its own `cfg`)."""
    from optimize.config import load_config_text

    return load_config_text("schema_version: 1\npasses: []\n")


@pytest.fixture
def ctx(cfg, tmp_path):
    """A RunContext on `cfg` with tmp_path as the work dir."""
    from optimize.context import RunContext

    return RunContext(config=cfg, work_dir=tmp_path)
