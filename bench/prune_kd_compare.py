"""Embedding models written by the tool, side by side the way bench/prune_kd_bench.py measures them,
without running the tool: cosine to the torch FP32 MiniLM per batch of 8 (padded to the batch's
longest line) on each eval file, and latency at batch 8 × 128 in interleaved rounds against the
first model.

    python -m bench.prune_kd_compare int8=out/int8/model.onnx recipe=out/r/model.onnx \
        [--eval eval.txt --eval eval_general.txt] [--rounds 40]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from bench.hf_peer import BATCH, MAX_LEN, THREADS, embeddings, folder, torch_embeddings


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", metavar="NAME=PATH", help="the first is the base of the speed ratios")
    ap.add_argument("--eval", type=Path, action="append", default=None, help="one text per line (repeatable)")
    ap.add_argument("--rounds", type=int, default=40)
    args = ap.parse_args()
    from transformers import AutoTokenizer

    from optimize.benchmark import interleaved
    from optimize.speed import estimate, round_ratios

    models = dict(m.split("=", 1) for m in args.models)
    tok = AutoTokenizer.from_pretrained(str(folder()))

    def enc(texts: list[str], pad: bool | str) -> dict[str, np.ndarray]:
        out = tok(texts, padding=pad, truncation=True, max_length=MAX_LEN, return_tensors="np")
        return {k: v.astype(np.int64) for k, v in out.items()}

    files = args.eval or [Path("/tmp/text2/eval.txt"), Path("/tmp/text2/eval_general.txt")]
    for f in files:
        lines = f.read_text().splitlines()
        batches = [enc(lines[i:i + BATCH], True) for i in range(0, len(lines), BATCH)]
        ref = torch_embeddings(folder(), batches)
        for name, path in models.items():
            cos = (embeddings(path, batches) * ref).sum(1)
            print(f"{f.name:20s} {name:24s} mean {cos.mean():.4f} min {cos.min():.4f}", flush=True)
    texts = files[0].read_text().splitlines()
    times = interleaved(models, enc(texts[:BATCH], "max_length"), threads=THREADS, warmup=3, repeat=args.rounds)
    base = next(iter(models))
    for name in models:
        est = estimate(round_ratios(times[base].times_ms, times[name].times_ms), 0.03)
        print(f"{name:24s} {times[name].median_ms:7.2f} ms  vs {base}: {est.value:.3f}x [{est.low:.3f}, {est.high:.3f}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
