"""What the quantize step reports: the settings it ran with, and what the written file holds
(integer ops, weights stored at 8 bits or fewer, counted from the file itself)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from passes.quantize.config import QuantizeConfig

# Ops whose presence in the output means integer (or integer-fused) kernels.
INTEGER_OPS = (
    "QLinearConv", "QLinearMatMul", "QLinearAdd", "QLinearMul", "QLinearConcat", "QLinearAveragePool",
    "QLinearGlobalAveragePool", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax", "QLinearWhere",
    "QGemm", "MatMulInteger", "ConvInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul",
    "QuantizeLinear", "DequantizeLinear", "QAttention", "DynamicQuantizeLSTM", "QEmbedLayerNormalization",
)


def integer_ops(counts: dict[str, int]) -> dict[str, int]:
    return {op: c for op, c in counts.items()
            if op.rsplit(".", 1)[-1] in INTEGER_OPS or op.rsplit(".", 1)[-1].startswith("QLinear")}


def _quantized_ops(path: Path) -> dict[str, int]:
    from optimize.inspect_onnx import op_counts

    counts = op_counts(path)
    blocks = {op: c for op, c in counts.items() if op.endswith(("MatMulNBits", "GatherBlockQuantized"))}
    return {**integer_ops(counts), **blocks}


def _listing(ops: dict[str, int]) -> str:
    return ", ".join(f"{op.rsplit('.', 1)[-1]} {c}" for op, c in sorted(ops.items()))


def nothing_quantized(path: Path, src: Path, op_types: list[str] | None) -> str | None:
    """The note to write when the quantizer's output adds nothing integer to its input, or None
    when it does. Compared with the input, so that integer ops an input already held (ConvInteger,
    QDQ ...) and that come through unchanged count as nothing done."""
    after = _quantized_ops(path)
    before = _quantized_ops(src)
    if any(c > before.get(op, 0) for op, c in after.items()):
        return None
    if before:
        why = f"the input is already quantized ({_listing(before)}) and the quantizer made no further op integer"
    else:
        why = ("the quantizer made no op integer (nothing matched its op types" + (f" {op_types}" if op_types else "")
               + ", or their shapes/types were unknown; static mode leaves If/Loop bodies float)")
    return f"{why}: the input model is handed back unchanged"


def already_quantized(src: Path, share: float = 0.9) -> str | None:
    """What the input holds, when it is quantized already: integer (or block) ops and at least
    `share` of its weight elements stored at 8 bits or fewer. ONNX Runtime's quantizers are not
    made to run twice (static QDQ on a ConvInteger model raises a KeyError on a scale name)."""
    from optimize.inspect_onnx import weight_stats

    ops = _quantized_ops(src)
    if not ops:
        return None
    stats = weight_stats(src)
    low = sum(t.count for t in stats.tensors if t.bits <= 8)
    if stats.total and low / stats.total < share:
        return None
    return f"the input is already quantized ({_listing(ops)}; {low / stats.total if stats.total else 0:.0%} of weights at 8 bits or fewer)"


def base_metrics(cfg: QuantizeConfig, after_qat: bool) -> dict[str, Any]:
    metrics: dict[str, Any] = {
        "stage": "materialize_qat" if after_qat else "quantize",
        "mode": cfg.mode,
        "bits": cfg.bits,
        "format": cfg.format if cfg.mode == "static" or cfg.format == "auto" else None,
        "per_channel": cfg.per_channel,
        "reduce_range": cfg.reduce_range,
        "weight_type": cfg.weight_type,
        "activation_type": cfg.activation_type if cfg.mode == "static" else "uint8 (dynamic)",
    }
    if cfg.mode == "weight_only":
        metrics.update(weight_type=f"int{cfg.bits} blocks" + ("" if cfg.symmetric_blocks else " + zero points"),
                       activation_type="float (weight-only)", block_size=cfg.block_size,
                       accuracy_level=cfg.accuracy_level)
    return metrics


def describe_result(cfg: QuantizeConfig, src: Path, final: Path, after_qat: bool, metrics: dict[str, Any],
                    notes: list[str]) -> None:
    """Counts read back from the written file, and notes on what did (not) become integer."""
    from optimize.inspect_onnx import op_counts, weight_stats

    counts = op_counts(final)
    integer = integer_ops(counts)
    stats = weight_stats(final)
    quantized = [t for t in stats.tensors if t.bits <= 8]
    metrics.update(
        integer_ops=integer,
        weights_quantized=len(quantized),
        weight_tensors=len(stats.tensors),
        quantized_weight_fraction=(sum(t.count for t in quantized) / stats.total) if stats.total else 0.0,
        weight_bits={str(b): sum(t.count for t in stats.tensors if t.bits == b)
                     for b in sorted({t.bits for t in stats.tensors})},
    )
    if stats.has_logical:  # binary/ternary codes stored in int8: both counts, read back from the file
        metrics.update(logical_weight_bits=stats.counts_by_bits(logical=True),
                       stored_weight_bits=stats.counts_by_bits(logical=False))
    if cfg.bits in (1, 2) and not after_qat:
        from passes.quantize.lowbit import lowbit_name

        notes.append(
            f"post-training {lowbit_name(cfg.bits)} ({cfg.bits}-bit) weights without training: accuracy usually "
            "collapses without quantization-aware training; place quantize before a distill pass on a torch model"
        )
    if after_qat:
        metrics["weight_scales"] = (
            "from the QAT-trained weights with the formula used in training (same int8 grid)"
        )
        metrics["activation_ranges"] = (
            "computed at run time (dynamic)" if cfg.mode == "dynamic" else "re-calibrated on the exported model"
        )
    if final == src:
        pass  # the float input kept (format auto, or nothing became integer); the notes say why
    elif not quantized:
        notes.append("no weight tensor was stored as 8-bit: only activations were quantized")
    if final != src and metrics.get("mode") == "dynamic" and any(op.endswith("ConvInteger") for op in counts):
        notes.append(
            "dynamic quantization of Conv gives ConvInteger (per-tensor weights), often slower than float "
            "on CPU; static QDQ is the fast layout for convolutions"
        )



def unmatched_exclusions(cfg: Any, path: Path, rewritten: bool) -> list[str]:
    """A note naming the `exclude_nodes` that match no node of the graph the quantizer gets (they
    keep nothing in float), with what node names look like there; [] when all match."""
    if not cfg.exclude_nodes:
        return []
    import onnx

    from optimize.inspect_onnx import all_graphs

    names = [n.name for g in all_graphs(onnx.load(str(path), load_external_data=False).graph) for n in g.node]
    missing = [n for n in cfg.exclude_nodes if n not in set(names)]
    if not missing:
        return []
    example = next((n for n in names if n), "")
    why = (" (the conv_affine rewrite gives the convs it folds new names; rewrites: [] keeps them)"
           if rewritten else "")
    return [f"exclude_nodes: {', '.join(missing)} match no node of the model and keep nothing in float{why}; "
            f"node names look like {example!r}"]
