"""ONNX Runtime's 4-bit `MatMulNBits` against a float MatMul on this CPU, by accuracy level and
block size, at a prompt's M (128 rows) and a decode step's (1 row), and ONNX Runtime's 8-bit
`DynamicQuantizeMatMul` beside them (`s8`: 7-bit signed codes per column, as `prefill:
int8_weights` stores them; `s8 rows`: the same with each row divided by its largest magnitude
first and multiplied back after, as that prompt path runs it; `u8`: 8-bit unsigned codes, the
kernel without AVX2's 16-bit saturation): the measurements behind `prefill: float_activations` and
`prefill: int8_weights` (passes/quantize/prefill_branch.py, prompt_int8.py, docs/llm.md).

    python -m bench.matmulnbits_bench [--m 128,1] [--threads 2,1] [--rounds 30]

Shapes are SmolLM2-135M's: q/k/v + gate/up fused (K 576, N 3072), down (K 1536, N 576), head
(K 576, N 49152). Random weights and inputs (the kernels' speed does not depend on the values).
Each ratio = median over interleaved rounds of (float MatMul seconds / MatMulNBits seconds).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

SHAPES = ((576, 3072), (1536, 576), (576, 49152))
VARIANTS = tuple((bs, acc) for bs in (32, 64, 128) for acc in (1, 4))
EIGHT_BIT = ("s8", "s8 rows", "u8")


def _dqmm(k: int, n: int, kind: str, rng: np.random.Generator) -> tuple[list, list]:
    """DynamicQuantizeMatMul nodes and initializers for one `EIGHT_BIT` kind."""
    from onnx import helper, numpy_helper

    w = rng.standard_normal((k, n)) * 0.05
    top = 127 if kind == "u8" else 63
    scale = np.abs(w).max(axis=0) / top
    codes = np.rint(w / scale) + (128 if kind == "u8" else 0)
    dtype = np.uint8 if kind == "u8" else np.int8
    inits = [numpy_helper.from_array(codes.astype(dtype), "q"), numpy_helper.from_array(scale.astype(np.float32), "s"),
             numpy_helper.from_array(np.full(n, 128 if kind == "u8" else 0, dtype), "z")]
    if kind != "s8 rows":
        return [helper.make_node("DynamicQuantizeMatMul", ["x", "q", "s", "z"], ["y"], domain="com.microsoft")], inits
    inits.append(numpy_helper.from_array(np.array([-1], np.int64), "axis"))
    return [helper.make_node("Abs", ["x"], ["a"]), helper.make_node("ReduceMax", ["a", "axis"], ["m"], keepdims=1),
            helper.make_node("Div", ["x", "m"], ["u"]),
            helper.make_node("DynamicQuantizeMatMul", ["u", "q", "s", "z"], ["yu"], domain="com.microsoft"),
            helper.make_node("Mul", ["yu", "m"], ["y"])], inits


def _model(k: int, n: int, m: int, block: int | str | None, acc: int | None) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if isinstance(block, str):
        nodes, inits = _dqmm(k, n, block, rng)
    elif block is None:
        nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
        inits = [numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "w")]
    else:
        blocks = -(-k // block)  # a last, partial block is padded
        nodes = [helper.make_node("MatMulNBits", ["x", "q", "s"], ["y"], domain="com.microsoft", K=k, N=n, bits=4,
                                  block_size=block, accuracy_level=acc)]
        inits = [numpy_helper.from_array(rng.integers(0, 256, (n, blocks, block // 2), dtype=np.uint8), "q"),
                 numpy_helper.from_array((rng.random(n * blocks) * 0.01).astype(np.float32), "s")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])], initializer=inits)
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets).SerializeToString()


def _session(blob: bytes, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"])


def _time(sess, x: np.ndarray) -> float:
    t = time.perf_counter()
    sess.run(None, {"x": x})
    return time.perf_counter() - t


def row(k: int, n: int, m: int, threads: int, rounds: int) -> str:
    sessions = {"fp32": _session(_model(k, n, m, None, None), threads)}
    sessions.update({f"b{bs} acc{acc}": _session(_model(k, n, m, bs, acc), threads) for bs, acc in VARIANTS})
    sessions.update({kind: _session(_model(k, n, m, kind, None), threads) for kind in EIGHT_BIT})
    x = np.random.default_rng(1).standard_normal((m, k)).astype(np.float32)
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for r in range(rounds + 3):
        for name in sessions if r % 2 == 0 else list(sessions)[::-1]:
            t = _time(sessions[name], x)
            if r >= 3:  # warm-up rounds
                times[name].append(t)
    cells = [f"{np.median(np.array(times['fp32']) / np.array(times[v])):.2f}x" for v in list(sessions)[1:]]
    return f"| {k} × {n} | {m} | {threads} | {np.median(times['fp32']) * 1000:.2f} | " + " | ".join(cells) + " |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--m", default="128,1")
    ap.add_argument("--threads", default="2,1")
    ap.add_argument("--rounds", type=int, default=30)
    a = ap.parse_args()
    heads = " | ".join([f"b{bs} acc{acc}" for bs, acc in VARIANTS] + list(EIGHT_BIT))
    print(f"| K × N | M | threads | fp32 ms | {heads} |")
    print("| --- " * (4 + len(VARIANTS) + len(EIGHT_BIT)) + "|")
    for m in (int(v) for v in a.m.split(",")):
        for k, n in SHAPES:
            for threads in (int(v) for v in a.threads.split(",")):
                print(row(k, n, m, threads, a.rounds), flush=True)


if __name__ == "__main__":
    main()
