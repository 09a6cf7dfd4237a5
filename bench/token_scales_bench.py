"""Per-token against per-call int8 input scales on the real all-MiniLM-L6-v2, by MatMul group.

The FP32 model is exported once with torch.onnx (the plain graph: no fusion); then each variant
scales one group of MatMuls per token (passes/quantize/token_scales.py's rewrite) and leaves the
rest to ONNX Runtime's `quantize_dynamic` (per call, per-channel int8 weights, full range). Quality:
each held-out line's embedding cosine to the torch FP32 model's, mean and min, batches of 16 padded
to their longest. Speed: batch 8 × 128 tokens, 2 threads, the variants interleaved each round,
median [quartiles] of the per-round ratio to all per call.

    python -m bench.token_scales_bench --eval eval.txt [--eval2 eval_general.txt] [--rounds 25]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench.hf_peer import folder

GROUPS = {  # variant → name suffixes of the MatMuls scaled per token (None: every MatMul by a weight)
    "per call (ONNX Runtime)": (),
    "per token: FFN output (per_token: mlp)": ("/output/dense/MatMul",),
    "per token: FFN input": ("/intermediate/dense/MatMul",),
    "per token: both FFN MatMuls": ("/output/dense/MatMul", "/intermediate/dense/MatMul"),
    "per token: attention output": ("/attention/output/dense/MatMul",),
    "per token: Q, K, V": ("/query/MatMul", "/key/MatMul", "/value/MatMul"),
    "per token: every MatMul (per_token: all)": None,
}


def export(path: Path, tok) -> None:
    import torch

    from optimize.frameworks.hf import load_hf_folder

    h = load_hf_folder(folder())
    b = tok(["a sentence to trace the model with"] * 2, return_tensors="pt")
    args = tuple(b[n] for n in h.input_names)
    axes = {n: {0: "batch", 1: "tokens"} for n in h.input_names} | {"embedding": {0: "batch"}}
    torch.onnx.export(h.module, args, str(path), input_names=h.input_names, output_names=["embedding"],
                      dynamic_axes=axes, opset_version=17, dynamo=False)


def variant(fp32: Path, out: Path, suffixes: tuple[str, ...] | None) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from passes.quantize.token_scales import scale_per_token

    names = [n.name for n in onnx.load(str(fp32), load_external_data=False).graph.node if n.op_type == "MatMul"]
    src = fp32
    if suffixes is None or suffixes:
        chosen = names if suffixes is None else [n for n in names if n.endswith(suffixes) and (
            "attention/output" not in n or any(s.startswith("/attention") for s in suffixes))]
        src = out.with_name(out.stem + ".tok.onnx")
        scale_per_token(fp32, src, "all", code_max=127, per_channel=True, include=chosen, exclude=[])
    quantize_dynamic(str(src), str(out), op_types_to_quantize=["MatMul"], per_channel=True, reduce_range=False,
                     weight_type=QuantType.QInt8)


def embed(run, lines: list[str], tok) -> np.ndarray:
    out = []
    for i in range(0, len(lines), 16):
        b = {k: v.astype(np.int64) for k, v in tok(lines[i:i + 16], padding=True, truncation=True, max_length=128,
                                                   return_tensors="np").items()}
        out.append(np.asarray(run(b), dtype=np.float64))
    y = np.concatenate(out)
    return y / np.linalg.norm(y, axis=1, keepdims=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--eval", type=Path, required=True)
    ap.add_argument("--eval2", type=Path)
    ap.add_argument("--rounds", type=int, default=25)
    args = ap.parse_args(argv)
    import torch
    from transformers import AutoTokenizer

    from optimize.benchmark import interleaved
    from optimize.frameworks.hf import load_hf_folder
    from optimize.hardware import cpu_info
    from optimize.runtime import session

    tok = AutoTokenizer.from_pretrained(str(folder()))
    work = Path(tempfile.mkdtemp(prefix="token-scales."))
    fp32 = work / "fp32.onnx"
    export(fp32, tok)
    import onnx

    from passes.quantize.token_scales import chosen_matmuls

    graph = onnx.load(str(fp32), load_external_data=False).graph
    ffn_out = {n.name for n in graph.node if n.op_type == "MatMul" and n.name.endswith("/output/dense/MatMul")
               and "attention/output" not in n.name}
    assert chosen_matmuls(graph, "mlp", None, []) == ffn_out, "per_token: mlp would choose other MatMuls"
    models = {}
    for i, (label, suffixes) in enumerate(GROUPS.items()):
        models[label] = work / f"v{i}.onnx"
        variant(fp32, models[label], suffixes)
    h = load_hf_folder(folder())
    texts = [p.read_text().splitlines() for p in [args.eval] + ([args.eval2] if args.eval2 else [])]
    with torch.no_grad():
        refs = [embed(lambda b: h.module(*[torch.from_numpy(b[n]) for n in h.input_names]).numpy(), t, tok) for t in texts]
    rows = {}
    for label, path in models.items():
        sess = session(path, threads=2)
        names = {i.name for i in sess.get_inputs()}
        rows[label] = [(embed(lambda b, s=sess, n=names: s.run(None, {k: v for k, v in b.items() if k in n})[0], t, tok)
                        * ref).sum(1) for t, ref in zip(texts, refs, strict=True)]
    batch = {k: v.astype(np.int64) for k, v in tok(texts[0][:8], padding="max_length", truncation=True, max_length=128,
                                                   return_tensors="np").items()}
    times = interleaved(models, batch, threads=2, warmup=3, repeat=args.rounds)
    base = np.asarray(times["per call (ONNX Runtime)"].times_ms)
    cpu = cpu_info()
    print(f"CPU: {cpu['cpu']} ({', '.join(cpu['isa'])}), 2 threads, batch 8 × 128, "
          f"{args.rounds} interleaved rounds; cosine to the torch FP32 model")
    head = " | ".join(f"{p.name} mean / min" for p in [args.eval] + ([args.eval2] if args.eval2 else []))
    print(f"\n| int8 input scales | {head} | speed vs per call |\n|{' --- |' * (len(texts) + 2)}")
    for label, cos in rows.items():
        r = base / np.asarray(times[label].times_ms)
        q = " | ".join(f"{c.mean():.4f} / {c.min():.4f}" for c in cos)
        print(f"| {label} | {q} | {np.median(r):.3f}x [{np.quantile(r, 0.25):.3f}, {np.quantile(r, 0.75):.3f}] |")
    print(f"\nmodels in {work}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
