"""ONNX Runtime's 4-bit `MatMulNBits` against a float MatMul on this CPU, by accuracy level and
block size, at a prompt's M (128 rows) and a decode step's (1 row): the measurement behind
`prefill: float_activations` (passes/quantize/prefill_branch.py, docs/llm.md).

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


def _model(k: int, n: int, m: int, block: int | None, acc: int | None) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if block is None:
        node = helper.make_node("MatMul", ["x", "w"], ["y"])
        inits = [numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "w")]
    else:
        blocks = -(-k // block)  # a last, partial block is padded
        node = helper.make_node("MatMulNBits", ["x", "q", "s"], ["y"], domain="com.microsoft", K=k, N=n, bits=4,
                                block_size=block, accuracy_level=acc)
        inits = [numpy_helper.from_array(rng.integers(0, 256, (n, blocks, block // 2), dtype=np.uint8), "q"),
                 numpy_helper.from_array((rng.random(n * blocks) * 0.01).astype(np.float32), "s")]
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
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
    heads = " | ".join(f"b{bs} acc{acc}" for bs, acc in VARIANTS)
    print(f"| K × N | M | threads | fp32 ms | {heads} |")
    print("| --- " * (4 + len(VARIANTS)) + "|")
    for m in (int(v) for v in a.m.split(",")):
        for k, n in SHAPES:
            for threads in (int(v) for v in a.threads.split(",")):
                print(row(k, n, m, threads, a.rounds), flush=True)


if __name__ == "__main__":
    main()
