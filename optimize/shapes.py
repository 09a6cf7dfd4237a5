"""Input shapes the user controls, never invented.

`--input-shape NAME=1x3x640x640` (repeatable; `model.input_shapes` in a config) gives an input's
whole shape; hints the file itself carries (exporter metadata such as an image size) fill the
rest; symbolic non-batch dims that nothing resolves stop the run before any work (exit 2) with
the exact flag to add. The batch axis (axis 0) may stay symbolic: it takes `measure.batch`.
A model with declared data (`data.eval`/`calibration`/`train`) gets the sizes from the data's arrays.
"""

from __future__ import annotations

import ast
import difflib
import re
from dataclasses import replace
from typing import Any

from optimize.errors import UsageError
from optimize.handle import TensorSpec, unresolved_message

_SHAPE_RE = re.compile(r"^\s*(?P<name>.+?)\s*=\s*(?P<dims>\d+(\s*[x,]\s*\d+)*)?\s*$")

# metadata_props keys that carry an image size (ultralytics: imgsz; others: image/input size)
_IMAGE_SIZE_KEYS = ("imgsz", "image_size", "img_size", "input_size", "image_shape", "input_shape")


def parse_input_shape(text: str) -> tuple[str, list[int]]:
    """`NAME=1x3x640x640` (or `NAME=1,3,640,640`; `NAME=` for a scalar) → (name, dims)."""
    m = _SHAPE_RE.match(text or "")
    if not m or not m.group("name"):
        raise UsageError(f"--input-shape expects NAME=DIMS like images=1x3x640x640, got {text!r}")
    dims_text = m.group("dims") or ""
    dims = [int(d) for d in re.split(r"\s*[x,]\s*", dims_text) if d] if dims_text else []
    if any(d <= 0 for d in dims):
        raise UsageError(f"--input-shape {text}: every dim must be a positive integer")
    return m.group("name"), dims


def shapes_from_flags(flags: list[str] | None) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for text in flags or []:
        name, dims = parse_input_shape(text)
        out[name] = dims
    return out


def apply_to_config(cfg: Any, flags: list[str] | None) -> None:
    """`--input-shape` flags as an override of `model.input_shapes` (merged by input name). A batch
    given there becomes `measure.batch` unless the config or `--set` sets measure.batch itself."""
    given = shapes_from_flags(flags)
    if not given:
        return
    merged = dict(cfg.model.input_shapes or {})
    merged.update(given)
    cfg.model.input_shapes = merged
    batches = {dims[0] for dims in given.values() if len(dims) > 0}
    if len(batches) == 1 and "batch" not in cfg.measure.model_fields_set:
        cfg.measure.batch = batches.pop()


def did_you_mean(name: str, names: list[str]) -> str:
    hint = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
    if hint:
        return f" (did you mean '{hint[0]}'?)"
    return f" (it has: {', '.join(names) or 'none'})"


def check_names(given: list[str], specs: list[TensorSpec], what: str, error: type[UsageError] = UsageError) -> None:
    """Every name the user declared must be an input of the model (exit 2 with did-you-mean)."""
    names = [s.name for s in specs]
    for name in given:
        if name not in names:
            raise error(f"{what}: the model has no input '{name}'{did_you_mean(name, names)}")


def with_shape(spec: TensorSpec, dims: list[int], where: str) -> TensorSpec:
    """`spec` with a concrete example shape; the dims the model fixes must match."""
    if len(dims) != len(spec.shape):
        raise UsageError(
            f"{where}: '{spec.name}' has {len(spec.shape)} dims {_fmt(spec.shape)} in the model, {len(dims)} given "
            f"({'x'.join(map(str, dims)) or 'scalar'})"
        )
    for axis, (got, need) in enumerate(zip(dims, spec.shape, strict=True)):
        fixed = isinstance(need, int) and need > 0
        if fixed and got != need and (axis != spec.batch_axis or spec.batch_fixed):
            raise UsageError(f"{where}: '{spec.name}' axis {axis} is fixed at {need} in the model, {got} given")
    return replace(spec, example_shape=tuple(int(d) for d in dims))


def apply_shapes(specs: list[TensorSpec], shapes: dict[str, list[int]] | None, where: str) -> list[TensorSpec]:
    if not shapes:
        return list(specs)
    check_names(list(shapes), specs, where)
    return [with_shape(s, list(shapes[s.name]), where) if s.name in shapes else s for s in specs]


# ---------------------------------------------------------------- hints from the file


def metadata_hints(path: Any, specs: list[TensorSpec]) -> tuple[list[TensorSpec], list[str]]:
    """Fill symbolic H/W of 4-D image inputs from an image size in the ONNX file's metadata_props.
    Returns the specs and one note per input so resolved (the report says where a shape came from)."""
    size = _metadata_image_size(path)
    if size is None:
        return specs, []
    key, (h, w) = size
    out, notes = [], []
    for s in specs:
        axes = s.unresolved_axes()
        hw = _hw_axes(s)
        if not axes or hw is None or not set(axes) <= set(hw):
            out.append(s)
            continue
        dims = [d if isinstance(d, int) and d > 0 else 1 for d in s.shape]
        dims[hw[0]], dims[hw[1]] = h, w
        out.append(replace(s, example_shape=tuple(dims)))
        notes.append(f"input '{s.name}': H×W {h}×{w} from the file's metadata ({key}); --input-shape overrides it")
    return out, notes


def _hw_axes(spec: TensorSpec) -> tuple[int, int] | None:
    if len(spec.shape) != 4:
        return None
    c_first, c_last = spec.shape[1], spec.shape[3]
    if isinstance(c_last, int) and c_last in (1, 3, 4) and not (isinstance(c_first, int) and c_first in (1, 3, 4)):
        return (1, 2)
    return (2, 3)


def _metadata_image_size(path: Any) -> tuple[str, tuple[int, int]] | None:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:
        return None
    props = {p.key.lower(): p.value for p in model.metadata_props}
    for key in _IMAGE_SIZE_KEYS:
        if key not in props:
            continue
        try:
            val = ast.literal_eval(props[key].strip())
        except (ValueError, SyntaxError):
            continue
        if isinstance(val, int) and val > 0:
            return key, (val, val)
        if isinstance(val, list | tuple) and all(isinstance(v, int) and v > 0 for v in val):
            if len(val) == 2:
                return key, (val[0], val[1])
            if len(val) >= 3:  # (C, H, W) / (N, C, H, W)
                return key, (val[-2], val[-1])
    return None


# ---------------------------------------------------------------- the plan-time check


def _fmt(shape: tuple[Any, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def resolved_by_data(spec: TensorSpec, config: Any) -> bool:
    """A model with declared data: the data's arrays give the sizes (text sources are tokenized to
    a sequence length; random probes then take the data's shapes, RunContext.resolve_shapes_from_data)."""
    data = getattr(config, "data", None)
    declared = [getattr(data, r, None) for r in ("eval", "calibration", "train")] if data is not None else []
    return any(d is not None for d in declared)


def check_resolved(specs: list[TensorSpec], config: Any = None) -> None:
    """Exit 2 before any work when a non-batch dim is symbolic and nothing resolves it."""
    lines = [unresolved_message(s) for s in specs if s.unresolved_axes() and not resolved_by_data(s, config)]
    if lines:
        raise UsageError("; ".join(lines))


def resolve_from_data(specs: list[TensorSpec], arrays: dict[str, Any]) -> list[TensorSpec]:
    """Specs whose unresolved dims take the sizes of the data's arrays (one sample's shape)."""
    out = []
    for s in specs:
        arr = arrays.get(s.name)
        if s.unresolved_axes() and arr is not None and getattr(arr, "ndim", 0) == len(s.shape):
            s = replace(s, example_shape=(1, *(int(d) for d in arr.shape[1:])))
        out.append(s)
    return out


def resolve_for_model(path: Any, specs: list[TensorSpec], shapes: dict[str, list[int]] | None, where: str,
                      config: Any = None) -> tuple[list[TensorSpec], list[str]]:
    """User shapes, then the file's hints, then the check: the specs every probe uses, and notes."""
    specs = apply_shapes(specs, shapes, where)
    notes: list[str] = []
    if path is not None:
        specs, notes = metadata_hints(path, specs)
    check_resolved(specs, config)
    return specs, notes
