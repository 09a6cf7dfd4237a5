"""The library's entry points used by the CLI (and by Python users): plan a run, run it.

Every command-line flag is an override of a config field, applied here, so `--dry-run` can print
the resolved config and any run is reproducible from a file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from optimize.progress import NullProgress, Progress


@dataclass
class RunOptions:
    model: str | None = None  # path or package.module:callable; None = the built-in example
    config: str | None = None  # YAML path; None = configs/default.yaml for the example
    overrides: list[str] = field(default_factory=list)  # --set KEY=VALUE
    output: str | None = None  # -o: overrides output.path
    report: str | None = None  # --report: overrides output.report
    device: str | None = None  # --device: overrides hardware.device
    threads: int | None = None  # --threads: overrides hardware.threads
    seed: int | None = None  # --seed: overrides seed
    trust_model: bool = False
    trust_code: bool = False  # --trust-code: the config may name `module:callable` code to run
    fail_on_gate: bool = True
    progress: Progress = field(default_factory=NullProgress)
    work_dir: Path | None = None  # keep intermediate files here (default: a temp dir, removed)
    resume: bool = False  # --resume: training passes continue from their latest checkpoint
    cache: bool | None = None  # --no-cache: overrides output.cache
    cache_dir: str | None = None  # --cache-dir: overrides output.cache_dir
    input_shapes: list[str] = field(default_factory=list)  # --input-shape NAME=1x3x640x640: model.input_shapes


def config_overrides(opts: RunOptions) -> list[str]:
    """The flags as `--set` assignments, applied after the user's own --set values."""
    extra = list(opts.overrides)
    if opts.output is not None:
        extra.append(f"output.path={_quote(opts.output)}")
    if opts.report is not None:
        extra.append(f"output.report={_quote(opts.report)}")
    if opts.device is not None:
        extra.append(f"hardware.device={opts.device}")
    if opts.threads is not None:
        extra.append(f"hardware.threads={opts.threads}")
    if opts.seed is not None:
        extra.append(f"seed={opts.seed}")
    if opts.cache is not None:
        extra.append(f"output.cache={'true' if opts.cache else 'false'}")
    if opts.cache_dir is not None:
        extra.append(f"output.cache_dir={_quote(opts.cache_dir)}")
    return extra


def _quote(value: str) -> str:
    import json

    return json.dumps(value)  # JSON strings are valid YAML scalars


def inspect_model(spec: str, trust_model: bool = False, input_shapes: list[str] | None = None) -> dict:
    """`optimize inspect`: what a model file is, its inputs/outputs, ops, weights and sparsity.
    `input_shapes` (`--input-shape NAME=1x3x640x640`) are checked against the inputs and shown
    as each input's `example_shape` (with shapes from the file's metadata)."""
    import tempfile

    from optimize.inspect_onnx import op_counts, weight_stats
    from optimize.loaders import load_model
    from optimize.onnx_io import total_bytes
    from optimize.shapes import apply_shapes, metadata_hints, shapes_from_flags

    handle = load_model(spec, trust_model=trust_model)
    specs = apply_shapes(handle.inputs, shapes_from_flags(input_shapes), "--input-shape")
    notes: list[str] = []
    if handle.form == "onnx":
        specs, notes = metadata_hints(handle.onnx_path, specs)
    info: dict = {
        "model": spec,
        "form": handle.form,
        "inputs": [_input_facts(s) for s in specs],
        "outputs": handle.outputs,
    }
    if notes:
        info["shape_notes"] = notes
    handle = handle.replace(inputs=specs)
    if handle.form == "torch":
        info["parameters"] = sum(int(p.numel()) for p in handle.module.parameters())
        info["module"] = type(handle.module).__name__
        if not handle.inputs:
            info["note"] = "inputs unknown: declare model.inputs to export or run this model"
            return info
        from optimize.export import export_to_onnx

        with tempfile.TemporaryDirectory(prefix="optimize-inspect-") as tmp:
            exported = export_to_onnx(handle, Path(tmp) / "model.onnx")
            info.update(_onnx_facts(exported.onnx_path, op_counts, weight_stats, total_bytes))
            info["exported_with"] = exported.exporter
        return info
    info.update(_onnx_facts(handle.onnx_path, op_counts, weight_stats, total_bytes))
    return info


def _input_facts(s) -> dict:  # type: ignore[no-untyped-def]
    from optimize.shapes import unresolved_message

    facts: dict = {"name": s.name, "shape": list(s.shape), "dtype": s.dtype}
    if s.example_shape is not None:
        facts["example_shape"] = list(s.example_shape)
    if s.unresolved_axes():
        facts["unresolved"] = unresolved_message(s)
    return facts


def _onnx_header(path: Path | str) -> dict:
    """Output names, shapes (symbolic dims as their names, unknown ones as "?") and dtypes; the
    opsets by domain; the producer; the IR version. Weights stored outside the file are not read."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)

    def value_facts(v: onnx.ValueInfoProto) -> dict:
        t = v.type.tensor_type
        shape = [d.dim_param or (d.dim_value if d.HasField("dim_value") else "?") for d in t.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name if t.elem_type else None
        return {"name": v.name, "shape": shape if t.HasField("shape") else None, "dtype": dtype}

    producer = f"{m.producer_name} {m.producer_version}".strip()
    used = {n.domain or "" for n in m.graph.node} | {n.domain or "" for f in m.functions for n in f.node} | {""}
    return {
        "outputs": [value_facts(o) for o in m.graph.output],
        # the domains the nodes use (quantizers import a dozen they never use)
        "opset": {(i.domain or "ai.onnx"): int(i.version) for i in m.opset_import if (i.domain or "") in used},
        "producer": producer or None,
        "ir_version": int(m.ir_version),
    }


def _onnx_facts(path, op_counts, weight_stats, total_bytes) -> dict:  # type: ignore[no-untyped-def]
    ws = weight_stats(path)
    return {
        **_onnx_header(path),
        "bytes": total_bytes(path),
        "ops": op_counts(path),
        "weights": ws.total,
        "nonzero_weights": ws.nonzero,
        "sparsity": (ws.total - ws.nonzero) / ws.total if ws.total else None,
        "weight_dtypes": ws.by_dtype(),
        "quantization_ratio": ws.bit_sum / (32 * ws.total) if ws.total else None,
        **(
            {  # binary/ternary codes stored in int8: the ratio by logical bits, the stored one beside it
                "quantization_ratio": ws.logical_bit_sum / (32 * ws.total),
                "stored_quantization_ratio": ws.bit_sum / (32 * ws.total),
                "weight_bits": {"logical": ws.counts_by_bits(logical=True), "stored": ws.counts_by_bits()},
            }
            if ws.total and ws.has_logical else {}
        ),
    }
