"""optimize.example: the built-in digits CNN trains to a real accuracy, is cached once under
$OPTIMIZE_CACHE with a versioned name, is written atomically, and loads through the factory loader."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from optimize import example
from optimize.data import digits
from optimize.loaders import load_model, load_weights


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory):
    """A private cache folder with the example teacher trained once (a few seconds)."""
    root = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OPTIMIZE_CACHE", str(root))
        path = example.ensure_teacher()
        yield SimpleNamespace(root=root, path=path, mtime=path.stat().st_mtime_ns)


def test_factory_builds_the_declared_architecture() -> None:
    m = example.digits_cnn()
    assert isinstance(m, example.DigitsCNN)
    assert m.input_spec == [{"name": "x", "shape": ["batch", 1, 8, 8], "dtype": "float32"}]
    assert m.output_names == ["logits"]
    with torch.no_grad():
        assert tuple(m(torch.zeros(3, 1, 8, 8)).shape) == (3, 10)
    narrow = example.digits_cnn(width=4, hidden=16)
    assert sum(p.numel() for p in narrow.parameters()) < sum(p.numel() for p in m.parameters()) / 5


def test_importing_the_module_does_not_import_torch() -> None:
    code = "import sys, optimize.example; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_teacher_is_cached_under_optimize_cache_with_a_versioned_name(cache) -> None:
    assert cache.path == cache.root / "example" / f"digits_cnn-{example.VERSION}.safetensors"
    assert cache.path.is_file()
    leftovers = [p.name for p in cache.path.parent.iterdir() if p != cache.path]
    assert leftovers == [], "the atomic write leaves no temporary files"


def test_teacher_reaches_95_percent_on_the_test_split(cache) -> None:
    m = example.digits_cnn()
    load_weights(m, cache.path)
    x, y = digits("test")
    acc = example.accuracy(m, x, y)
    assert acc >= 95.0, acc


def test_second_call_reuses_the_cache(cache, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("OPTIMIZE_CACHE", str(cache.root))

    def no_training(*args, **kwargs):
        raise AssertionError("retrained although the cache is valid")

    monkeypatch.setattr(example, "train_teacher", no_training)
    assert example.ensure_teacher() == cache.path
    assert cache.path.stat().st_mtime_ns == cache.mtime
    assert capsys.readouterr().out == "", "the library prints nothing"


def test_a_corrupt_cache_file_is_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPTIMIZE_CACHE", str(tmp_path))
    target = tmp_path / "example" / example.WEIGHTS_NAME
    target.parent.mkdir(parents=True)
    target.write_bytes(b"not safetensors")
    calls = []
    real = example.train_teacher

    def quick(path, seed=0, epochs=example.TRAIN_EPOCHS):
        calls.append(path)
        return real(path, seed=seed, epochs=1)

    monkeypatch.setattr(example, "train_teacher", quick)
    assert example.ensure_teacher() == target
    assert calls == [target]
    load_weights(example.digits_cnn(), target)  # loads strictly now


def test_training_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    example.train_teacher(tmp_path / "a.safetensors", seed=3, epochs=1)
    example.train_teacher(tmp_path / "b.safetensors", seed=3, epochs=1)
    a, b = load_file(str(tmp_path / "a.safetensors")), load_file(str(tmp_path / "b.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_example_model_spec_loads_through_the_factory_loader(cache, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPTIMIZE_CACHE", str(cache.root))
    factory, weights = example.example_model_spec()
    assert factory == "optimize.example:digits_cnn"
    assert weights == cache.path
    handle = load_model(factory, model_cfg=SimpleNamespace(inputs=None, outputs=None, weights=str(weights)))
    assert handle.form == "torch"
    assert [(s.name, s.shape, s.dtype) for s in handle.inputs] == [("x", ("batch", 1, 8, 8), "float32")]
    assert handle.outputs == ["logits"]
    assert not handle.module.training
