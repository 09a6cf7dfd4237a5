"""optimize.loaders.load_model: every supported form loads; every bad or unsafe input is a
ModelLoadError (exit 2) with a one-line message, and nothing untrusted is unpickled."""

from __future__ import annotations

import pickle
import uuid
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from tiny_models import HIDDEN, IN_FEATURES, OUT_FEATURES, make_mlp

from optimize.config import InputSpecConfig, ModelSection
from optimize.errors import ModelLoadError
from optimize.handle import TensorSpec
from optimize.loaders import is_factory, load_model


def load_error(spec: str | Path, **kwargs) -> ModelLoadError:
    with pytest.raises(ModelLoadError) as info:
        load_model(str(spec), **kwargs)
    err = info.value
    assert err.exit_code == 2
    assert "\n" not in str(err), "messages are one line"
    return err


def same_outputs(a: torch.nn.Module, b: torch.nn.Module, in_features: int = IN_FEATURES) -> bool:
    x = torch.randn(5, in_features, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return torch.allclose(a(x), b(x), atol=1e-6)


# ---------------------------------------------------------------- ONNX


def test_onnx_loads_with_input_specs_from_the_file(mlp_onnx: Path) -> None:
    h = load_model(str(mlp_onnx))
    assert h.form == "onnx"
    assert h.onnx_path == mlp_onnx
    assert h.module is None
    assert h.inputs == [TensorSpec("x", ("batch", IN_FEATURES), "float32")]
    assert h.outputs == ["y"]
    assert h.source == str(mlp_onnx)


def test_onnx_fixed_batch_and_several_inputs(subgraph_model) -> None:
    h = load_model(str(subgraph_model.path))
    assert [(s.name, s.shape, s.dtype) for s in h.inputs] == [("X", ("N", 4), "float32"), ("cond", (), "bool")]
    assert h.outputs == ["Y"]


def test_onnx_declared_inputs_override_file_specs(mlp_onnx: Path) -> None:
    cfg = ModelSection(inputs=[InputSpecConfig(name="x", shape=[3, IN_FEATURES], low=0, high=2)])
    h = load_model(str(mlp_onnx), model_cfg=cfg)
    assert h.inputs == [TensorSpec("x", (3, IN_FEATURES), "float32", 0.0, 2.0)]


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.onnx"
    p.write_bytes(b"")
    assert str(load_error(p)) == f"{p}: file is empty"


def test_random_bytes_onnx(tmp_path: Path) -> None:
    p = tmp_path / "noise.onnx"
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    err = load_error(p)
    assert str(err).startswith(f"{p}: not ")
    assert "ONNX" in str(err)


def test_truncated_onnx(tmp_path: Path, mlp_onnx: Path) -> None:
    data = mlp_onnx.read_bytes()
    p = tmp_path / "truncated.onnx"
    p.write_bytes(data[: len(data) // 2])
    err = load_error(p)
    assert str(err).startswith(f"{p}: not a readable ONNX model")


def test_git_lfs_pointer(tmp_path: Path) -> None:
    p = tmp_path / "model.onnx"
    p.write_text(
        "version https://git-lfs.github.com/spec/v1\n"
        "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
        "size 12345\n"
    )
    err = load_error(p)
    assert "Git LFS pointer" in str(err)
    assert "git lfs pull" in str(err)


def test_directory(tmp_path: Path) -> None:
    d = tmp_path / "model.onnx"
    d.mkdir()
    assert "is a folder" in str(load_error(d))


def test_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "missing.onnx"
    assert str(load_error(p)) == f"{p}: no such file (and not a 'package.module:callable' factory)"


def test_unknown_suffix(tmp_path: Path) -> None:
    p = tmp_path / "model.h5"
    p.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    err = load_error(p)
    assert "unknown model type '.h5'" in str(err)


def _save_with_external_data(src: Path, dst: Path, location: str) -> None:
    model = onnx.load(str(src))
    onnx.save_model(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location, size_threshold=0)


def test_onnx_with_external_data_loads(tmp_path: Path, mlp_onnx: Path) -> None:
    d = tmp_path / "ext"
    d.mkdir()
    _save_with_external_data(mlp_onnx, d / "m.onnx", "m.onnx.data")
    assert (d / "m.onnx.data").is_file()
    h = load_model(str(d / "m.onnx"))
    assert h.form == "onnx"
    assert h.inputs[0].name == "x"


def test_external_data_outside_the_model_folder(tmp_path: Path, mlp_onnx: Path) -> None:
    d = tmp_path / "inner"
    d.mkdir()
    _save_with_external_data(mlp_onnx, d / "m.onnx", "weights.bin")
    (d / "weights.bin").rename(tmp_path / "outside.bin")
    _set_location(d / "m.onnx", "../outside.bin")
    err = load_error(d / "m.onnx")
    assert "'../outside.bin' points outside the model's folder" in str(err)


def _set_location(model_path: Path, location: str) -> None:
    model = onnx.load(str(model_path), load_external_data=False)
    for t in model.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    onnx.save_model(model, str(model_path))


def test_external_data_absolute_path_outside(tmp_path: Path, mlp_onnx: Path) -> None:
    d = tmp_path / "inner"
    d.mkdir()
    _save_with_external_data(mlp_onnx, d / "m.onnx", "weights.bin")
    (d / "weights.bin").rename(tmp_path / "abs.bin")
    _set_location(d / "m.onnx", str(tmp_path / "abs.bin"))
    assert "points outside the model's folder" in str(load_error(d / "m.onnx"))


def test_external_data_symlink_leading_outside(tmp_path: Path, mlp_onnx: Path) -> None:
    d = tmp_path / "inner"
    d.mkdir()
    _save_with_external_data(mlp_onnx, d / "m.onnx", "weights.bin")
    (d / "weights.bin").rename(tmp_path / "real.bin")
    (d / "weights.bin").symlink_to(tmp_path / "real.bin")
    assert "points outside the model's folder" in str(load_error(d / "m.onnx"))


def test_external_data_in_a_subfolder_is_fine(tmp_path: Path, mlp_onnx: Path) -> None:
    (tmp_path / "data").mkdir()
    _save_with_external_data(mlp_onnx, tmp_path / "m.onnx", "data/w.bin")
    assert (tmp_path / "data" / "w.bin").is_file()
    assert load_model(str(tmp_path / "m.onnx")).form == "onnx"


def test_external_data_missing(tmp_path: Path, mlp_onnx: Path) -> None:
    _save_with_external_data(mlp_onnx, tmp_path / "m.onnx", "m.onnx.data")
    (tmp_path / "m.onnx.data").unlink()
    assert "external data file missing: m.onnx.data" in str(load_error(tmp_path / "m.onnx"))


def test_external_data_too_short(tmp_path: Path, mlp_onnx: Path) -> None:
    _save_with_external_data(mlp_onnx, tmp_path / "m.onnx", "m.onnx.data")
    data = tmp_path / "m.onnx.data"
    data.write_bytes(data.read_bytes()[:100])
    assert "runs past the end of m.onnx.data" in str(load_error(tmp_path / "m.onnx"))


# ---------------------------------------------------------------- TorchScript and torch.export


def test_torchscript_archive_loads_as_torch(tmp_path: Path, mlp) -> None:
    p = tmp_path / "mlp.pt"
    torch.jit.save(torch.jit.script(mlp), str(p))
    cfg = ModelSection(inputs=[InputSpecConfig(name="x", shape=["batch", IN_FEATURES])], outputs=["logits"])
    h = load_model(str(p), model_cfg=cfg)
    assert h.form == "torch"
    assert isinstance(h.module, torch.jit.ScriptModule)
    assert h.inputs == [TensorSpec("x", ("batch", IN_FEATURES), "float32")]
    assert h.outputs == ["logits"]
    assert same_outputs(h.module, mlp)


def test_torch_export_program_loads(tmp_path: Path, mlp) -> None:
    p = tmp_path / "mlp.pt2"
    batch = torch.export.Dim("batch", min=1, max=1024)
    ep = torch.export.export(mlp, (torch.randn(2, IN_FEATURES),), dynamic_shapes=({0: batch},))
    torch.export.save(ep, str(p))
    h = load_model(str(p))
    assert h.form == "torch"
    assert isinstance(h.module, torch.nn.Module)
    # input spec derived from the program's example input: batch axis symbolic, feature axis kept
    assert h.inputs == [TensorSpec("x", ("batch", IN_FEATURES), "float32")]
    assert same_outputs(h.module, mlp)
    h.module.eval()  # the rest of the toolchain calls eval()/train() on torch handles
    h.module.train()
    h.module.eval()
    assert not h.module.training


def test_garbage_pt2(tmp_path: Path) -> None:
    p = tmp_path / "bad.pt2"
    p.write_bytes(b"this is not a program" * 10)
    assert "not a readable torch.export program" in str(load_error(p))


# ---------------------------------------------------------------- factories


@pytest.fixture
def factory(tmp_path: Path, restore_sys_path) -> str:
    """A module file in tmp_path with `build()` returning a freshly initialised MLP; a unique module
    name per test because importlib caches modules."""
    name = f"tiny_factory_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(
        "import torch\n\n"
        "def build():\n"
        f"    return torch.nn.Sequential(torch.nn.Linear({IN_FEATURES}, {HIDDEN}), torch.nn.ReLU(),"
        f" torch.nn.Linear({HIDDEN}, {OUT_FEATURES}))\n\n"
        "def broken():\n"
        "    raise ValueError('no such config')\n\n"
        "def not_a_module():\n"
        "    return 42\n"
    )
    return name


def test_factory_spec_detection(tmp_path: Path) -> None:
    assert is_factory("pkg.models:build")
    assert is_factory("models:build_v2")
    assert not is_factory("model.onnx")
    assert not is_factory("dir/model.pt")
    assert not is_factory("pkg.models:")


def test_factory_without_weights(tmp_path: Path, factory: str) -> None:
    h = load_model(f"{factory}:build", base_dir=tmp_path)
    assert h.form == "torch"
    assert h.source == f"{factory}:build"
    assert isinstance(h.module, torch.nn.Sequential)
    assert not h.module.training


def test_factory_with_safetensors_weights(tmp_path: Path, factory: str) -> None:
    from safetensors.torch import save_file

    trained = make_mlp(seed=123)
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, str(tmp_path / "w.safetensors"))
    h = load_model(f"{factory}:build", model_cfg=ModelSection(weights="w.safetensors"), base_dir=tmp_path)
    assert same_outputs(h.module, trained)
    assert not same_outputs(h.module, make_mlp(seed=0))


def test_factory_with_state_dict_weights(tmp_path: Path, factory: str) -> None:
    trained = make_mlp(seed=321)
    w = tmp_path / "w.pt"
    torch.save(trained.state_dict(), str(w))
    h = load_model(f"{factory}:build", model_cfg=ModelSection(weights=str(w)), base_dir=tmp_path)
    assert same_outputs(h.module, trained)


def test_factory_mismatched_state_dict(tmp_path: Path, factory: str) -> None:
    other = torch.nn.Sequential(torch.nn.Linear(IN_FEATURES, 3))
    torch.save(other.state_dict(), str(tmp_path / "w.pt"))
    err = load_error(f"{factory}:build", model_cfg=ModelSection(weights="w.pt"), base_dir=tmp_path)
    assert "weights do not match the model" in str(err)


def test_factory_mismatched_safetensors_keys(tmp_path: Path, factory: str) -> None:
    from safetensors.torch import save_file

    state = {f"renamed.{k}": v.contiguous() for k, v in make_mlp().state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    err = load_error(f"{factory}:build", model_cfg=ModelSection(weights="w.safetensors"), base_dir=tmp_path)
    assert "weights do not match the model" in str(err)


def test_factory_weights_missing(tmp_path: Path, factory: str) -> None:
    err = load_error(f"{factory}:build", model_cfg=ModelSection(weights="absent.pt"), base_dir=tmp_path)
    assert "weights file not found" in str(err)


def test_factory_weights_that_are_a_pickled_module_are_refused(tmp_path: Path, factory: str) -> None:
    torch.save(make_mlp(), str(tmp_path / "w.pt"))  # a whole module, not a state_dict
    err = load_error(f"{factory}:build", model_cfg=ModelSection(weights="w.pt"), base_dir=tmp_path)
    assert "cannot read weights" in str(err)


def test_factory_import_error(tmp_path: Path, restore_sys_path) -> None:
    err = load_error("no_such_module_xyz:build", base_dir=tmp_path)
    assert "factory: cannot import" in str(err)


def test_factory_missing_attribute(tmp_path: Path, factory: str) -> None:
    assert "factory: cannot import" in str(load_error(f"{factory}:nope", base_dir=tmp_path))


def test_factory_that_raises(tmp_path: Path, factory: str) -> None:
    err = load_error(f"{factory}:broken", base_dir=tmp_path)
    assert "factory: raised ValueError: no such config" in str(err)


def test_factory_that_returns_no_module(tmp_path: Path, factory: str) -> None:
    assert "did not give a torch.nn.Module (got int)" in str(load_error(f"{factory}:not_a_module", base_dir=tmp_path))


# ---------------------------------------------------------------- pickles


class Payload:
    """Unpickling this creates a file: a stand-in for arbitrary code execution."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickled_whole_module_is_refused_without_trust(tmp_path: Path, mlp) -> None:
    p = tmp_path / "whole.pt"
    torch.save(mlp, str(p))
    err = load_error(p)
    assert "--trust-model" in str(err)
    assert "pickle" in str(err)


def test_pickled_whole_module_loads_with_trust(tmp_path: Path, mlp) -> None:
    p = tmp_path / "whole.pt"
    torch.save(mlp, str(p))
    h = load_model(str(p), trust_model=True)
    assert h.form == "torch"
    assert isinstance(h.module, torch.nn.Sequential)
    assert same_outputs(h.module, mlp)


def test_the_payload_really_runs_when_unpickled(tmp_path: Path) -> None:
    # Control for the tests below: the payload is live, so "marker absent" there means "not run".
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(Payload(marker))).close()
    assert marker.exists()


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_malicious_pickle_is_refused_and_not_run(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.pt"
    if writer == "torch.save":
        torch.save(Payload(marker), str(p))  # zip container
    else:
        p.write_bytes(pickle.dumps(Payload(marker)))  # legacy raw pickle
    assert not marker.exists()
    err = load_error(p)
    assert "--trust-model" in str(err)
    assert not marker.exists()


def test_state_dict_as_model_says_use_a_factory(tmp_path: Path, mlp) -> None:
    p = tmp_path / "weights.pt"
    torch.save(mlp.state_dict(), str(p))
    err = load_error(p)
    assert "is a state_dict" in str(err)
    assert "package.module:callable" in str(err)
    assert f"model.weights: {p}" in str(err)
