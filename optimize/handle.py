"""The model handle: one object that carries the model through the pipeline in one of two forms.

- `torch`: an `nn.Module` plus the declared inputs/outputs (names, shapes with symbolic dims,
  dtypes), from which example inputs and ONNX dynamic axes are derived.
- `onnx`: a path to an ONNX file (path-based so external data and models over 2 GB work).

Conversions are explicit (`optimize.export.export_to_onnx`); a pass never mutates the handle it is
given: it returns a new one.

`TensorSpec` draws its own random values (`random_array`: in the input's dtype, in chunks) and
names its unresolved dims (`unresolved_message`) here, so `optimize.probes` and `optimize.shapes`
build on this module without it importing them back.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from optimize.errors import UsageError

Form = Literal["torch", "onnx"]

# dtype names used in configs and specs -> numpy dtypes
DTYPES: dict[str, Any] = {
    "float32": np.float32,
    "float16": np.float16,
    "float64": np.float64,
    "int64": np.int64,
    "int32": np.int32,
    "int8": np.int8,
    "uint8": np.uint8,
    "int16": np.int16,
    "uint16": np.uint16,
    "uint32": np.uint32,
    "uint64": np.uint64,
    "bool": np.bool_,
}


@dataclass(frozen=True)
class TensorSpec:
    """One model input: name, shape (ints, or strings for symbolic dims such as 'batch'), dtype.

    `low`/`high` bound random values for this input (token ids need `high` = vocabulary size).
    Symbolic dims other than the batch axis get their size from `example_shape` (the whole shape,
    from `--input-shape` / `model.input_shapes`, the file's metadata, or the data) or, for every
    such dim, `example_size` (a text model's sequence length). Nothing else invents a size: an
    unresolved dim raises `UsageError` naming the flag that resolves it (optimize.shapes).
    A 0-d input (shape `()`) is a scalar: it has no batch axis and is never batched.
    `batch_axis`: the model axis that holds the samples — 0, except for inputs such as an RNN state
    `[2, batch, 128]` (`batch_axes`). Data and random arrays are always sample-major (samples first);
    `optimize.runtime.to_model_layout` puts the sample axis back where the model takes it.
    """

    name: str
    shape: tuple[int | str, ...]
    dtype: str = "float32"
    low: float | None = None
    high: float | None = None
    batch_fixed: bool = False  # an ONNX file that declares a fixed first dimension
    example_size: int | None = None  # the size every other symbolic dim takes (e.g. sequence length)
    example_shape: tuple[int, ...] | None = None  # a full concrete shape, model layout (batch at batch_axis)
    batch_axis: int = 0

    @property
    def is_scalar(self) -> bool:
        return len(self.shape) == 0

    def unresolved_axes(self) -> list[int]:
        """Non-batch axes whose size nothing gives (symbolic in the model, no example size)."""
        if self.example_shape is not None or self.example_size is not None:
            return []
        return [i for i, d in enumerate(self.shape) if i != self.batch_axis and not (isinstance(d, int) and d > 0)]

    def concrete_shape(self, batch: int) -> tuple[int, ...]:
        """The sample-major shape of a batch of `batch` samples: the batch axis (unless the file
        fixes it) first, then the other axes in order; other symbolic dims come from `example_shape`
        or `example_size`, never invented."""
        missing = self.unresolved_axes()
        if missing:
            raise UsageError(unresolved_message(self))
        out = []
        for i, d in enumerate(self.shape):
            fixed = isinstance(d, int) and d > 0
            if i == self.batch_axis:
                out.append(d if fixed and self.batch_fixed else batch)  # type: ignore[arg-type]
            elif fixed:
                out.append(int(d))
            elif self.example_shape is not None:
                out.append(int(self.example_shape[i]))
            else:
                out.append(int(self.example_size))  # type: ignore[arg-type]
        k = self.batch_axis
        return tuple(out) if not k or not out else (out[k], *out[:k], *out[k + 1:])

    def random(self, batch: int, rng: np.random.Generator) -> np.ndarray:
        """Random values in the input's own dtype (no float64 intermediate: memory stays at the
        size of the result). A scalar input gives one 0-d value whatever `batch` is."""
        return random_array(self, self.concrete_shape(batch), rng)


@dataclass
class ModelHandle:
    form: Form
    inputs: list[TensorSpec]
    outputs: list[str]
    module: Any = None  # torch.nn.Module when form == "torch"
    onnx_path: Path | None = None  # when form == "onnx"
    source: str = ""  # where the model came from (file, factory), for the report
    exporter: str | None = None  # set when this ONNX was exported from torch
    opset: int | None = None
    # Work deferred until the model is ONNX (e.g. QAT: integer model materialized after export).
    # Each entry: (pass name, pass config) resolved through the registry.
    pending: list[tuple[str, Any]] = field(default_factory=list)
    # Text models (Hugging Face folders): where the tokenizer lives and how text is encoded
    # (optimize.frameworks.text_data.TokenizerInfo); text data sources and the output step use it.
    tokenizer: Any = None

    def replace(self, **changes: Any) -> ModelHandle:
        return dataclasses.replace(self, **changes)

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    def describe(self) -> str:
        if self.form == "onnx":
            return f"onnx:{self.onnx_path}"
        return f"torch:{type(self.module).__name__}"


def batch_axes(shapes: dict[str, tuple[int | str | None, ...]]) -> dict[str, int]:
    """The sample axis of each input, from the dims the model declares (`None`/'?' unnamed):
    an input whose axis 0 is fixed (not 1) while the batch symbol — the first symbolic axis-0 name
    among the inputs — sits on axis k of it takes k (an RNN state `[2, batch, 128]`); where the dims
    are unnamed, an input with a fixed axis 0 and exactly one unknown axis takes that axis. Every
    other input: 0. Scalars are absent."""
    def unknown(d: Any) -> bool:
        return not (isinstance(d, int) and d > 0)

    lead = [dims[0] for dims in shapes.values() if dims and unknown(dims[0])]
    if not lead:
        return {name: 0 for name, dims in shapes.items() if dims}
    symbol = next((d for d in lead if isinstance(d, str) and d not in ("", "?")), None)
    out = {}
    for name, dims in shapes.items():
        if not dims:
            continue
        out[name] = 0
        if unknown(dims[0]) or dims[0] == 1:
            continue
        named = [k for k, d in enumerate(dims) if symbol is not None and d == symbol]
        loose = [k for k, d in enumerate(dims) if unknown(d)]
        if named:
            out[name] = named[0]
        elif symbol is None and len(loose) == 1:
            out[name] = loose[0]
    return out


def specs_from_config(inputs: Any) -> list[TensorSpec]:
    return [
        TensorSpec(i.name, tuple(i.shape), i.dtype, i.low, i.high) for i in (inputs or [])
    ]


# Random values are generated this many elements at a time, so no float64 copy of the whole
# probe set ever exists (1.65 GB peak at 4,096 samples of a 0.6 MB input before).
CHUNK_ELEMENTS = 1 << 20


def random_array(spec: TensorSpec, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Random values for `spec` in its own dtype, drawn in chunks along the first axis."""
    dt = np.dtype(DTYPES.get(spec.dtype, np.float32))
    out = np.empty(shape, dtype=dt)
    if out.size == 0:
        return out
    flat = out.reshape(-1)
    for start in range(0, flat.size, CHUNK_ELEMENTS):
        stop = min(flat.size, start + CHUNK_ELEMENTS)
        flat[start:stop] = _draw(spec, dt, stop - start, rng)
    return out


def _draw(spec: TensorSpec, dt: np.dtype, n: int, rng: np.random.Generator) -> np.ndarray:
    if dt == np.bool_:
        return np.ones(n, dtype=np.bool_)  # masks and flags: "on" is the common, meaningful value
    if np.issubdtype(dt, np.integer):
        low = int(spec.low if spec.low is not None else 0)
        high = int(spec.high if spec.high is not None else 2)
        return rng.integers(low, high, size=n, dtype=dt)
    low = float(spec.low if spec.low is not None else -1.0)
    high = float(spec.high if spec.high is not None else 1.0)
    gen_dtype = np.float64 if dt == np.float64 else np.float32  # Generator.random: float32/64 only
    vals = rng.random(n, dtype=gen_dtype)
    vals *= high - low
    vals += low
    return vals.astype(dt, copy=False)


def unresolved_message(spec: TensorSpec) -> str:
    """One line naming each unresolved dim of `spec` and the exact flag to add."""
    axes = spec.unresolved_axes()
    names = ", ".join(f"{spec.shape[a] if isinstance(spec.shape[a], str) and spec.shape[a] not in ('', '?') else '?'} "
                      f"(axis {a})" for a in axes)
    example = "x".join(
        ("1" if i == 0 and not (isinstance(d, int) and d > 0) else
         str(d) if isinstance(d, int) and d > 0 else (d if isinstance(d, str) and d not in ("", "?") else f"D{i}"))
        for i, d in enumerate(spec.shape)
    )
    return (f"model input '{spec.name}' has symbolic dims {names}: add --input-shape {spec.name}={example} "
            "(with sizes in place of the names), or model.input_shapes in the config")
