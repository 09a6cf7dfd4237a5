"""How far 8-bit activations move a decoder's MatMul outputs on a real prompt: the measurement
behind `prefill: int8_weights` quantizing each token at its own scale (passes/quantize/prompt_int8.py).

    python -m bench.prompt_activations --model FP32_FOLDER --text eval.txt [--tokens 128] [--layers 0,1,5,15,29]

FP32_FOLDER holds an FP32 decoder ONNX graph with a KV cache (model.onnx, as `optimize run` or ONNX
Runtime GenAI's builder writes it) and tokenizer.json. The inputs of the float MatMuls of the
chosen layers are read on the text's first `--tokens` tokens (one prefill); for each, the relative
error ‖y' − y‖ / ‖y‖ of its output y = x·W when W takes 7-bit per-column codes (as the prompt path
stores them) and x is 8-bit: `weights only` (x float), `per call` (one u8 scale for the whole
input, as `DynamicQuantizeMatMul` alone does), `per token` (one scale per row). Also the largest
magnitude of the largest and of the median token.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np


def _u8(x: np.ndarray, axis: int | None) -> np.ndarray:
    """x after asymmetric 8-bit quantization over `axis` (None: the whole tensor) and back."""
    lo = np.minimum(x.min(axis=axis, keepdims=True), 0)
    hi = np.maximum(x.max(axis=axis, keepdims=True), 0)
    scale = np.where(hi > lo, (hi - lo) / 255, 1.0)
    zero = np.rint(-lo / scale)
    return (np.clip(np.rint(x / scale) + zero, 0, 255) - zero) * scale


def _w7(w: np.ndarray) -> np.ndarray:
    scale = np.abs(w).max(axis=0) / 63
    scale = np.where(scale > 0, scale, 1.0)
    return np.rint(w / scale) * scale


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def activations(folder: Path, text: str, tokens: int, layers: list[int]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(MatMul name, its input as rows, its weight) for the float MatMuls of `layers`."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper
    from tokenizers import Tokenizer

    from optimize.llm.generation import OrtCausalLM

    model = onnx.load(str(folder / "model.onnx"))
    inits = {t.name: t for t in model.graph.initializer}
    pattern = re.compile(r"layers\.(\d+)/")
    chosen = [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits
              and (m := pattern.search(n.name)) and int(m.group(1)) in layers]
    for node in chosen:
        model.graph.output.append(onnx.helper.make_tensor_value_info(node.input[0], onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    lm = OrtCausalLM(folder / "model.onnx", session=sess)
    ids = np.asarray([Tokenizer.from_file(str(folder / "tokenizer.json")).encode(text).ids[:tokens]], np.int64)
    feed = {**lm.feed(ids, 0), **dict(zip(lm.past_names, lm.empty_cache(), strict=True))}
    outs = dict(zip(lm.output_names, sess.run(lm.output_names, feed), strict=True))
    return [(n.name, outs[n.input[0]].reshape(-1, outs[n.input[0]].shape[-1]).astype(np.float64),
             numpy_helper.to_array(inits[n.input[1]]).astype(np.float64)) for n in chosen]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--text", type=Path, required=True)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--layers", default="0,1,5,15,29")
    a = ap.parse_args()
    rows = activations(a.model, a.text.read_text(encoding="utf-8"), a.tokens, [int(v) for v in a.layers.split(",")])
    print("| MatMul | weights only | per call | per token | largest token's max | median token's max |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, x, w in rows:
        y, wq = x @ w, _w7(w)
        peaks = np.abs(x).max(axis=1)
        print(f"| {name} | {_rel(x @ wq, y):.3f} | {_rel(_u8(x, None) @ wq, y):.3f} | {_rel(_u8(x, 1) @ wq, y):.3f} "
              f"| {peaks.max():.1f} | {np.median(peaks):.1f} |")


if __name__ == "__main__":
    main()
