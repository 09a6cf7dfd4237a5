"""Data sources: built-in real data sets, .npz files, CSV files, folders of images by class, Python
callables, random inputs from a spec.

All sources become a `Dataset`: input arrays keyed by the model's input names plus optional labels.
"""

from __future__ import annotations

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
    # text_variants: each sample's round (-1: trained every epoch; r ≥ 0: the epochs that round is
    # shared out to, passes/distill/batches.py EpochPlan)
    rounds: np.ndarray | None = None

    def __len__(self) -> int:
        from optimize.probes import sample_count

        return sample_count(self.inputs)  # 0-d (scalar) inputs have no sample axis

    def take(self, n: int) -> Dataset:
        from optimize.probes import slice_samples

        n = min(n, len(self))
        labels = None if self.labels is None else self.labels[:n]
        rounds = None if self.rounds is None else self.rounds[:n]
        return Dataset(slice_samples(self.inputs, 0, n), labels, self.description, rounds)

    def batches(
        self, batch_size: int, shuffle: bool = False, seed: int = 0
    ) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray | None]]:
        order = np.arange(len(self))
        if shuffle:
            np.random.default_rng(seed).shuffle(order)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            yield (
                {k: (v if v.ndim == 0 else v[idx]) for k, v in self.inputs.items()},
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
        k = spec.batch_axis  # arrays come as the model takes them; stored sample-major
        for axis, (got, need) in enumerate(zip(arr.shape, spec.shape, strict=True)):
            if axis != k and isinstance(need, int) and need > 0 and got != need:
                raise DataError(f"{where}: '{spec.name}' axis {axis} is {got}, the model needs {need}")
        out[spec.name] = np.moveaxis(arr, k, 0) if k else arr
    n = {len(v) for v in out.values() if v.ndim > 0}  # a scalar input is one value for every sample
    if len(n) > 1:
        raise DataError(f"{where}: inputs have different sample counts {sorted(n)}")
    return out


def load_dataset(
    spec: Any, inputs: list[TensorSpec], base_dir: Path, seed: int = 0, tokenizer: Any = None, text_options: Any = None
) -> Dataset:
    """Load a `DataSourceConfig` (source, split, samples) for a model with `inputs`. Text sources
    (.txt, .jsonl) are tokenized with `tokenizer` (a TokenizerInfo) and `text_options` (the
    config's model.tokenizer section)."""
    source: str = spec.source
    where = f"data source '{source}'"
    rounds = None
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
    elif source.lower().endswith(".csv"):
        arrays, labels = _from_csv(_resolve(source, base_dir, where), where, inputs)
        arrays, labels = _split(arrays, labels, spec.split)
    elif source.lower().endswith((".txt", ".jsonl")):
        from optimize.frameworks.text_data import load_text

        for field in ("text_spans", "text_variants"):
            if getattr(spec, field, 0) and spec.split != "all":
                raise DataError(f"{where}: {field} needs split: all (a part of a held-out line would be trained on)")

        arrays, labels, rounds = load_text(_resolve(source, base_dir, where), where, spec, tokenizer, text_options)
        arrays, labels = _split(arrays, labels, spec.split)
    elif not source.startswith("builtin:") and (_as_path(source, base_dir)).is_dir():
        arrays, labels = _from_image_folder(_as_path(source, base_dir), where, inputs)
        arrays, labels = _split(arrays, labels, spec.split)
    elif ":" in source:
        arrays, labels = _from_callable(source, where, base_dir)
    else:
        raise DataError(
            f"{where}: expected 'builtin:NAME', a .npz or .csv file, an existing folder of images by class "
            "(root/<class>/<image>), or 'package.module:callable'"
        )
    if not arrays:
        raise DataError(f"{where}: contains no input arrays")
    bound = _bind_inputs(arrays, inputs, where)
    ds = Dataset(bound, None if labels is None else np.asarray(labels), description=source,
                 rounds=rounds)
    if ds.labels is not None and len(ds.labels) != len(ds):
        raise DataError(f"{where}: {len(ds.labels)} labels for {len(ds)} samples")
    if len(ds) == 0:
        raise DataError(f"{where}: contains no samples")
    extra = (getattr(spec, "text_spans", 0) or getattr(spec, "text_variants", 0)) and source.lower().endswith((".txt", ".jsonl"))
    return ds.take(spec.samples) if spec.samples and not extra else ds  # with spans / variants, samples counted lines


def _from_callable(source: str, where: str, base_dir: Path) -> tuple[dict[str, np.ndarray], Any]:
    from optimize.imports import call_reference

    result = call_reference(source, base_dir, DataError, where)  # resolved like a model factory
    labels = None
    if isinstance(result, tuple) and len(result) == 2:
        result, labels = result
    if isinstance(result, np.ndarray):
        result = {"x": result}
    if not isinstance(result, dict):
        raise DataError(f"{where}: must return an array, a dict of arrays, or (inputs, labels)")
    return {k: np.asarray(v) for k, v in result.items()}, labels


def random_dataset(inputs: list[TensorSpec], n: int, seed: int = 0) -> Dataset:
    """`n` random samples from the input spec, in each input's own dtype (generated in chunks: no
    float64 copy). Scalar inputs hold one 0-d value. Calibration over many samples should use
    `optimize.probes.random_batches`, which holds one batch at a time."""
    if not inputs:
        raise DataError("no data and no input spec: declare model.inputs or a data source")
    rng = np.random.default_rng(seed)
    return Dataset({s.name: s.random(n, rng) for s in inputs}, None, "random inputs from the input spec")


# ---------------------------------------------------------------- CSV and image folders

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
LABEL_COLUMNS = ("label", "labels", "y", "target", "class")


def _as_path(source: str, base_dir: Path) -> Path:
    return Path(source) if Path(source).is_absolute() else base_dir / source


def _resolve(source: str, base_dir: Path, where: str) -> Path:
    path = _as_path(source, base_dir)
    if not path.is_file():
        raise DataError(f"{where}: file not found: {path}")
    return path


def _split(arrays: dict[str, np.ndarray], labels: Any, split: str) -> tuple[dict[str, np.ndarray], Any]:
    """The fixed 80/20 train/test split (random_state 0; stratified by label when it can be)."""
    if split == "all":
        return arrays, labels
    from sklearn.model_selection import train_test_split

    n = len(next(iter(arrays.values())))
    idx = np.arange(n)
    stratify = None
    if labels is not None and np.issubdtype(np.asarray(labels).dtype, np.integer):
        counts = np.bincount(np.asarray(labels) - np.asarray(labels).min())
        if counts[counts > 0].min() >= 2:
            stratify = labels
    tr, te = train_test_split(idx, test_size=0.2, random_state=0, stratify=stratify)
    keep = np.sort(tr if split == "train" else te)
    return {k: v[keep] for k, v in arrays.items()}, None if labels is None else np.asarray(labels)[keep]


def _class_ids(values: list[str]) -> tuple[np.ndarray, list[str] | None]:
    """Labels as numbers: integers as they are, else floats (regression), else class names → sorted ids."""
    try:
        ints = [int(v) for v in values]
        if all(str(i) == v.strip() for i, v in zip(ints, values, strict=True)):
            return np.asarray(ints, dtype=np.int64), None
    except ValueError:
        pass
    try:
        return np.asarray([float(v) for v in values], dtype=np.float32), None
    except ValueError:
        names = sorted(set(values))
        lookup = {n: i for i, n in enumerate(names)}
        return np.asarray([lookup[v] for v in values], dtype=np.int64), names


def _from_csv(path: Path, where: str, specs: list[TensorSpec]) -> tuple[dict[str, np.ndarray], Any]:
    """A CSV with a header row. The label column is the one named label/y/target/class (if any).
    One model input: every other column, in order, reshaped to the input's fixed shape when the
    sizes agree. Several inputs: columns named `INPUT` or `INPUT.N` belong to that input."""
    import csv

    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{where}: cannot read CSV ({exc})") from None
    rows = [r for r in rows if any(c.strip() for c in r)]
    if len(rows) < 2:
        raise DataError(f"{where}: needs a header row and at least one data row")
    header = [h.strip() for h in rows[0]]
    body = rows[1:]
    for i, r in enumerate(body, start=2):
        if len(r) != len(header):
            raise DataError(f"{where}: line {i} has {len(r)} fields, the header has {len(header)}")
    label_col = next((i for i, h in enumerate(header) if h.lower() in LABEL_COLUMNS), None)
    labels = None
    if label_col is not None:
        labels, names = _class_ids([r[label_col].strip() for r in body])
    feature_cols = [i for i in range(len(header)) if i != label_col]
    if not feature_cols:
        raise DataError(f"{where}: no feature columns besides the label column '{header[label_col]}'")
    groups: dict[str, list[int]] = {}
    if len(specs) > 1:
        names_in = {s.name for s in specs}
        for i in feature_cols:
            key = header[i].split(".", 1)[0]
            if key not in names_in:
                raise DataError(f"{where}: column '{header[i]}' names no model input ({', '.join(sorted(names_in))}); use INPUT or INPUT.N")
            groups.setdefault(key, []).append(i)
    else:
        groups[specs[0].name if specs else "x"] = feature_cols
    arrays: dict[str, np.ndarray] = {}
    spec_by_name = {s.name: s for s in specs}
    for name, cols in groups.items():
        try:
            arr = np.asarray([[float(r[i]) for i in cols] for r in body], dtype=np.float64)
        except ValueError as exc:
            raise DataError(f"{where}: a value in the columns of '{name}' is not a number ({exc})") from None
        spec = spec_by_name.get(name)
        if spec is not None:
            tail = spec.shape[1:]
            if all(isinstance(d, int) and d > 0 for d in tail) and int(np.prod(tail)) == arr.shape[1] and len(tail) != 1:
                arr = arr.reshape(len(arr), *tail)
            want = DTYPES.get(spec.dtype, np.float32)
            arr = arr.astype(want)
        else:
            arr = arr.astype(np.float32)
        arrays[name] = arr
    return arrays, labels


def _read_image(path: Path, channels: int | None, size: tuple[int, int] | None, where: str) -> np.ndarray:
    """One image as float32 (C, H, W) in [0, 1]: .npy through numpy, other formats through Pillow."""
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise DataError(f"{where}: cannot read {path.name} ({exc})") from None
        scale = 255.0 if arr.dtype == np.uint8 else 1.0
        arr = arr.astype(np.float32) / scale
        if arr.ndim == 2:
            arr = arr[None]
        elif arr.ndim == 3 and arr.shape[-1] in (1, 3, 4) and arr.shape[0] not in (1, 3, 4):
            arr = arr.transpose(2, 0, 1)  # HWC → CHW
        if arr.ndim != 3:
            raise DataError(f"{where}: {path.name} has shape {arr.shape}; expected (H, W), (H, W, C) or (C, H, W)")
        if channels and arr.shape[0] != channels:
            if channels == 1 and arr.shape[0] in (3, 4):
                arr = arr[:3].mean(axis=0, keepdims=True)
            elif channels == 3 and arr.shape[0] == 1:
                arr = np.repeat(arr, 3, axis=0)
            else:
                raise DataError(f"{where}: {path.name} has {arr.shape[0]} channels, the model needs {channels}")
        if size and tuple(arr.shape[1:]) != size:
            raise DataError(f"{where}: {path.name} is {arr.shape[1]}x{arr.shape[2]}, the model needs {size[0]}x{size[1]} (.npy images are not resized)")
        return arr
    try:
        from PIL import Image
    except ImportError:
        raise DataError(
            f"{where}: reading {path.suffix} images needs Pillow (pip install pillow), which is not installed; "
            "or store the images as .npy arrays"
        ) from None
    try:
        with Image.open(path) as img:
            img = img.convert("L" if channels == 1 else "RGB")
            if size and img.size != (size[1], size[0]):
                img = img.resize((size[1], size[0]), Image.BILINEAR)
            arr = np.asarray(img, dtype=np.float32) / 255.0
    except OSError as exc:
        raise DataError(f"{where}: cannot read {path.name} ({exc})") from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _from_image_folder(root: Path, where: str, specs: list[TensorSpec]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """`root/<class>/<image>`: class folders in sorted order are labels 0..K-1 (as torchvision's
    ImageFolder). Images become float32 in [0, 1], laid out as the model's (batch, C, H, W) input,
    resized (Pillow) to its fixed height and width."""
    if len(specs) > 1:
        raise DataError(f"{where}: a folder of images feeds a one-input model; this one has {len(specs)} inputs")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{where}: no class folders in {root} (expected {root}/<class>/<image>)")
    channels = size = None
    channels_last = False
    if specs:
        shape = specs[0].shape
        if len(shape) != 4:
            raise DataError(f"{where}: images need a 4-D model input (batch, C, H, W); '{specs[0].name}' is {tuple(shape)}")
        if shape[1] in (1, 3):
            channels, hw = shape[1], shape[2:]
        elif shape[3] in (1, 3):
            channels, hw, channels_last = shape[3], shape[1:3], True
        else:
            hw = shape[2:]
        if all(isinstance(d, int) and d > 0 for d in hw):
            size = (int(hw[0]), int(hw[1]))
    images, labels = [], []
    for k, name in enumerate(classes):
        files = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES + (".npy",))
        for f in files:
            images.append(_read_image(f, channels, size, where))
            labels.append(k)
    if not images:
        raise DataError(f"{where}: no images ({', '.join(IMAGE_SUFFIXES + ('.npy',))}) under {root}/<class>/")
    shapes = {a.shape for a in images}
    if len(shapes) > 1:
        raise DataError(f"{where}: images differ in size {sorted(shapes)[:3]}; declare fixed H and W in model.inputs to resize them")
    x = np.stack(images)
    if channels_last:
        x = x.transpose(0, 2, 3, 1)
    return {specs[0].name if specs else "x": x}, np.asarray(labels, dtype=np.int64)
