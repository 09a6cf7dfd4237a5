"""The model handle: one object that carries the model through the pipeline in one of two forms.

- `torch`: an `nn.Module` plus the declared inputs/outputs (names, shapes with symbolic dims,
  dtypes), from which example inputs and ONNX dynamic axes are derived.
- `onnx`: a path to an ONNX file (path-based so external data and models over 2 GB work).

Conversions are explicit (`optimize.export.export_to_onnx`); a pass never mutates the handle it is
given: it returns a new one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

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
    "bool": np.bool_,
}


@dataclass(frozen=True)
class TensorSpec:
    """One model input: name, shape (ints, or strings for symbolic dims such as 'batch'), dtype.

    `low`/`high` bound random values for this input (token ids need `high` = vocabulary size).
    """

    name: str
    shape: tuple[int | str, ...]
    dtype: str = "float32"
    low: float | None = None
    high: float | None = None
    batch_fixed: bool = False  # an ONNX file that declares a fixed first dimension
    example_size: int = 1  # the size other symbolic dims take in example/random inputs (e.g. sequence length)

    def concrete_shape(self, batch: int) -> tuple[int, ...]:
        """The first axis is the batch axis (unless the file fixes it); other symbolic dims become
        `example_size` (1 unless the loader knows better, e.g. a text model's sequence length)."""
        out = []
        for i, d in enumerate(self.shape):
            if isinstance(d, int) and d > 0:
                out.append(d if (i > 0 or self.batch_fixed) else batch)
            else:
                out.append(batch if i == 0 else self.example_size)
        return tuple(out)

    def random(self, batch: int, rng: np.random.Generator) -> np.ndarray:
        shape = self.concrete_shape(batch)
        dt = DTYPES.get(self.dtype, np.float32)
        if np.issubdtype(dt, np.integer):
            low = int(self.low if self.low is not None else 0)
            high = int(self.high if self.high is not None else 2)
            return rng.integers(low, high, size=shape).astype(dt)
        if dt == np.bool_:
            return np.ones(shape, dtype=np.bool_)
        low = float(self.low if self.low is not None else -1.0)
        high = float(self.high if self.high is not None else 1.0)
        return rng.uniform(low, high, size=shape).astype(dt)


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
