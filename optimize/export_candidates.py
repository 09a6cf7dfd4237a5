"""`exporter: auto` for transformer models: build the exports that can work, check each against
torch, measure them on this machine, keep the fastest.

Measured on all-MiniLM-L6-v2 (AMD EPYC, AVX2 without VNNI, 2 threads, batch 8 × 128 tokens; the
comparison with optimum is in bench/results-hf.md): after dynamic int8, the dynamo export with
SDPA attention that `auto` used to pick took 1.17–1.25x the latency of the TorchScript export with
eager attention (medians of interleaved rounds; SDPA exports as Slice/Where arithmetic that ONNX
Runtime leaves unfused, eager attention becomes FusedMatMul + Softmax). ONNX Runtime's BERT fusion
(Attention, SkipLayerNormalization, BiasGelu) did not pay there (1.08–1.12x the latency after
int8); vendors report that it does with VNNI, so it stays a candidate and the measurement decides.
onnxscript's optimizer changed nothing measurable on the TorchScript graph (the dynamo exporter
already runs it), and disabling constant folding leaves transposed weights computed at run time,
which the quantizer then cannot quantize: neither is a candidate.

Candidates (each skipped with a reason where it cannot apply):

| name | exporter | attention | ONNX Runtime fusion |
| --- | --- | --- | --- |
| torchscript-eager | TorchScript | eager | — |
| torchscript-eager+fusion | TorchScript | eager | `onnxruntime.transformers.optimizer` for the model type |
| dynamo | dynamo | the model's own (SDPA) | — |

A candidate that fails to export, differs from torch (`parity_failure`) or cannot be quantized
when the pipeline quantizes is recorded with the reason and not measured. When the pipeline
quantizes later (`QuickQuant`), candidates are timed as the dynamic int8 model ONNX Runtime's
quantizer makes of them with the pipeline's settings: fusions change what the quantizer can turn
into integer kernels (QAttention), so the float ranking need not hold after quantization.

Speed ties go to quality. Candidates within `SPEED_TIE` of the fastest are a tie: the same pair
(TorchScript with and without BERT fusion, after int8) read 0.99x in one run and 1.014x in the next.
So is one that was at least as fast in a quarter of the interleaved rounds (on a busy machine the
median alone moves by more than 3%).
The tie goes to the candidate whose int8 model is closest to torch on the timing batch (eval data
when the pipeline has it): on all-MiniLM-L6-v2 the fused export's int8 embeddings read min cosine
0.9805 on real sentences and the unfused one's 0.9844 (bench/results-hf.md), so a coin-flip between
equally fast exports decided whether the output met the quality of optimum's.
"""

from __future__ import annotations

import io
import logging
import shutil
import statistics
import time
from collections.abc import Callable
from contextlib import redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from optimize.handle import ModelHandle

log = logging.getLogger("optimize")

# transformers model_type → onnxruntime.transformers.optimizer model_type
ORT_FUSION_TYPES = {"bert": "bert", "roberta": "bert", "xlm-roberta": "bert", "camembert": "bert",
                    "distilbert": "bert", "electra": "bert", "mpnet": "bert", "vit": "vit", "gpt2": "gpt2"}
PARITY_RTOL = 1e-3  # largest |onnx - torch| allowed, relative to the largest |torch| output
MAX_ROUNDS = 20  # timed rounds per candidate (interleaved): the choice needs a ranking, not a report
SPEED_TIE = 1.03  # latency ratios to the fastest within this are a tie (run-to-run spread, module doc)

Timer = Callable[[dict[str, Path], dict[str, np.ndarray]], dict[str, list[float]]]


@dataclass
class QuickQuant:
    """The dynamic int8 settings candidates are timed with (the pipeline's quantize pass)."""

    per_channel: bool = True
    reduce_range: bool = False
    weight_type: str = "int8"

    def describe(self) -> str:
        return (f"dynamic int8 ({self.weight_type} weights, {'per-channel' if self.per_channel else 'per-tensor'}"
                f"{', reduce_range' if self.reduce_range else ''})")


@dataclass
class Candidate:
    name: str
    exporter: str  # "torchscript" | "dynamo"
    attention: str | None = None  # None: the model's own implementation
    fusion: str | None = None  # ORT optimizer model_type
    path: Path | None = None
    timed_path: Path | None = None
    export_s: float | None = None
    nodes: int | None = None
    parity_max_rel: float | None = None
    latency_ms: float | None = None
    ratio: float | None = None  # median per-round latency / the chosen one's
    int8_min_cosine: float | None = None  # its int8 model against torch on the timing batch
    status: str = "not built"
    fused_ops: dict[str, int] = field(default_factory=dict)
    rewrites: list[str] = field(default_factory=list)  # what was done to the file timed (padding cut, ...)

    def record(self) -> dict[str, Any]:
        return {"name": self.name, "exporter": self.exporter, "attention": self.attention or "model default",
                "fusion": self.fusion, "export_s": _round(self.export_s, 2), "nodes": self.nodes,
                "fused_ops": self.fused_ops or None, "parity_max_rel_diff": _round(self.parity_max_rel, 8),
                "latency_ms": _round(self.latency_ms, 3), "latency_vs_chosen": _round(self.ratio, 4),
                "int8_min_cosine": _round(self.int8_min_cosine, 5), "status": self.status}


def _round(x: float | None, n: int) -> float | None:
    return None if x is None else round(float(x), n)


def transformer_config(handle: ModelHandle) -> Any:
    """The transformers config of the model inside a torch handle (None: not a transformers model)."""
    module = handle.module
    if module is None:
        return None
    for sub in module.modules():
        if callable(getattr(sub, "set_attn_implementation", None)):
            return getattr(sub, "config", None)
    return None


def candidates_for(handle: ModelHandle) -> tuple[list[Candidate], list[Candidate]]:
    """(candidates to build, candidates skipped with the reason) for a transformers model."""
    config = transformer_config(handle)
    build = [Candidate("torchscript-eager", "torchscript", "eager")]
    skipped: list[Candidate] = []
    fusion = Candidate("torchscript-eager+fusion", "torchscript", "eager")
    ort_type = ORT_FUSION_TYPES.get(str(getattr(config, "model_type", "")))
    if ort_type is None:
        fusion.status = f"skipped: ONNX Runtime has no transformer fusion for model type {getattr(config, 'model_type', None)!r}"
        skipped.append(fusion)
    else:
        fusion.fusion = ort_type
        build.append(fusion)
    build.append(Candidate("dynamo", "dynamo"))
    return build, skipped


def _fuse(src: Path, dst: Path, model_type: str, config: Any) -> dict[str, int]:
    import os
    import sys

    import onnxruntime.transformers as ort_transformers

    # its optimizer imports sibling modules as top-level ones (`fusion_options`); the package puts its
    # folder on sys.path once, at first import, so a host that restores sys.path later breaks it
    folder = os.path.dirname(ort_transformers.__file__)
    if folder not in sys.path:
        sys.path.append(folder)
    from onnxruntime.transformers.optimizer import optimize_model

    heads, hidden = int(getattr(config, "num_attention_heads", 0) or 0), int(getattr(config, "hidden_size", 0) or 0)
    model = optimize_model(str(src), model_type=model_type, num_heads=heads, hidden_size=hidden, opt_level=1, use_gpu=False)
    if heads and hidden:
        _heads_from_weights(model.model.graph, hidden // heads)
    model.save_model_to_file(str(dst))
    return {k: int(v) for k, v in model.get_fused_operator_statistics().items() if v}


def _heads_from_weights(graph: Any, head_size: int) -> None:
    """Set each fused Attention's `num_heads` from its Q/K/V weight's width (3 × heads × head size).
    ONNX Runtime's fusion writes the config's head count on every layer, as it reads no other where
    the export builds its reshapes at run time; after structured pruning each layer has its own
    (all-MiniLM-L6-v2 with 21 heads out: 7, 5, 7, 8 and 12). The export's parity check against torch
    then judges the result like any candidate's."""
    weights = {n.input[1] for n in graph.node if n.op_type == "Attention" and len(n.input) > 1}
    widths = {t.name: t.dims[-1] for t in graph.initializer if t.name in weights and t.dims}
    for n in graph.node:
        if n.op_type != "Attention" or n.input[1] not in widths:
            continue
        width = widths[n.input[1]]
        if width % (3 * head_size):
            raise ValueError(f"{n.name}: Q/K/V width {width} is not 3 × heads × {head_size}")
        for a in n.attribute:
            if a.name == "num_heads":
                a.i = width // (3 * head_size)


def _build(cand: Candidate, handle: ModelHandle, folder: Path, opset: int) -> ModelHandle | None:
    """Export (and fuse) one candidate; on failure its status says why and None is returned."""
    from optimize.export import ExportError, export_to_onnx

    t0 = time.perf_counter()
    path = folder / f"{cand.name}.onnx"
    try:
        exported = export_to_onnx(handle, path, opset=opset, exporter=cand.exporter, attention=cand.attention)
    except ExportError as exc:
        cand.status = f"export failed: {exc}"
        return None
    if cand.fusion:
        fused = folder / f"{cand.name}.fused.onnx"
        quiet = logging.getLogger()
        old = quiet.level
        quiet.setLevel(max(old, logging.ERROR))  # the optimizer warns through the root logger
        try:
            with redirect_stdout(io.StringIO()):  # its shape inference prints its failures
                cand.fused_ops = _fuse(path, fused, cand.fusion, transformer_config(handle))
        except Exception as exc:  # the fusion scripts raise many types; keep the first line
            cand.status = f"ONNX Runtime fusion failed: {_first_line(exc)}"
            return None
        finally:
            quiet.setLevel(old)
        fused.replace(path)
    cand.export_s = time.perf_counter() - t0
    cand.path = path
    cand.nodes = _node_count(path)
    return exported


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def _node_count(path: Path) -> int:
    import onnx

    return len(onnx.load(str(path), load_external_data=False).graph.node)


def parity_probes(handle: ModelHandle, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Two input batches the export must agree with torch on: the example shape, and a longer,
    different batch whose attention mask pads the end of every row but the first (padding-mask
    handling, symbolic sequence length)."""
    import dataclasses

    rng = np.random.default_rng(seed)
    probes = []
    for batch, extra in ((2, 0), (3, 7)):
        specs = [dataclasses.replace(s, example_size=s.example_size + extra) if s.example_size and extra else s
                 for s in handle.inputs]
        feed = {s.name: s.random(batch, rng) for s in specs}
        mask = feed.get("attention_mask")
        if mask is not None and mask.ndim == 2 and extra:
            mask[:] = 1
            for row in range(1, mask.shape[0]):
                mask[row, max(1, mask.shape[1] - 2 * row):] = 0
        probes.append(feed)
    return probes


def torch_outputs(handle: ModelHandle, probes: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    import torch

    from optimize.export import finalized_module

    module = finalized_module(handle.module)
    outs = []
    with torch.no_grad():
        for feed in probes:
            out = module(*[torch.from_numpy(feed[name]) for name in handle.input_names])
            outs.append((out[0] if isinstance(out, (tuple, list)) else out).numpy())
    return outs


def parity_failure(path: Path, probes: list[dict[str, np.ndarray]], refs: list[np.ndarray]) -> tuple[float, str | None]:
    """(largest relative difference to torch, why the export is rejected or None)."""
    from optimize.runtime import session

    sess = session(path, threads=1)
    worst = 0.0
    for feed, ref in zip(probes, refs, strict=True):
        got = sess.run(None, {i.name: feed[i.name] for i in sess.get_inputs()})[0]
        if got.shape != ref.shape:
            return float("inf"), f"parity failed: output shape {got.shape} where torch gives {ref.shape}"
        scale = max(float(np.abs(ref).max()), 1e-6)
        worst = max(worst, float(np.abs(got.astype(np.float64) - ref).max()) / scale)
    if not np.isfinite(worst) or worst > PARITY_RTOL:
        return worst, f"parity failed: largest difference to torch {worst:.2e} of the output's scale (limit {PARITY_RTOL:g})"
    return worst, None


def quantize_for_timing(src: Path, dst: Path, quant: QuickQuant) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quiet = logging.getLogger()
    old = quiet.level
    quiet.setLevel(max(old, logging.ERROR))
    try:
        with redirect_stdout(io.StringIO()):
            quantize_dynamic(str(src), str(dst), per_channel=quant.per_channel, reduce_range=quant.reduce_range,
                             weight_type=QuantType.QUInt8 if quant.weight_type == "uint8" else QuantType.QInt8,
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})  # fused ops: no shape inference
    finally:
        quiet.setLevel(old)


def interleaved_timer(threads: int, warmup: int, repeat: int, device: str = "cpu") -> Timer:
    def timer(models: dict[str, Path], inputs: dict[str, np.ndarray]) -> dict[str, list[float]]:
        from optimize.benchmark import interleaved

        timings = interleaved(models, inputs, threads=threads, warmup=warmup, repeat=repeat, device=device,
                              key="export-candidates")
        return {name: t.times_ms for name, t in timings.items()}

    return timer


def rank(cands: list[Candidate], times: dict[str, list[float]]) -> Candidate:
    """The fastest candidate by the median of per-round latency ratios (interleaved rounds share
    the machine's slow spells); among those within SPEED_TIE of it, the one whose int8 model is
    closest to torch (when measured). Every candidate gets its ratio to the chosen one and a status."""
    def ratio(a: str, b: str) -> float:
        return float(statistics.median(x / y for x, y in zip(times[a], times[b], strict=True) if y > 0))

    def tied(c: Candidate) -> bool:  # within SPEED_TIE, or as fast as the fastest in a quarter of the rounds
        rounds = sorted(x / y for x, y in zip(times[c.name], times[fastest.name], strict=True) if y > 0)
        return ratio(c.name, fastest.name) <= SPEED_TIE or (bool(rounds) and rounds[(len(rounds) + 3) // 4 - 1] <= 1.0)

    ref = cands[0].name
    fastest = min(cands, key=lambda c: ratio(c.name, ref))
    ties = [c for c in cands if tied(c) and c.int8_min_cosine is not None]
    ties = ties if fastest in ties else []  # no quality comparison unless the fastest was measured
    best = max(ties, key=lambda c: c.int8_min_cosine or 0.0) if ties else fastest
    for c in cands:
        c.latency_ms = float(statistics.median(times[c.name]))
        c.ratio = ratio(c.name, best.name)
        if c is best:
            c.status = "chosen" if c is fastest else (
                f"chosen: as fast as the fastest (within {SPEED_TIE:g}x) and closest to torch after int8")
        elif c in ties:
            c.status = (f"speed tie ({c.ratio:.3f}x the chosen export's latency), int8 min cosine "
                        f"{c.int8_min_cosine:.4f} vs {best.int8_min_cosine:.4f}")
        else:
            c.status = f"slower: {c.ratio:.3f}x the chosen export's latency"
    return best


def int8_cosines(cands: list[Candidate], handle: ModelHandle, inputs: dict[str, np.ndarray]) -> None:
    """Each candidate's int8 model against torch on the timing batch: its min per-sample cosine."""
    from optimize.frameworks.embedding import embedding_cosines
    from optimize.runtime import session

    ref = torch_outputs(handle, [inputs])[0]
    for c in cands:
        sess = session(c.timed_path, threads=1)
        got = sess.run(None, {i.name: inputs[i.name] for i in sess.get_inputs()})[0]
        cos = embedding_cosines(ref, np.asarray(got)) if got.shape == ref.shape else np.array([np.nan])
        c.int8_min_cosine = float(cos.min()) if np.isfinite(cos).all() else None


def choose_export(handle: ModelHandle, path: Path, *, opset: int, inputs: dict[str, np.ndarray],
                  quant: QuickQuant | None = None, timer: Timer | None = None, threads: int = 1,
                  warmup: int = 3, repeat: int = MAX_ROUNDS, device: str = "cpu",
                  handed_out: Callable[[Path, Path], tuple[Path, list[str]]] | None = None) -> tuple[ModelHandle, dict[str, Any]]:
    """Build, check and time the candidates of `candidates_for`; the fastest is written to `path`.
    `handed_out(path, folder) -> (path, what was done)`: each is timed as that returns it, as the
    pipeline's last steps will hand it out (optimize/handed_out.py: padding cut, Softmax guarded; a
    fused Attention op has no Softmax to guard). Returns its handle and the record for the report.
    Raises ExportError when none is usable."""
    from optimize.export import ExportError

    t_start = time.perf_counter()
    work = path.parent / "export-candidates"
    work.mkdir(parents=True, exist_ok=True)
    build, skipped = candidates_for(handle)
    probes = parity_probes(handle)
    refs = torch_outputs(handle, probes)
    usable: list[tuple[Candidate, ModelHandle]] = []
    for cand in build:
        exported = _build(cand, handle, work, opset)
        if exported is None or cand.path is None:
            continue
        cand.parity_max_rel, why = parity_failure(cand.path, probes, refs)
        if why is None and quant is not None:
            why = _quantized(cand, quant)
        if why is not None:
            cand.status = why
            continue
        cand.timed_path = cand.timed_path or cand.path
        if handed_out is not None:
            cand.timed_path, cand.rewrites = handed_out(cand.timed_path, work / f"{cand.name}-handed-out")
        usable.append((cand, exported))
    if not usable:
        raise ExportError("no export of the model is usable; " + " | ".join(f"{c.name}: {c.status}" for c in build))
    timer = timer or interleaved_timer(threads, warmup, repeat, device)
    if len(usable) > 1:
        if quant is not None:
            int8_cosines([c for c, _ in usable], handle, inputs)
        best = rank([c for c, _ in usable], timer({c.name: c.timed_path for c, _ in usable}, inputs))  # type: ignore[misc]
    else:
        best = usable[0][0]
        best.status = "chosen (the only usable export)"
    chosen = next(h for c, h in usable if c is best)
    shutil.move(str(best.path), str(path))
    shutil.rmtree(work, ignore_errors=True)
    record = {
        "chosen": best.name,
        "timed_as": (quant.describe() if quant else "float32") + "".join(f", {r}" for r in best.rewrites),
        "shape": {k: list(v.shape) for k, v in inputs.items()},
        "threads": threads,
        "device": device,
        "seconds": round(time.perf_counter() - t_start, 1),
        "candidates": [c.record() for c in (*build, *skipped)],
    }
    label = f"torch.onnx ({best.exporter}{', ' + best.attention + ' attention' if best.attention else ''}" \
            f"{', ONNX Runtime ' + best.fusion + ' fusion' if best.fusion else ''}; measured among {len(usable)})"
    return chosen.replace(onnx_path=path, exporter=label), record


def _quantized(cand: Candidate, quant: QuickQuant) -> str | None:
    """Quantize the candidate as the pipeline will (for timing); the reason when that fails."""
    assert cand.path is not None
    dst = cand.path.with_name(cand.path.stem + ".int8.onnx")
    try:
        quantize_for_timing(cand.path, dst, quant)
    except Exception as exc:  # the quantizer raises many types; keep the first line
        return f"int8 quantization failed: {_first_line(exc)}"
    cand.timed_path = dst
    return None
