"""The calls into ONNX Runtime's quantization tools: dynamic and static int8 (and int4 / binary /
ternary QDQ weights), block-wise weight-only (MatMulNBits), transformer fusion, and
`quant_pre_process`. Each takes the pass config and paths; none decides what to try (the pass does).

The quantizers warn through the root logger and print to stdout; callers silence them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from passes.quantize.calibration import CalibrationReader, calibration_feed

if TYPE_CHECKING:
    from optimize.context import RunContext
    from passes.quantize.config import QuantizeConfig

PASS_NAME = "quantize"


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (runtime messages are long; the reason is first)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def quantize_file(
    cfg: QuantizeConfig, qin: Any, out: Any, ctx: RunContext, large: bool, metrics: dict[str, Any],
    notes: list[str], include: list[str] | None = None, exclude: list[str] | None = None,
) -> None:
    """Quantize `qin` into `out` with settings `cfg` (dynamic or static; not auto)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from optimize import onnx_io

    qtype = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8, "int4": QuantType.QInt4}
    extra: dict[str, Any] = {"DefaultTensorType": onnx.TensorProto.FLOAT}
    weight_type = "int4" if cfg.bits == 4 else cfg.weight_type
    if cfg.bits in (1, 2, 4):
        extra["WeightSymmetric"] = True
    exclude = [*cfg.exclude_nodes, *(exclude or [])]
    if cfg.mode == "dynamic":
        ignored = sorted(
            {"format", "activation_type", "calibration", "calibration_samples"} & cfg.model_fields_set
        )
        if ignored and cfg.format != "auto":
            notes.append(f"{', '.join(ignored)}: apply to static quantization only; ignored in dynamic mode")
        if cfg.op_types is not None and "Gemm" in cfg.op_types and "MatMul" not in cfg.op_types:
            notes.append(
                "dynamic quantization rewrites Gemm as MatMul + Add before quantizing: list MatMul in "
                "op_types to quantize Gemm layers"
            )
        # ONNX Runtime renames a Gemm it rewrites to NAME_MatMul before applying node lists
        alias = lambda names: [*names, *(f"{n}_MatMul" for n in names)]  # noqa: E731
        src = qin
        try:
            src = _smoothed_first(cfg, qin, out, ctx, metrics, notes, include, exclude)
            src = _per_token_first(cfg, src, out, ctx, metrics, notes, include, exclude)
            quantize_dynamic(
                str(src), str(out), op_types_to_quantize=cfg.op_types, per_channel=cfg.per_channel,
                reduce_range=cfg.reduce_range, weight_type=qtype[cfg.weight_type],
                nodes_to_quantize=alias(include) if include else None,
                nodes_to_exclude=alias(exclude) or None, use_external_data_format=large,
                extra_options={**extra, "EnableSubgraph": True},
            )
        finally:
            for scratch in (_per_token_scratch(out), _smooth_scratch(out)):
                for f in (scratch, scratch.with_name(scratch.name + ".data")):
                    f.unlink(missing_ok=True)
        onnx_io.normalize_ir_version_file(out)  # runnable as written (old IR: initializer inputs)
        return
    ort_in, projected = qin, None
    if cfg.bits in (1, 2):  # binary/ternary: project the float weights first (a no-op after QAT)
        from pathlib import Path

        from passes.quantize.lowbit import project_model

        ort_in = Path(out).with_name(Path(out).stem + ".lowbit-float.onnx")
        projected = project_model(qin, ort_in, cfg.bits, cfg.per_channel, cfg.op_types, exclude, include)
        try:
            static(cfg, ort_in, qin, out, ctx, large, metrics, notes, include, exclude, weight_type, extra)
        finally:
            for f in (ort_in, ort_in.with_name(ort_in.name + ".data")):
                f.unlink(missing_ok=True)
        materialize_lowbit(cfg, out, projected, metrics, notes)
        return
    static(cfg, qin, qin, out, ctx, large, metrics, notes, include, exclude, weight_type, extra)


def _per_token_scratch(out: Any) -> Any:
    from pathlib import Path

    return Path(out).with_name(Path(out).stem + ".per-token.onnx")


def _smooth_scratch(out: Any) -> Any:
    from pathlib import Path

    return Path(out).with_name(Path(out).stem + ".smooth.onnx")


def _smoothed_first(cfg: QuantizeConfig, qin: Any, out: Any, ctx: Any, metrics: dict[str, Any], notes: list[str],
                    include: list[str] | None, exclude: list[str]) -> Any:
    """`smooth_alpha`: the MatMuls' inputs divided per channel, their weights' rows multiplied back
    (passes/quantize/smooth.py), into a scratch file beside `out` (returned; `qin` when nothing is done)."""
    from pathlib import Path

    if cfg.smooth_alpha is None:
        return qin
    from passes.quantize.activation_probe import user_samples
    from passes.quantize.smooth import smooth_file

    found = user_samples(ctx, cfg.calibration_samples)
    if found is None:  # the pass's check refuses this before the run; a direct call says so here
        notes.append("smooth_alpha: no data (data.calibration, data.train or data.eval) to measure channel ranges on; "
                     "not smoothed")
        return qin
    feeds, source = found
    batch = max(1, int(getattr(ctx.config.measure, "batch", 1)))
    scratch = _smooth_scratch(out)
    done = smooth_file(Path(qin), scratch, cfg.smooth_alpha, feeds, batch, code_max=64 if cfg.reduce_range else 127,
                       op_types=cfg.op_types,
                       include=include, exclude=exclude, inputs=cfg.smooth_inputs)
    metrics["smooth"] = {**done, "source": source} if done else {"nodes": 0}
    if not done:
        notes.append("smooth_alpha: no input of a MatMul by a weight was reached by the samples"
                     + (" or gained from smoothing" if cfg.smooth_alpha == "auto" else "") + "; nothing smoothed")
        return qin
    alphas = sorted(set(done["alphas"]))
    msg = (f"smooth_alpha {cfg.smooth_alpha}: {done['inputs']} of {done['of_inputs']} "
           f"{'weighted inputs' if cfg.smooth_inputs == 'all' else 'inputs a norm or attention writes'} scaled per channel "
           f"(SmoothQuant; alpha {', '.join(f'{a:g}' for a in alphas)}), {done['nodes']} nodes reading them, "
           f"from {done['samples']} samples of {source}")
    if msg not in notes:  # a repair retry quantizes again with the same notes
        notes.append(msg)
    return scratch


def _per_token_first(cfg: QuantizeConfig, qin: Any, out: Any, ctx: Any, metrics: dict[str, Any], notes: list[str],
                     include: list[str] | None, exclude: list[str]) -> Any:
    """`per_token`: the chosen MatMuls rewritten per token into a scratch file beside `out` (returned;
    `qin` itself when there is nothing to do)."""
    from pathlib import Path

    if cfg.per_token == "none" or cfg.bits != 8 or cfg.weight_type != "int8":
        return qin
    if cfg.op_types is not None and "MatMul" not in cfg.op_types:
        notes.append(f"per_token {cfg.per_token}: op_types leaves MatMul out; nothing scaled per token")
        return qin
    from passes.quantize.token_scales import scale_per_token

    scope = cfg.per_token
    if scope == "auto":
        from passes.quantize.token_outliers import choose

        scope, include = "mlp", choose(cfg, Path(qin), ctx, include, exclude, metrics, notes)
        if include == []:
            metrics["per_token_matmuls"] = 0
            return qin
    scratch = _per_token_scratch(out)
    # 7-bit weights on ONNX Runtime's own grid (±64) when reduce_range is on
    n = scale_per_token(Path(qin), scratch, scope, code_max=64 if cfg.reduce_range else 127,
                        per_channel=cfg.per_channel, include=include, exclude=exclude)
    metrics["per_token_matmuls"] = n
    if not n:
        notes.append(f"per_token {cfg.per_token}: no MatMul by a weight " + (
            "reads an activation's output" if cfg.per_token in ("mlp", "auto") else "to scale") + "; all scaled per call")
        return qin
    return scratch


def materialize_lowbit(
    cfg: QuantizeConfig, out: Any, projected: dict[str, Any], metrics: dict[str, Any], notes: list[str],
) -> None:
    """Rewrite ONNX Runtime's int8 weights of the projected layers as codes {-1, 0, 1} × α."""
    from passes.quantize.lowbit import SCHEME_TEXT, lowbit_name, materialize_codes

    done = materialize_codes(out, projected, cfg.bits)
    metrics.update(
        logical_bits=cfg.bits, lowbit_scheme=SCHEME_TEXT[cfg.bits],
        lowbit_storage="int8 codes (binary -1/1, ternary -1/0/1) × float32 scale per output channel "
        "(DequantizeLinear); activations quantized by ONNX Runtime's static QDQ quantizer",
        lowbit_weights=len(done["codes"]),
    )
    if done["left_float"] or done["mismatched"]:
        left = [*done["left_float"], *done["mismatched"]]
        metrics["lowbit_left_float"] = left
        notes.append(
            f"{len(left)} layer(s) hold {lowbit_name(cfg.bits)} values but were not stored as int8 codes by "
            f"ONNX Runtime's quantizer ({', '.join(left)}): they count at their stored bits"
        )
    if not projected:
        notes.append(
            f"no Conv/Gemm/MatMul weight could take {lowbit_name(cfg.bits)} values (a weight must be a float "
            "initializer read directly by its layer)"
        )


def _float_tail(cfg: QuantizeConfig, qin: Any, include: list[str] | None, metrics: dict[str, Any],
                notes: list[str]) -> list[str]:
    """The post-processing tail kept in float (passes/quantize/tail.py), unless `float_tail: false`."""
    from pathlib import Path

    from passes.quantize.tail import float_tail

    if not cfg.float_tail or include:
        return []
    tail = float_tail(Path(qin))
    metrics["float_tail_nodes"] = len(tail)
    if tail:
        shown = ", ".join(tail[:8]) + (f", … ({len(tail)} in all)" if len(tail) > 8 else "")
        notes.append(f"kept the post-processing after the last weighted layer in float ({shown}): no integer "
                     "kernel is lost, and one int8 scale across e.g. boxes and scores is avoided (float_tail)")
    return tail


def _batch_size(batches: Any) -> int:
    from optimize.probes import sample_count

    return int(getattr(batches, "batch", 0) or sample_count(batches[0]))


def _ranges_cache(cfg: QuantizeConfig, ort_in: Any, qin: Any, samples: int) -> dict[str, Any]:
    """ONNX Runtime's calibration cache (`calibration_cache_path`, onnxruntime >= 1.25) for the prepared
    input: activation ranges do not depend on which nodes are quantized, so the accuracy-aware fallback
    and `format: auto` calibrate once instead of once per variant (62 times on a real detector)."""
    import hashlib
    import inspect
    from pathlib import Path

    from onnxruntime.quantization import quantize_static

    if ort_in != qin or "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
        return {}  # binary/ternary: calibrated on the projected weights; older runtimes: no cache
    key = hashlib.sha256(repr((cfg.calibration, samples, cfg.op_types)).encode()).hexdigest()[:16]
    folder = Path(qin).parent / "ranges"
    folder.mkdir(exist_ok=True)
    return {"calibration_cache_path": str(folder / f"{Path(qin).stem}-{key}.json")}


def static(
    cfg: QuantizeConfig, ort_in: Any, qin: Any, out: Any, ctx: RunContext, large: bool,
    metrics: dict[str, Any], notes: list[str], include: list[str] | None, exclude: list[str], weight_type: str,
    extra: dict[str, Any],
) -> None:
    """ONNX Runtime's quantize_static on `ort_in` (calibrated in small batches) into `out`."""
    import io
    from contextlib import redirect_stdout

    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from optimize import onnx_io
    from optimize.errors import PassError
    from optimize.inspect_onnx import all_graphs

    qtype = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8, "int4": QuantType.QInt4}
    batches, used, source = calibration_feed(qin, ctx, cfg.calibration_samples)
    tail = _float_tail(cfg, qin, include, metrics, notes)
    if not batches:
        raise PassError(PASS_NAME, "no calibration samples (the calibration data set is empty)")
    metrics.update(
        calibration=cfg.calibration, calibration_samples=used, calibration_source=source,
        calibration_batches=len(batches),
        calibration_merge=f"ranges merged per batch of {_batch_size(batches)} (bounded memory)",
    )
    if source.startswith("random"):
        notes.append(
            "static ranges calibrated on random inputs from the input spec: activation ranges may "
            "not match real data; declare data.calibration for a meaningful calibration"
        )
    key = f"{PASS_NAME}.calibrate"
    ctx.progress.start(key, "calibrating activation ranges", len(batches))
    reader = CalibrationReader(batches, ctx.progress, key)
    method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[cfg.calibration]
    try:
        with redirect_stdout(io.StringIO()):  # the histogram collector prints per batch
            quantize_static(
                str(ort_in), str(out), reader,
                quant_format=QuantFormat.QOperator if cfg.format == "qoperator" else QuantFormat.QDQ,
                op_types_to_quantize=cfg.op_types, per_channel=cfg.per_channel,
                reduce_range=cfg.reduce_range, activation_type=qtype[cfg.activation_type],
                weight_type=qtype[weight_type], nodes_to_quantize=include or None,
                nodes_to_exclude=[*exclude, *tail] or None,
                use_external_data_format=large, calibrate_method=method,
                # one batch per collect: ranges/histograms merged as they come (bounded memory)
                extra_options={**extra, "CalibStridedMinMax": 1},
                **_ranges_cache(cfg, ort_in, qin, used),
            )
    finally:
        ctx.progress.finish(key)
    onnx_io.normalize_ir_version_file(out)
    if len(list(all_graphs(onnx.load(str(qin), load_external_data=False).graph))) > 1:
        notes.append(
            "static quantization leaves If/Loop/Scan bodies in float (ONNX Runtime quantizes "
            "subgraphs in dynamic mode only)"
        )
    if cfg.format == "qoperator" and cfg.per_channel:
        notes.append(
            "QOperator per-channel kernels have measured far slower than QDQ on AVX2 CPUs without "
            "VNNI (0.2x of float32 in the field notes); prefer format: qdq unless measured faster"
        )

# ------------------------------------------------------------------ goal, fallback, auto


def weight_only(cfg: QuantizeConfig, qin: Any, out: Any, large: bool, metrics: dict[str, Any], notes: list[str]) -> None:
    """int4/int8 block-wise MatMul weights with ONNX Runtime's MatMulNBits quantizer."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    from onnxruntime.quantization.onnx_model import ONNXModel

    if cfg.op_types is not None and not {"MatMul", "Gemm"} & set(cfg.op_types):
        notes.append(f"weight_only quantizes MatMul/Gemm weights; op_types {cfg.op_types} selects none")
    proto = onnx.load(str(qin))
    wrapped = ONNXModel(proto)
    gemms = sum(1 for n in proto.graph.node if n.op_type == "Gemm")
    if gemms and (cfg.op_types is None or "Gemm" in cfg.op_types):
        wrapped.replace_gemm_with_matmul()  # MatMulNBits replaces MatMul only
        metrics["gemm_rewritten_as_matmul"] = gemms
    quantizer = MatMulNBitsQuantizer(
        wrapped.model, bits=cfg.bits, block_size=cfg.block_size, is_symmetric=cfg.symmetric_blocks,
        accuracy_level=cfg.accuracy_level or None, nodes_to_exclude=list(cfg.exclude_nodes),
        op_types_to_quantize=("MatMul",),
    )
    from passes.quantize.int4 import quiet_quantizer

    with quiet_quantizer():  # it logs every node it skips at INFO, even under -q
        quantizer.process()
    quantizer.model.save_model_to_file(str(out), large)
    if cfg.accuracy_level != 4:
        notes.append(
            "weight_only keeps activations in float: the gain is size (and memory bandwidth); "
            "accuracy_level: 4 lets ONNX Runtime compute with int8 activations, usually faster on CPU"
        )


def fuse(cfg: QuantizeConfig, src: Any, dst: Any, large: bool, metrics: dict[str, Any]) -> Any:
    import io
    from contextlib import redirect_stderr, redirect_stdout

    from onnxruntime.transformers.optimizer import optimize_model

    from optimize.errors import PassError
    from optimize.inspect_onnx import op_counts

    try:
        with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
            opt = optimize_model(str(src), model_type=cfg.fusion, num_heads=cfg.num_heads,
                                 hidden_size=cfg.hidden_size)
            opt.save_model_to_file(str(dst), use_external_data_format=large)
            stats = opt.get_fused_operator_statistics()
    except Exception as exc:
        raise PassError(PASS_NAME, f"ONNX Runtime's transformer fusion ({cfg.fusion}) failed: {first_line(exc)}") from exc
    before, after = op_counts(src), op_counts(dst)
    metrics["fusion"] = {
        "model_type": cfg.fusion,
        "fused_ops": {k: int(v) for k, v in stats.items() if v},
        "nodes_before": sum(before.values()),
        "nodes_after": sum(after.values()),
    }
    return dst


def preprocess(src: Any, pre: Any, large: bool, notes: list[str]) -> Any:
    import io
    import logging
    from contextlib import redirect_stderr, redirect_stdout

    from onnxruntime.quantization.shape_inference import quant_pre_process

    quiet = logging.getLogger()
    old_level = quiet.level
    quiet.setLevel(max(old_level, logging.ERROR))

    def run(**skip: bool) -> None:
        with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
            quant_pre_process(
                str(src), str(pre), save_as_external_data=large, all_tensors_to_one_file=True,
                external_data_location=pre.name + ".data" if large else None, **skip,
            )

    try:
        try:
            run()
            return pre
        except Exception as exc:
            first = first_line(exc)
        # Symbolic shape inference is the step that fails on real exports (PP-OCRv6: "Incomplete symbolic
        # shape inference"); without it the runtime's basic optimizations still run, and they matter: the
        # PP-OCRv6 detector's bias Adds fold into its convolutions (464 → 242 nodes), which quantized
        # ran 2.4x its float speed where the unprepared graph ran 1.25x.
        try:
            run(skip_symbolic_shape=True)
            notes.append(
                f"ONNX Runtime's symbolic shape inference failed ({first}); quant_pre_process ran without it "
                "(its graph optimizations and ONNX shape inference kept)"
            )
            return pre
        except Exception as exc:
            notes.append(
                f"ONNX Runtime's quant_pre_process failed ({first}; without symbolic shape inference: "
                f"{first_line(exc)}); quantized the model without it"
            )
            pre.unlink(missing_ok=True)
            return src
    finally:
        quiet.setLevel(old_level)
