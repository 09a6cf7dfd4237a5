"""Probe inputs: random batches drawn from the input spec (values from `TensorSpec.random`),
scalar-aware batching, token-id detection, and whether a set of reference outputs can tell models
apart at all (degenerate probes).

Helpers the passes call:
- `random_ids_would_be_used(config, specs)`: the token-id inputs that a static calibration would
  fill with random ids (no calibration or training data declared); the quantize pass refuses
  that at plan time with `random_ids_message(names)`.
- `random_batches(specs, n, batch, seed)`: calibration batches generated lazily, one batch at a
  time (peak memory independent of the number of samples).
- `sample_count(inputs)` / `slice_samples(inputs, start, stop)`: batching that leaves 0-d
  (scalar) inputs whole.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from optimize.handle import DTYPES, TensorSpec

# Degenerate probes: the FP32 model's outputs barely vary across the probe inputs when every
# output's per-sample cosine to the mean output is above this (or every output is all zero).
DEGENERATE_COSINE = 0.9999

RANDOM_SOURCE = "random inputs from the input spec"
RANDOM_IDS_SOURCE = "random token ids from the input spec (weak evidence)"

_ID_NAME = re.compile(r"(^|[_.])(input_?ids|token_?ids|ids|tokens?|input)$|_ids$", re.IGNORECASE)
_NOT_IDS = re.compile(r"mask|type|position|segment|length|len$", re.IGNORECASE)


class RandomBatches(Sequence):
    """`n` random samples as batches of at most `batch`, each generated when asked for (seeded by
    its index, so a batch is the same every time): a calibration reader over this holds one
    batch at a time. Scalar inputs are one 0-d value in every batch."""

    def __init__(self, specs: list[TensorSpec], n: int, batch: int, seed: int = 0) -> None:
        self.specs, self.n, self.batch, self.seed = list(specs), int(n), max(1, int(batch)), seed
        fixed = [int(s.shape[s.batch_axis]) for s in self.specs if s.batch_fixed and s.shape]
        if fixed:  # a file with a fixed batch dim takes exactly that many samples per call
            self.batch = min(fixed)

    def __len__(self) -> int:
        return -(-self.n // self.batch)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        rows = min(self.batch, self.n - i * self.batch)
        rng = np.random.default_rng([self.seed, i])
        return {s.name: s.random(rows, rng) for s in self.specs}


def random_batches(specs: list[TensorSpec], n: int, batch: int, seed: int = 0) -> RandomBatches:
    return RandomBatches(specs, n, batch, seed)


# ---------------------------------------------------------------- batching with scalars


# One inference call or calibration batch gets at most this many input elements (all inputs of the
# batch together): a detector at 1x3x736x1088 (2.4M) then runs one image at a time, where 64 at once
# had ONNX Runtime's activations killed by the kernel's OOM killer on a 24 GB machine.
BATCH_INPUT_ELEMENTS = 1 << 22


def bounded_batch(inputs: dict[str, np.ndarray], wanted: int) -> int:
    """`wanted`, lowered so one batch holds at most BATCH_INPUT_ELEMENTS input elements (at least 1)."""
    per_sample = sum(int(np.prod(v.shape[1:])) for v in inputs.values() if np.ndim(v) > 0)
    if per_sample <= 0:
        return max(1, wanted)
    return max(1, min(wanted, BATCH_INPUT_ELEMENTS // per_sample))


# Random probe sets hold at most this many input elements: 64 random 736x1088 images took minutes
# per model on 2 cores for no more evidence than 27 of them give (random inputs are weak evidence).
PROBE_ELEMENTS = 1 << 26


def probe_count(specs: list[TensorSpec], wanted: int) -> int:
    """`wanted` random samples, fewer for large inputs (at least 8)."""
    per_sample = sum(int(np.prod(s.concrete_shape(1))) for s in specs if s.shape)
    return wanted if per_sample <= 0 else max(min(wanted, 8), min(wanted, PROBE_ELEMENTS // per_sample))


def sample_count(inputs: dict[str, np.ndarray]) -> int:
    """Samples in a feed: the first axis of the batched inputs; 1 when every input is a scalar."""
    sizes = [len(v) for v in inputs.values() if np.ndim(v) > 0]
    return min(sizes) if sizes else 1


def slice_samples(inputs: dict[str, np.ndarray], start: int, stop: int) -> dict[str, np.ndarray]:
    """Samples [start, stop) of every batched input; scalar inputs are passed whole."""
    return {k: (v if np.ndim(v) == 0 else v[start:stop]) for k, v in inputs.items()}


# ---------------------------------------------------------------- token ids


def is_integer(spec: TensorSpec) -> bool:
    return spec.dtype in DTYPES and np.issubdtype(np.dtype(DTYPES[spec.dtype]), np.integer)


def token_id_inputs(specs: list[TensorSpec]) -> list[str]:
    """Inputs that look like token ids: integer, at least 1-D, named like ids (input_ids, ids,
    tokens, ...) — or every integer ≥1-D input that is not a mask/type/position when no name fits."""
    ints = [s for s in specs if is_integer(s) and not s.is_scalar]
    named = [s.name for s in ints if _ID_NAME.search(s.name) and not _NOT_IDS.search(s.name)]  # not token_type_ids
    if named:
        return named
    return [s.name for s in ints if not _NOT_IDS.search(s.name)]


def random_ids_would_be_used(config: Any, specs: list[TensorSpec], role: str = "calibration") -> list[str]:
    """The token-id inputs that would get random ids for `role` ('calibration': no data.calibration
    and no data.train; 'eval': no data.eval). Empty when data is declared or there are none."""
    data = getattr(config, "data", None)
    roles = ("calibration", "train") if role == "calibration" else (role,)
    if data is not None and any(getattr(data, r, None) is not None for r in roles):
        return []
    return token_id_inputs(specs)


def random_ids_message(names: list[str], what: str = "static calibration") -> str:
    listed = ", ".join(f"'{n}'" for n in names)
    return (
        f"{what} would run on random token ids for {listed} (activation ranges from random ids do not match "
        "real text: cosine 0.25 on real sentences was measured after it); set data.calibration to a .txt or "
        ".jsonl file of real text (tokenized with the model's tokenizer: files beside an ONNX file or model.tokenizer.path"
        "), or use mode: dynamic"
    )


# ---------------------------------------------------------------- degenerate probes


def degenerate_reason(outputs: list[np.ndarray], samples: int) -> str | None:
    """Why these reference outputs cannot tell a good model from a broken one, or None.

    Degenerate: every output is all zero, or every output's per-sample cosine to the mean output
    across the probe samples is above DEGENERATE_COSINE (integer outputs: every sample equal).
    Fewer than 2 samples cannot be judged (None)."""
    if samples < 2 or not outputs:
        return None
    if all(not np.any(o) for o in outputs):
        return f"every output of the input model is zero on all {samples} probe inputs"
    for o in outputs:
        if o.ndim == 0 or len(o) != samples:
            return None  # not per-sample outputs: variation across samples cannot be judged
        if not _output_constant(o):
            return None
    return (
        f"the input model's outputs barely vary across the {samples} probe inputs (every output's per-sample "
        f"cosine to the mean output > {DEGENERATE_COSINE})"
    )


def _output_constant(o: np.ndarray) -> bool:
    if not np.issubdtype(o.dtype, np.floating):
        return bool((o == o[:1]).all())
    x = o.reshape(len(o), -1).astype(np.float64)
    if x.shape[1] == 1:  # one value per sample: compare spreads, a cosine would only see signs
        spread = float(np.ptp(x))
        return spread <= (1 - DEGENERATE_COSINE) * max(float(np.abs(x).max()), 1e-30)
    mean = x.mean(axis=0)
    norms = np.linalg.norm(x, axis=1) * np.linalg.norm(mean)
    if not np.all(norms > 0):
        return bool(np.all(np.linalg.norm(x, axis=1) == 0))
    cos = (x @ mean) / norms
    return bool(np.all(cos > DEGENERATE_COSINE))
