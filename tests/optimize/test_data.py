"""optimize.data: the built-in digits split, .npz files, callables, random inputs, and DataError
for every malformed source."""

from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from optimize.config import DataSourceConfig
from optimize.data import Dataset, digits, load_dataset, random_dataset
from optimize.errors import DataError
from optimize.handle import TensorSpec

IMG = [TensorSpec("x", ("batch", 1, 8, 8))]
TWO = [TensorSpec("ids", ("batch", 5), "int64"), TensorSpec("mask", ("batch", 5), "float32")]


def src(source: str, **kw) -> DataSourceConfig:
    return DataSourceConfig(source=source, **kw)


def data_error(spec: DataSourceConfig, inputs: list[TensorSpec], base_dir: Path) -> DataError:
    with pytest.raises(DataError) as info:
        load_dataset(spec, inputs, base_dir)
    assert info.value.exit_code == 2
    return info.value


# ---------------------------------------------------------------- built-in digits


def _keys(x: np.ndarray, y: np.ndarray) -> Counter:
    return Counter(xi.tobytes() + int(yi).to_bytes(1, "little") for xi, yi in zip(x, y, strict=True))


def test_digits_split_sizes_and_partition() -> None:
    x_all, y_all = digits("all")
    x_tr, y_tr = digits("train")
    x_te, y_te = digits("test")
    assert x_all.shape == (1797, 1, 8, 8)
    assert x_tr.shape == (1437, 1, 8, 8) and y_tr.shape == (1437,)
    assert x_te.shape == (360, 1, 8, 8) and y_te.shape == (360,)
    assert x_tr.dtype == np.float32 and y_tr.dtype == np.int64
    assert float(x_all.min()) == 0.0 and float(x_all.max()) == 1.0
    train, test = _keys(x_tr, y_tr), _keys(x_te, y_te)
    assert not set(train) & set(test), "train and test share samples"
    assert train + test == _keys(x_all, y_all), "the split is not a partition of the data set"
    # stratified: every class appears in test in proportion (±2 samples)
    counts_all = np.bincount(y_all, minlength=10)
    counts_te = np.bincount(y_te, minlength=10)
    assert np.all(np.abs(counts_te - counts_all * 0.2) <= 2)


def test_digits_split_is_fixed() -> None:
    a, _ = digits("test")
    b, _ = digits("test", seed=123)
    assert np.array_equal(a, b)


def test_builtin_source_through_load_dataset(tmp_path: Path) -> None:
    ds = load_dataset(src("builtin:digits", split="test", samples=100), IMG, tmp_path)
    assert len(ds) == 100
    assert set(ds.inputs) == {"x"}
    assert ds.inputs["x"].shape == (100, 1, 8, 8)
    assert ds.labels is not None and ds.labels.shape == (100,)
    assert ds.description == "builtin:digits"


def test_unknown_builtin(tmp_path: Path) -> None:
    assert "unknown built-in data set" in str(data_error(src("builtin:mnist"), IMG, tmp_path))


# ---------------------------------------------------------------- .npz


def test_npz_named_inputs_and_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 50, (6, 5))
    mask = np.ones((6, 5), np.float64)
    y = np.arange(6)
    np.savez(tmp_path / "d.npz", ids=ids, mask=mask, y=y)
    ds = load_dataset(src("d.npz"), TWO, tmp_path)
    assert set(ds.inputs) == {"ids", "mask"}
    assert ds.inputs["ids"].dtype == np.int64 and np.array_equal(ds.inputs["ids"], ids)
    assert ds.inputs["mask"].dtype == np.float32  # cast to the model's dtype
    assert np.array_equal(ds.labels, y)
    assert len(ds) == 6


def test_npz_x_alias_for_a_single_input(tmp_path: Path) -> None:
    x = np.random.default_rng(1).random((10, 1, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x)
    ds = load_dataset(src(str(tmp_path / "d.npz"), samples=4), [TensorSpec("pixels", ("batch", 1, 8, 8))], tmp_path)
    assert set(ds.inputs) == {"pixels"}
    assert np.array_equal(ds.inputs["pixels"], x[:4])
    assert ds.labels is None


def test_npz_symbolic_dims_accept_any_size(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.zeros((3, 17), np.float32))
    ds = load_dataset(src("d.npz"), [TensorSpec("x", ("batch", "seq"))], tmp_path)
    assert ds.inputs["x"].shape == (3, 17)


@pytest.mark.parametrize(
    ("arrays", "inputs", "fragment"),
    [
        ({"x": np.zeros((4, 8, 8), np.float32)}, IMG, "'x' has 3 dims (4, 8, 8), the model needs 4"),
        ({"x": np.zeros((4, 1, 8, 7), np.float32)}, IMG, "'x' axis 3 is 7, the model needs 8"),
        ({"x": np.zeros((4, 1, 8, 8), np.float32), "y": np.zeros(3)}, IMG, "3 labels for 4 samples"),
        ({"ids": np.zeros((2, 5), np.int64)}, TWO, "no array named 'mask' (has: ids)"),
        ({"ids": np.zeros((2, 5), np.int64), "mask": np.zeros((3, 5))}, TWO, "different sample counts [2, 3]"),
        ({"ids": np.zeros((2, 5), np.float32), "mask": np.zeros((2, 5))}, TWO, "'ids' has dtype float32, the model needs int64"),
        ({"x": np.zeros((0, 1, 8, 8), np.float32)}, IMG, "contains no samples"),
        ({"y": np.zeros(3)}, IMG, "contains no input arrays"),
    ],
    ids=["rank", "trailing-dim", "label-count", "missing-name", "sample-counts", "float-for-int", "no-samples", "labels-only"],
)
def test_npz_mismatch(tmp_path: Path, arrays: dict, inputs: list[TensorSpec], fragment: str) -> None:
    np.savez(tmp_path / "d.npz", **arrays)
    err = data_error(src("d.npz"), inputs, tmp_path)
    assert fragment in str(err)
    assert str(err).startswith("data source 'd.npz': ")


def test_npz_missing_file(tmp_path: Path) -> None:
    err = data_error(src("absent.npz"), IMG, tmp_path)
    assert f"file not found: {tmp_path / 'absent.npz'}" in str(err)


@pytest.mark.parametrize(
    "payload",
    [b"not numpy at all" * 20, b"PK\x03\x04" + b"\0" * 50, b""],
    ids=["text", "broken-zip", "empty"],
)
def test_npz_unreadable_bytes(tmp_path: Path, payload: bytes) -> None:
    (tmp_path / "d.npz").write_bytes(payload)
    assert "not a readable .npz file" in str(data_error(src("d.npz"), IMG, tmp_path))


def test_npy_saved_as_npz(tmp_path: Path) -> None:
    with open(tmp_path / "d.npz", "wb") as fh:
        np.save(fh, np.zeros((4, 1, 8, 8), np.float32))
    assert "not a .npz archive" in str(data_error(src("d.npz"), IMG, tmp_path))


def test_npz_with_pickled_objects_is_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.array([{"a": 1}, None], dtype=object))
    assert "not a readable .npz file" in str(data_error(src("d.npz"), IMG, tmp_path))


def test_unsupported_source(tmp_path: Path) -> None:
    assert "expected 'builtin:NAME'" in str(data_error(src("data.parquet"), IMG, tmp_path))
    # .csv is a supported source now (tests/optimize/test_data_sources.py): a missing one is "file not found"
    assert "file not found" in str(data_error(src("data.csv"), IMG, tmp_path))


# ---------------------------------------------------------------- callables


@pytest.fixture
def data_module(tmp_path: Path, restore_sys_path) -> str:
    name = f"tiny_data_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(
        "import numpy as np\n\n"
        "def pair():\n"
        "    return np.arange(12, dtype=np.float32).reshape(3, 4), np.array([0, 1, 2])\n\n"
        "def named():\n"
        "    return {'ids': np.zeros((2, 5), np.int64), 'mask': np.ones((2, 5))}\n\n"
        "def broken():\n"
        "    raise RuntimeError('no data today')\n\n"
        "def wrong():\n"
        "    return 'text'\n"
    )
    return name


def test_callable_returning_inputs_and_labels(tmp_path: Path, data_module: str) -> None:
    ds = load_dataset(src(f"{data_module}:pair"), [TensorSpec("x", ("batch", 4))], tmp_path)
    assert np.array_equal(ds.inputs["x"], np.arange(12, dtype=np.float32).reshape(3, 4))
    assert ds.labels.tolist() == [0, 1, 2]


def test_callable_returning_named_arrays(tmp_path: Path, data_module: str) -> None:
    ds = load_dataset(src(f"{data_module}:named"), TWO, tmp_path)
    assert ds.inputs["mask"].dtype == np.float32
    assert ds.labels is None
    assert len(ds) == 2


def test_callable_errors(tmp_path: Path, data_module: str) -> None:
    assert "cannot import" in str(data_error(src(f"{data_module}:absent"), IMG, tmp_path))
    assert "cannot import" in str(data_error(src("no_such_mod_q:fn"), IMG, tmp_path))
    assert "must return an array" in str(data_error(src(f"{data_module}:wrong"), IMG, tmp_path))
    assert "raised RuntimeError: no data today" in str(data_error(src(f"{data_module}:broken"), IMG, tmp_path))


# ---------------------------------------------------------------- random inputs and Dataset


def test_random_dataset_respects_dtypes_and_bounds() -> None:
    specs = [
        TensorSpec("ids", ("batch", 16), "int64", low=0, high=100),
        TensorSpec("img", ("batch", 3, "h"), "float32", low=0.0, high=0.5, example_shape=(1, 3, 5)),
        TensorSpec("flag", ("batch",), "bool"),
        TensorSpec("small", (2, 3), "int32", batch_fixed=True),
    ]
    ds = random_dataset(specs, 64, seed=3)
    ids, img = ds.inputs["ids"], ds.inputs["img"]
    assert ids.dtype == np.int64 and ids.shape == (64, 16)
    assert ids.min() >= 0 and ids.max() < 100
    assert ids.max() >= 90, "high was not used (default ints are 0..1)"
    assert len(np.unique(ids)) > 50
    assert img.dtype == np.float32 and img.shape == (64, 3, 5)  # other symbolic dims: the example shape
    assert img.min() >= 0.0 and img.max() < 0.5
    assert ds.inputs["flag"].dtype == np.bool_
    small = ds.inputs["small"]
    assert small.shape == (2, 3) and small.dtype == np.int32  # a fixed batch stays fixed
    assert set(np.unique(small)) <= {0, 1}
    assert ds.labels is None


def test_random_dataset_is_seeded() -> None:
    spec = [TensorSpec("x", ("batch", 4))]
    a, b, c = random_dataset(spec, 8, seed=1), random_dataset(spec, 8, seed=1), random_dataset(spec, 8, seed=2)
    assert np.array_equal(a.inputs["x"], b.inputs["x"])
    assert not np.array_equal(a.inputs["x"], c.inputs["x"])
    assert a.inputs["x"].min() >= -1 and a.inputs["x"].max() < 1


def test_random_dataset_needs_a_spec() -> None:
    with pytest.raises(DataError, match="declare model.inputs"):
        random_dataset([], 4)


def test_dataset_take_and_batches() -> None:
    ds = Dataset({"x": np.arange(10)[:, None]}, np.arange(10), "t")
    assert len(ds.take(3)) == 3 and ds.take(3).labels.tolist() == [0, 1, 2]
    assert len(ds.take(100)) == 10
    batches = list(ds.batches(4))
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    shuffled = np.concatenate([b[0]["x"][:, 0] for b in ds.batches(4, shuffle=True, seed=0)])
    assert sorted(shuffled.tolist()) == list(range(10))
    assert shuffled.tolist() != list(range(10))
    for xs, ys in ds.batches(3, shuffle=True, seed=5):
        assert np.array_equal(xs["x"][:, 0], ys)  # inputs and labels stay aligned
