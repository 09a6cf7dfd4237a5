"""optimize.diagnose: kernel classification of the file and of ONNX Runtime's optimized graph,
unfused Q/DQ, the profile, and the likely causes named when the output is slower."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimize.diagnose import (
    Diagnostics,
    GraphFacts,
    ModelDiagnostics,
    OpTime,
    RuntimeProfile,
    diagnose,
    graph_facts,
    likely_causes,
    runtime_graph,
)
from optimize.diagnose_md import markdown_lines

W_ELEMENTS = 8 * 16 + 16 * 4  # the conftest MLP: Linear(8,16) → ReLU → Linear(16,4)


def _unfused_qdq_model(path: Path) -> Path:
    """x → Q → DQ → Erf → MatMul(W through a fake-quant Q → DQ) → y. ONNX Runtime cannot fuse the
    activation pair in front of Erf (no integer Erf kernel), so it stays in the optimized graph."""
    w = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)
    g = helper.make_graph(
        [
            helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
            helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
            helper.make_node("Erf", ["xd"], ["e"]),
            helper.make_node("QuantizeLinear", ["W", "ws", "wz"], ["Wq"]),
            helper.make_node("DequantizeLinear", ["Wq", "ws", "wz"], ["Wd"]),
            helper.make_node("MatMul", ["e", "Wd"], ["y"]),
        ],
        "unfused",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
        initializer=[
            numpy_helper.from_array(np.array(0.05, np.float32), "s"),
            numpy_helper.from_array(np.array(128, np.uint8), "z"),
            numpy_helper.from_array(w, "W"),
            numpy_helper.from_array(np.array(0.02, np.float32), "ws"),
            numpy_helper.from_array(np.array(0, np.int8), "wz"),
        ],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def test_float_file_counts_float_kernels_and_their_weights(mlp_onnx):
    f = graph_facts(mlp_onnx)
    assert f.graph == "file"
    assert f.kernels == {"float": 2}
    assert f.kernels_by_op == {"Gemm": {"float": 2}}
    assert f.weights_by_kind == {"float": W_ELEMENTS}
    assert f.integer_weight_share == 0.0 and f.integer_op_share == 0.0
    assert f.ops == {"Gemm": 2, "Relu": 1} and f.nodes == 3
    assert (f.qdq_pairs_unfused, f.dequantized_weights_to_float, f.qoperator_per_channel) == (0, 0, 0)


def test_dynamic_int8_runs_as_integer_kernels(tmp_path, mlp_onnx):
    from onnxruntime.quantization import quantize_dynamic

    q = tmp_path / "q.onnx"
    quantize_dynamic(str(mlp_onnx), str(q))
    rt = graph_facts(runtime_graph(q, tmp_path / "rt" / "q.ort.onnx", threads=1), "onnxruntime")
    assert rt.graph == "onnxruntime" and Path(rt.path).is_file()
    assert rt.kernels == {"integer": 2}
    assert rt.integer_weight_share == 1.0 and rt.integer_op_share == 1.0
    assert rt.weights_by_kind == {"integer": W_ELEMENTS}
    # the float model as ONNX Runtime runs it has no integer kernel
    rt_in = graph_facts(runtime_graph(mlp_onnx, tmp_path / "rt" / "f.ort.onnx", threads=1), "onnxruntime")
    assert rt_in.kernels.get("integer", 0) == 0 and sum(rt_in.kernels.values()) == 2


def test_unfused_qdq_pairs_are_counted_in_file_and_runtime(tmp_path):
    path = _unfused_qdq_model(tmp_path / "u.onnx")
    f = graph_facts(path)
    assert f.qdq_pairs_unfused == 2  # activation pair + the weight's fake-quant pair
    assert f.dequantized_weights_to_float == 1  # W reaches the float MatMul through DQ
    assert f.weights_by_kind == {"float": 128}
    rt = graph_facts(runtime_graph(path, tmp_path / "u.ort.onnx", threads=1), "onnxruntime")
    assert rt.qdq_pairs_unfused == 1  # the pair in front of Erf survives ONNX Runtime's fusion


def test_qoperator_per_channel_is_detected(tmp_path, mlp_onnx):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{"x": np.random.default_rng(i).standard_normal((4, 8)).astype(np.float32)} for i in range(4)])

        def get_next(self):
            return next(self.it, None)

    q = tmp_path / "qop.onnx"
    quantize_static(str(mlp_onnx), str(q), Reader(), quant_format=QuantFormat.QOperator, per_channel=True)
    f = graph_facts(q)
    assert f.kernels.get("integer", 0) == f.qoperator_per_channel > 0


def test_profile_and_full_diagnosis_of_a_quantized_model(tmp_path, mlp_onnx):
    from onnxruntime.quantization import quantize_dynamic

    q = tmp_path / "q.onnx"
    quantize_dynamic(str(mlp_onnx), str(q))
    x = {"x": np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)}
    d = diagnose(mlp_onnx, q, tmp_path / "diag", x, threads=1, speedup=0.5)
    prof = d.output.profile
    assert prof is not None and prof.runs >= 3 and prof.batch == 2 and prof.threads == 1
    assert prof.total_kernel_ms > 0
    assert prof.ms_by_kind.get("integer", 0) > 0
    assert sum(prof.share_by_kind.values()) == pytest.approx(1.0)
    assert sum(o.ms for o in prof.top_ops) == pytest.approx(prof.total_kernel_ms)
    assert d.input.profile is not None and "integer" not in d.input.profile.ms_by_kind
    assert d.likely_causes, "a slower output must name a likely cause"
    assert any("tiny layers" in c for c in d.likely_causes)  # 192 weights over 2 kernels
    md = "\n".join(markdown_lines(d))
    assert "Why is it (not) faster?" in md and "integer compute kernels" in md and "tiny layers" in md
    assert d.input.reason is None and d.output.reason is None


def test_a_broken_model_gives_reasons_not_an_exception(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    d = diagnose(bad, bad, tmp_path / "d", {"x": np.zeros((1, 2), np.float32)}, threads=1, speedup=0.9)
    assert d.output.file is None and d.output.runtime is None and d.output.profile is None
    assert "not read" in d.output.reason and "not saved" in d.output.reason


# ---------------------------------------------------------------- likely causes (no ONNX Runtime)


def _g(**kw) -> GraphFacts:
    return GraphFacts(graph=kw.pop("graph", "onnxruntime"), nodes=kw.pop("nodes", 4), **kw)


def _diag(out_file: GraphFacts, out_rt: GraphFacts | None = None, prof: RuntimeProfile | None = None,
          vnni: bool = True) -> Diagnostics:
    return Diagnostics(
        input=ModelDiagnostics(file=_g(graph="file", kernels={"float": 2}), runtime=_g(kernels={"float": 2})),
        output=ModelDiagnostics(file=out_file, runtime=out_rt, profile=prof),
        int8_dot_product=vnni,
    )


BIG = {"integer": 4_000_000}


def test_no_cause_when_not_slower():
    d = _diag(_g(graph="file", kernels={"integer": 2}), vnni=False)
    assert likely_causes(d, speedup=1.0) == []
    assert likely_causes(d, speedup=None) == []


def test_no_vnni_is_named_only_without_vnni():
    rt = _g(kernels={"integer": 2}, weights_by_kind=BIG)
    assert any("VNNI" in c for c in likely_causes(_diag(_g(graph="file"), rt, vnni=False), speedup=0.8))
    assert not any("VNNI" in c for c in likely_causes(_diag(_g(graph="file"), rt, vnni=True), speedup=0.8))


def test_qoperator_per_channel_cause():
    f = _g(graph="file", kernels={"integer": 2}, qoperator_per_channel=2, weights_by_kind=BIG)
    causes = likely_causes(_diag(f, _g(kernels={"integer": 2}, weights_by_kind=BIG)), speedup=0.2)
    assert any("QOperator" in c and "per-channel" in c for c in causes)


def test_unfused_qdq_cause():
    rt = _g(kernels={"float": 2}, qdq_pairs_unfused=3, dequantized_weights_to_float=2)
    causes = likely_causes(_diag(_g(graph="file", kernels={"float": 2}), rt), speedup=0.6)
    assert any("did not fuse" in c and "3 Quantize→Dequantize pairs" in c for c in causes)


def test_tiny_layers_cause_from_the_profile():
    prof = RuntimeProfile(runs=5, threads=1, batch=1, total_kernel_ms=0.1,
                          ms_by_kind={"integer": 0.05, "quantize_dequantize": 0.05},
                          share_by_kind={"integer": 0.5, "quantize_dequantize": 0.5})
    rt = _g(kernels={"integer": 2}, weights_by_kind={"integer": 1000})
    causes = likely_causes(_diag(_g(graph="file", kernels={"integer": 2}), rt, prof), speedup=0.7)
    assert any(c.startswith("tiny layers") and "50%" in c for c in causes)
    big = _g(kernels={"integer": 2}, weights_by_kind=BIG)
    slow_prof = prof.model_copy(update={"ms_by_kind": {"integer": 10.0}, "share_by_kind": {"integer": 1.0}, "total_kernel_ms": 10.0})
    assert not any("tiny" in c for c in likely_causes(_diag(_g(graph="file", kernels={"integer": 2}), big, slow_prof), speedup=0.7))


def test_unstructured_sparsity_cause():
    d = _diag(_g(graph="file", kernels={"float": 2}), _g(kernels={"float": 2}))
    assert any("unstructured sparsity" in c for c in likely_causes(d, speedup=0.9, sparsity=0.5, params_removed=0.0))
    assert not any("unstructured" in c for c in likely_causes(d, speedup=0.9, sparsity=0.5, params_removed=0.5))


def test_fp16_on_cpu_cause():
    f = _g(graph="file", kernels={"fp16": 2})
    rt = _g(kernels={"float": 2}, casts=4)
    assert any("fp16" in c and "4 Cast" in c for c in likely_causes(_diag(f, rt), speedup=0.5))


def test_unknown_cause_says_so():
    causes = likely_causes(_diag(_g(graph="file", kernels={"float": 2}), _g(kernels={"float": 2}, nodes=2)), speedup=0.95)
    assert causes == ["no known cause identified; compare diagnostics.input and diagnostics.output (kernels, profile)"]


def test_sparsity_the_input_already_had_is_not_blamed():
    d = _diag(_g(graph="file", kernels={"integer": 2}), _g(kernels={"integer": 2}, weights_by_kind=BIG))
    assert not any("unstructured" in c for c in likely_causes(d, speedup=0.4, sparsity=0.30, params_removed=0.0,
                                                               input_sparsity=0.30))
    causes = likely_causes(d, speedup=0.4, sparsity=0.50, params_removed=0.0, input_sparsity=0.30)
    assert any("unstructured" in c and "(30% in the input)" in c for c in causes)


def _prof(ms_by_kind: dict[str, float], top: list[OpTime] | None = None) -> RuntimeProfile:
    total = sum(ms_by_kind.values())
    return RuntimeProfile(runs=5, threads=1, batch=1, total_kernel_ms=total, ms_by_kind=ms_by_kind,
                          share_by_kind={k: v / total for k, v in ms_by_kind.items()}, top_ops=top or [])


def test_int8_kernels_slower_than_the_float_ones_they_replaced():
    conv_int = OpTime(op="ConvInteger", kind="integer", ms=6.6, share=0.9, nodes=20)
    d = _diag(_g(graph="file", kernels={"integer": 20}), _g(kernels={"integer": 20}, weights_by_kind=BIG),
              _prof({"integer": 6.6, "quantize_dequantize": 0.14, "other": 0.8}, [conv_int]))
    d.input.profile = _prof({"float": 0.85, "other": 0.6})
    causes = likely_causes(d, speedup=0.18)
    assert any(c.startswith("int8 kernels slower") and "20 ConvInteger 6.60 ms" in c and "0.85 ms" in c
               and "quantize.mode: static" in c for c in causes)
    assert not any(c.startswith("tiny layers") for c in causes)  # 2% of the time in Q/DQ, 330 µs kernels
    d.input.profile = _prof({"float": 6.0, "other": 0.6})  # the int8 kernels beat the float they replaced
    assert not any(c.startswith("int8 kernels slower") for c in likely_causes(d, speedup=0.9))
