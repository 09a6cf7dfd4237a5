"""Data sources: built-in real data sets, .npz files, Python callables, random inputs from a spec.

All sources become a `Dataset`: input arrays keyed by the model's input names plus optional labels.
"""

from __future__ import annotations

import importlib
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from optimize.errors import DataError
from optimize.handle import DTYPES, TensorSpec


@dataclass
class Dataset:
    inputs: dict[str, np.ndarray]  # input name -> array with the sample axis first
    labels: np.ndarray | None = None
    description: str = ""

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def take(self, n: int) -> Dataset:
        n = min(n, len(self))
        labels = None if self.labels is None else self.labels[:n]
        return Dataset({k: v[:n] for k, v in self.inputs.items()}, labels, self.description)

    def batches(
        self, batch_size: int, shuffle: bool = False, seed: int = 0
    ) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray | None]]:
        order = np.arange(len(self))
        if shuffle:
            np.random.default_rng(seed).shuffle(order)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            yield (
                {k: v[idx] for k, v in self.inputs.items()},
                None if self.labels is None else self.labels[idx],
            )


# ---------------------------------------------------------------- built-in data sets


def digits(split: str = "all", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's handwritten digits (1797 real 8x8 images, shipped with the package).

    Returns images as float32 (N, 1, 8, 8) scaled to [0, 1] and int64 labels. The train/test split
    is fixed (stratified 80/20, random_state 0) so every run and every test sees the same held-out set.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = bunch.target.astype(np.int64)
    if split == "all":
        return x, y
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    return (x_tr, y_tr) if split == "train" else (x_te, y_te)


BUILTIN = {"digits": digits}


# ---------------------------------------------------------------- loading


def _bind_inputs(arrays: dict[str, np.ndarray], specs: list[TensorSpec], where: str) -> dict[str, np.ndarray]:
    """Match arrays to the model's inputs by name; 'x' stands for the only input of a 1-input model."""
    if not specs:
        if len(arrays) == 1:
            return dict(arrays)
        raise DataError(f"{where}: cannot match arrays {sorted(arrays)} to inputs: declare model.inputs")
    out: dict[str, np.ndarray] = {}
    for spec in specs:
        if spec.name in arrays:
            arr = arrays[spec.name]
        elif len(specs) == 1 and "x" in arrays:
            arr = arrays["x"]
        else:
            raise DataError(f"{where}: no array named '{spec.name}' (has: {', '.join(sorted(arrays)) or 'none'})")
        want = DTYPES.get(spec.dtype, np.float32)
        if arr.dtype != want:
            if np.issubdtype(want, np.integer) and not np.issubdtype(arr.dtype, np.integer):
                raise DataError(f"{where}: '{spec.name}' has dtype {arr.dtype}, the model needs {spec.dtype}")
            arr = arr.astype(want)
        rank = len(spec.shape)
        if arr.ndim != rank:
            raise DataError(
                f"{where}: '{spec.name}' has {arr.ndim} dims {tuple(arr.shape)}, the model needs {rank} {tuple(spec.shape)}"
            )
        for axis, (got, need) in enumerate(zip(arr.shape[1:], spec.shape[1:], strict=True), start=1):
            if isinstance(need, int) and need > 0 and got != need:
                raise DataError(f"{where}: '{spec.name}' axis {axis} is {got}, the model needs {need}")
        out[spec.name] = arr
    n = {len(v) for v in out.values()}
    if len(n) != 1:
        raise DataError(f"{where}: inputs have different sample counts {sorted(n)}")
    return out


def load_dataset(spec: Any, inputs: list[TensorSpec], base_dir: Path, seed: int = 0) -> Dataset:
    """Load a `DataSourceConfig` (source, split, samples) for a model with `inputs`."""
    source: str = spec.source
    where = f"data source '{source}'"
    if source.startswith("builtin:"):
        name = source.split(":", 1)[1]
        if name not in BUILTIN:
            raise DataError(f"{where}: unknown built-in data set (known: {', '.join(BUILTIN)})")
        x, y = BUILTIN[name](spec.split, seed)
        arrays, labels = {"x": x}, y
    elif source.endswith(".npz"):
        path = (base_dir / source) if not Path(source).is_absolute() else Path(source)
        if not path.is_file():
            raise DataError(f"{where}: file not found: {path}")
        try:
            loaded = np.load(path, allow_pickle=False)
            if not isinstance(loaded, np.lib.npyio.NpzFile):  # a bare .npy array saved as .npz
                raise DataError(f"{where}: not a .npz archive (a single .npy array?); save with numpy.savez")
            with loaded as npz:
                arrays = {k: npz[k] for k in npz.files}
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
            raise DataError(f"{where}: not a readable .npz file ({exc})") from None
        labels = arrays.pop("y", None)
    elif ":" in source:
        arrays, labels = _from_callable(source, where, base_dir)
    else:
        raise DataError(f"{where}: expected 'builtin:NAME', a .npz file or 'package.module:callable'")
    if not arrays:
        raise DataError(f"{where}: contains no input arrays")
    bound = _bind_inputs(arrays, inputs, where)
    ds = Dataset(bound, None if labels is None else np.asarray(labels), description=source)
    if ds.labels is not None and len(ds.labels) != len(ds):
        raise DataError(f"{where}: {len(ds.labels)} labels for {len(ds)} samples")
    if len(ds) == 0:
        raise DataError(f"{where}: contains no samples")
    return ds.take(spec.samples) if spec.samples else ds


def _from_callable(source: str, where: str, base_dir: Path) -> tuple[dict[str, np.ndarray], Any]:
    module_name, _, attr = source.partition(":")
    if str(base_dir) not in sys.path:  # resolved like a model factory: relative to the config
        sys.path.insert(0, str(base_dir))
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise DataError(f"{where}: cannot import ({exc})") from None
    try:
        result = fn()
    except Exception as exc:
        raise DataError(f"{where}: raised {type(exc).__name__}: {exc}") from None
    labels = None
    if isinstance(result, tuple) and len(result) == 2:
        result, labels = result
    if isinstance(result, np.ndarray):
        result = {"x": result}
    if not isinstance(result, dict):
        raise DataError(f"{where}: must return an array, a dict of arrays, or (inputs, labels)")
    return {k: np.asarray(v) for k, v in result.items()}, labels


def random_dataset(inputs: list[TensorSpec], n: int, seed: int = 0) -> Dataset:
    if not inputs:
        raise DataError("no data and no input spec: declare model.inputs or a data source")
    rng = np.random.default_rng(seed)
    return Dataset({s.name: s.random(n, rng) for s in inputs}, None, "random inputs from the input spec")
