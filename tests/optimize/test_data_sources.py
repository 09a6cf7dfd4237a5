"""optimize.data: CSV files and folders of images by class (root/<class>/<image>), with the fixed
train/test split, and clear errors for what they cannot read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from optimize.config import DataSourceConfig
from optimize.data import load_dataset
from optimize.errors import DataError
from optimize.handle import TensorSpec


def load(source: str, specs: list[TensorSpec], base: Path, split: str = "all"):
    return load_dataset(DataSourceConfig(source=source, split=split), specs, base)


def test_csv_with_named_classes_reshaped_to_the_input(tmp_path: Path) -> None:
    rows = ["a,b,c,d,label"] + [f"{i},{i + 1},{i + 2},{i + 3},{'cat' if i % 2 else 'dog'}" for i in range(10)]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    ds = load("d.csv", [TensorSpec("x", ("batch", 1, 2, 2))], tmp_path)
    assert ds.inputs["x"].shape == (10, 1, 2, 2) and ds.inputs["x"].dtype == np.float32
    assert ds.inputs["x"][3].ravel().tolist() == [3, 4, 5, 6]
    assert ds.labels.tolist() == [1, 0] * 5  # class names in sorted order: cat 0, dog 1
    train, test = (load("d.csv", [TensorSpec("x", ("batch", 4))], tmp_path, split) for split in ("train", "test"))
    assert len(train) == 8 and len(test) == 2
    assert sorted(train.inputs["x"][:, 0].tolist() + test.inputs["x"][:, 0].tolist()) == list(range(10))


def test_csv_for_several_inputs_and_integer_or_float_labels(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("a.0,a.1,b,y\n1,2,3,0\n4,5,6,2\n")
    ds = load("m.csv", [TensorSpec("a", ("batch", 2)), TensorSpec("b", ("batch", 1))], tmp_path)
    assert ds.inputs["a"].tolist() == [[1, 2], [4, 5]] and ds.inputs["b"].tolist() == [[3], [6]]
    assert ds.labels.dtype == np.int64 and ds.labels.tolist() == [0, 2]
    (tmp_path / "r.csv").write_text("x1,x2,target\n1,2,0.5\n3,4,1.5\n")
    assert load("r.csv", [TensorSpec("x", ("batch", 2))], tmp_path).labels.dtype == np.float32


@pytest.mark.parametrize(
    "text, message",
    [
        ("a,b\n1,2\n3\n", "line 3 has 1 fields"),
        ("a,label\nx,1\n", "not a number"),
        ("a\n", "at least one data row"),
        ("q,label\n1,0\n", "names no model input"),
    ],
)
def test_bad_csv_files_are_data_errors(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "bad.csv").write_text(text)
    specs = [TensorSpec("a", ("batch", 1)), TensorSpec("b", ("batch", 1))] if "q," in text else [TensorSpec("x", ("batch", -1))]
    with pytest.raises(DataError, match=message) as info:
        load("bad.csv", specs, tmp_path)
    assert info.value.exit_code == 2


def _npy_folder(root: Path) -> None:
    rng = np.random.default_rng(0)
    for k, name in enumerate(["zero", "one", "two"]):
        (root / name).mkdir(parents=True)
        for i in range(5):
            img = (rng.uniform(0, 1, (8, 8)) * 255).astype(np.uint8)
            img[0, 0] = k * 100
            np.save(root / name / f"{i}.npy", img)


def test_image_folder_of_npy_arrays_by_class(tmp_path: Path) -> None:
    _npy_folder(tmp_path / "imgs")
    ds = load("imgs", [TensorSpec("x", ("batch", 1, 8, 8))], tmp_path)
    assert ds.inputs["x"].shape == (15, 1, 8, 8) and ds.inputs["x"].dtype == np.float32
    assert 0.0 <= ds.inputs["x"].min() and ds.inputs["x"].max() <= 1.0
    # classes in sorted folder order: one 0, two 1, zero 2
    assert ds.labels.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    assert ds.inputs["x"][0, 0, 0, 0] == pytest.approx(100 / 255)
    rgb = load("imgs", [TensorSpec("x", ("batch", 3, 8, 8))], tmp_path)  # gray → 3 channels
    assert rgb.inputs["x"].shape == (15, 3, 8, 8)
    test = load("imgs", [TensorSpec("x", ("batch", 1, 8, 8))], tmp_path, "test")
    assert len(test) == 3 and sorted(test.labels.tolist()) == [0, 1, 2]  # stratified
    with pytest.raises(DataError, match="not resized"):
        load("imgs", [TensorSpec("x", ("batch", 1, 16, 16))], tmp_path)


def test_png_images_need_pillow_or_are_read_with_it(tmp_path: Path) -> None:
    (tmp_path / "p" / "a").mkdir(parents=True)
    try:
        from PIL import Image
    except ImportError:
        (tmp_path / "p" / "a" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n")
        with pytest.raises(DataError, match=r"needs Pillow \(pip install pillow\)"):
            load("p", [TensorSpec("x", ("batch", 1, 8, 8))], tmp_path)
        return
    Image.fromarray(np.full((16, 16, 3), 255, np.uint8)).save(tmp_path / "p" / "a" / "0.png")
    ds = load("p", [TensorSpec("x", ("batch", 1, 8, 8))], tmp_path)  # converted to gray, resized
    assert ds.inputs["x"].shape == (1, 1, 8, 8) and ds.inputs["x"].max() == pytest.approx(1.0)


def test_image_folder_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        load("empty", [TensorSpec("x", ("batch", 1, 8, 8))], tmp_path)
    _npy_folder(tmp_path / "imgs")
    with pytest.raises(DataError, match="4-D model input"):
        load("imgs", [TensorSpec("x", ("batch", 64))], tmp_path)
    with pytest.raises(DataError, match="an existing folder of images"):
        load("no/such/folder", [TensorSpec("x", ("batch", 1, 8, 8))], tmp_path)
