"""The bad-input matrix, driven through the real command line: every case exits 2 with exactly
one `error: ...` line naming what and where, prints no traceback, and writes nothing under the
output name. Cases run in-process through `cli.app.main` (the console script's entry point); a
representative subset also runs as separate processes (`test_rejections_in_real_processes`).

Lower-level tests of the same rules live in test_loaders.py, test_config.py, test_yaml_source.py;
docs/reliability.md maps each promise to its test.
"""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path

import onnx
import pytest
from helpers import child_pythonpath
from reliability_helpers import (
    assert_nothing_written,
    assert_one_line_error,
    cli,
    cli_process,
    make_mlp_onnx,
    write_config,
)

PIPELINE = "  - type: prune\n    sparsity: 0.5\n  - type: quantize\n    mode: dynamic\n"


@pytest.fixture(scope="module")
def mlp_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return make_mlp_onnx(tmp_path_factory.mktemp("src") / "mlp.onnx").read_bytes()


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    return write_config(tmp_path, PIPELINE)


def run_rejected(capfd, model: Path | str, cfg: Path, out: Path, *fragments: str, extra: tuple[str, ...] = ()) -> str:
    code, stdout, err = cli(capfd, "run", str(model), "-c", str(cfg), "-o", str(out), "-q", *extra)
    line = assert_one_line_error(code, err, 2, *fragments)
    assert stdout == ""
    assert_nothing_written(out)
    assert not out.with_suffix(".report.json").exists()
    return line


# ---------------------------------------------------------------- model files


def _byte_flipped(data: bytes) -> bytes:
    b = bytearray(data)
    for i in range(0, len(b), 7):
        b[i] ^= 0xFF
    return bytes(b)


CORRUPTIONS = {
    "empty": (lambda d: b"", "file is empty"),
    "random": (lambda d: bytes(range(256)) * 16, "ONNX"),
    "git_lfs_pointer": (lambda d: b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 3125\n", "Git LFS pointer"),
    "truncated_50": (lambda d: d[: len(d) // 2], "not a readable ONNX model"),
    "truncated_99": (lambda d: d[: len(d) * 99 // 100], "not a readable ONNX model"),
    "byte_flipped": (_byte_flipped, "ONNX"),
    "junk_appended": (lambda d: d + bytes(range(255, -1, -1)) * 2, "not a readable ONNX model"),
    "zeros_appended": (lambda d: d + b"\0" * 64, "not a readable ONNX model"),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corrupt_model_file(capfd, tmp_path: Path, mlp_bytes: bytes, cfg: Path, case: str) -> None:
    make, fragment = CORRUPTIONS[case]
    model = tmp_path / f"{case}.onnx"
    model.write_bytes(make(mlp_bytes))
    line = run_rejected(capfd, model, cfg, tmp_path / "out" / "m.onnx", fragment)
    assert str(model) in line  # names the file


def test_a_flip_inside_the_graph_structure_fails_the_checker_at_load(capfd, tmp_path: Path, mlp_bytes: bytes, cfg: Path) -> None:
    # Decodes fine, but an op's input names a tensor that does not exist: caught at load (exit 2),
    # not later as a runtime failure (exit 1).
    m = onnx.load_from_string(mlp_bytes)
    m.graph.node[-1].input[0] = "nowhere"
    model = tmp_path / "dangling.onnx"
    model.write_bytes(m.SerializeToString())
    run_rejected(capfd, model, cfg, tmp_path / "m.onnx", "not a valid ONNX model (ONNX checker:")


@pytest.mark.parametrize(
    "field, value, fragment",
    [
        ("ir_version", 99, "ONNX IR version 99 is newer than this installation"),
        ("opset", 99, "opset 99 of domain 'ai.onnx' is newer than this installation"),
    ],
)
def test_newer_ir_or_opset_than_installed(capfd, tmp_path: Path, mlp_bytes: bytes, cfg: Path, field: str, value: int, fragment: str) -> None:
    m = onnx.load_from_string(mlp_bytes)
    if field == "ir_version":
        m.ir_version = value
    else:
        m.opset_import[0].version = value
    model = tmp_path / "new.onnx"
    model.write_bytes(m.SerializeToString())
    line = run_rejected(capfd, model, cfg, tmp_path / "m.onnx", fragment)
    assert "upgrade onnx and onnxruntime" in line


def _external(tmp_path: Path, mlp_bytes: bytes) -> Path:
    d = tmp_path / "model"
    d.mkdir()
    onnx.save_model(onnx.load_from_string(mlp_bytes), str(d / "m.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="w.bin", size_threshold=0)
    return d / "m.onnx"


def _relocate(model: Path, location: str) -> None:
    m = onnx.load(str(model), load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    onnx.save_model(m, str(model))


def test_external_data_escaping_with_dotdot(capfd, tmp_path: Path, mlp_bytes: bytes, cfg: Path) -> None:
    model = _external(tmp_path, mlp_bytes)
    (model.parent / "w.bin").rename(tmp_path / "w.bin")
    _relocate(model, "../w.bin")
    line = run_rejected(capfd, model, cfg, tmp_path / "m.onnx", "'../w.bin' points outside the model's folder")
    assert line.startswith("error: ") and "\n" not in line


def test_external_data_symlink_out(capfd, tmp_path: Path, mlp_bytes: bytes, cfg: Path) -> None:
    model = _external(tmp_path, mlp_bytes)
    secret = tmp_path / "elsewhere" / "secret.bin"
    secret.parent.mkdir()
    (model.parent / "w.bin").rename(secret)
    (model.parent / "w.bin").symlink_to(secret)  # the name is inside, the bytes are not
    line = run_rejected(capfd, model, cfg, tmp_path / "m.onnx", "'w.bin' points outside the model's folder")
    assert line.startswith("error: ") and "\n" not in line


def test_external_data_missing_and_past_the_end(capfd, tmp_path: Path, mlp_bytes: bytes, cfg: Path) -> None:
    model = _external(tmp_path, mlp_bytes)
    data = model.parent / "w.bin"
    data.write_bytes(data.read_bytes()[:64])
    past_end = run_rejected(capfd, model, cfg, tmp_path / "m.onnx", "runs past the end of w.bin")
    data.unlink()
    missing = run_rejected(capfd, model, cfg, tmp_path / "m.onnx", "external data file missing: w.bin")
    assert past_end != missing  # two different faults, two different one-line messages


# ---------------------------------------------------------------- pickles


class Payload:
    """Unpickling this creates `marker`: a stand-in for arbitrary code execution."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _pt2_with_payload(tmp_path: Path, where: str, marker: Path) -> Path:
    """A real torch.export archive with one member replaced by a malicious pickle: the sample
    inputs (torch retries them with weights_only=False) or a weight marked `use_pickle`."""
    import torch

    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(16, 4)).eval()
    clean = tmp_path / "clean.pt2"
    torch.export.save(torch.export.export(m, (torch.randn(2, 16),)), str(clean))
    buf = io.BytesIO()
    torch.save(Payload(marker), buf)
    evil = tmp_path / f"evil_{where}.pt2"
    with zipfile.ZipFile(clean) as zin, zipfile.ZipFile(evil, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if where == "sample_inputs" and info.filename.endswith("sample_inputs/model.pt"):
                data = buf.getvalue()
            if where == "weights":
                if info.filename.endswith("data/weights/weight_0"):
                    data = buf.getvalue()
                if info.filename.endswith("model_weights_config.json"):
                    c = json.loads(data)
                    first = next(iter(c["config"]))
                    c["config"][first]["use_pickle"] = True
                    data = json.dumps(c).encode()
            zout.writestr(info, data)
    return evil


@pytest.mark.parametrize("where", ["sample_inputs", "weights"])
def test_malicious_pt2_is_refused_and_the_payload_does_not_run(capfd, tmp_path: Path, cfg: Path, where: str) -> None:
    import torch

    marker = tmp_path / "pwned"
    evil = _pt2_with_payload(tmp_path, where, marker)
    run_rejected(capfd, evil, cfg, tmp_path / "m.onnx", "can run code when loaded", "--trust-model", f"data/{where}/")
    assert not marker.exists(), "the payload ran"
    # Control: torch.export.load itself does run this payload, so the check above is meaningful.
    try:
        torch.export.load(str(evil))
    except Exception:
        pass
    assert marker.exists()


def test_clean_pt2_loads_without_trust(capfd, tmp_path: Path) -> None:
    import torch

    from optimize.loaders import load_model, pt2_safety_problem

    m = torch.nn.Sequential(torch.nn.Linear(16, 4)).eval()
    p = tmp_path / "ok.pt2"
    torch.export.save(torch.export.export(m, (torch.randn(2, 16),)), str(p))
    assert pt2_safety_problem(p.read_bytes()) is None
    assert load_model(str(p)).form == "torch"


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_malicious_pt_is_refused_and_the_payload_does_not_run(capfd, tmp_path: Path, cfg: Path, writer: str) -> None:
    import torch

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    if writer == "torch.save":
        torch.save(Payload(marker), str(evil))
    else:
        evil.write_bytes(pickle.dumps(Payload(marker)))
    run_rejected(capfd, evil, cfg, tmp_path / "m.onnx", "--trust-model")
    assert not marker.exists()


# ---------------------------------------------------------------- factories and weights


@pytest.fixture
def factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    import uuid

    name = f"rel_factory_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(
        "import torch\n\n"
        "class Net(torch.nn.Module):\n"
        "    input_spec = [{'name': 'x', 'shape': ['batch', 16]}]\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc = torch.nn.Linear(16, 4)\n"
        "    def forward(self, x):\n"
        "        return self.fc(x)\n\n"
        "def build():\n"
        "    return Net()\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return f"{name}:build"


def test_bad_safetensors_header(capfd, tmp_path: Path, factory: str) -> None:
    w = tmp_path / "w.safetensors"
    w.write_bytes((10**9).to_bytes(8, "little") + b'{"fc.weight": nonsense')  # header length past EOF
    cfg = write_config(tmp_path, "  - type: graph\n", extra=f"model:\n  weights: {w}\n")
    line = run_rejected(capfd, factory, cfg, tmp_path / "m.onnx", f"{w}: cannot read weights")
    assert line.startswith("error: ") and "\n" not in line


def test_state_dict_keys_that_do_not_match(capfd, tmp_path: Path, factory: str) -> None:
    import torch
    from safetensors.torch import save_file

    w = tmp_path / "w.safetensors"
    save_file({"encoder.weight": torch.zeros(4, 16), "fc.bias": torch.zeros(4)}, str(w))
    cfg = write_config(tmp_path, "  - type: graph\n", extra=f"model:\n  weights: {w}\n")
    line = run_rejected(capfd, factory, cfg, tmp_path / "m.onnx", "weights do not match the model")
    assert "fc.weight" in line or "encoder.weight" in line  # names the keys


# ---------------------------------------------------------------- configs and flags


CONFIGS = {
    "unknown_key": ("schema_version: 1\npasses:\n  - type: prune\n    sparsty: 0.5\n", ":4: passes[0].prune.sparsty", "did you mean 'sparsity'"),
    "unknown_pass": ("schema_version: 1\npasses:\n  - type: quantise\n", ":3: passes[0]", "did you mean 'quantize'"),
    "duplicate_key": ("schema_version: 1\npasses:\n  - type: prune\n    sparsity: 0.5\n    sparsity: 0.9\n", ":5:", "duplicate key 'sparsity' (first at line 4)"),
    "wrong_type": ("schema_version: 1\npasses:\n  - type: prune\n    sparsity: lots\n", ":4: passes[0].prune.sparsity", ""),
    "out_of_range": ("schema_version: 1\npasses:\n  - type: prune\n    sparsity: 1.5\n", ":4: passes[0].prune.sparsity", ""),
    "missing_schema_version": ("passes:\n  - type: prune\n", "schema_version", ""),
    "invalid_yaml": ("schema_version: 1\npasses: [\n  - type: prune\n", "invalid YAML, column", ""),
    "python_tag": ("schema_version: 1\npasses: !!python/object/apply:os.system ['touch pwned']\n", "tag not allowed", ""),
}


@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_bad_config(capfd, tmp_path: Path, mlp_bytes: bytes, case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    text, where, fragment = CONFIGS[case]
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    model = tmp_path / "mlp.onnx"
    model.write_bytes(mlp_bytes)
    line = run_rejected(capfd, model, cfg, tmp_path / "m.onnx", where, fragment)
    assert str(cfg) in line
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    "args, fragment",
    [
        (("--set", "passes[0].sparsity=2"), "passes[0].prune.sparsity"),
        (("--set", "passes[9].sparsity=0.5"), "--set passes[9].sparsity"),
        (("--set", "nonsense"), "--set expects KEY=VALUE"),
        (("--no-such-flag",), "No such option: --no-such-flag"),
        (("--device", "tpu"), "Invalid value for '--device'"),
        (("--threads", "0"), "Invalid value for '--threads'"),
    ],
)
def test_bad_flag_or_override(capfd, tmp_path: Path, mlp_bytes: bytes, cfg: Path, args: tuple[str, ...], fragment: str) -> None:
    model = tmp_path / "mlp.onnx"
    model.write_bytes(mlp_bytes)
    run_rejected(capfd, model, cfg, tmp_path / "m.onnx", fragment, extra=args)


def test_output_equal_to_the_input(capfd, tmp_path: Path, mlp_bytes: bytes, cfg: Path) -> None:
    model = tmp_path / "mlp.onnx"
    model.write_bytes(mlp_bytes)
    code, _, err = cli(capfd, "run", str(model), "-c", str(cfg), "-o", str(model), "-q")
    assert_one_line_error(code, err, 2, "would overwrite the input model")
    assert model.read_bytes() == mlp_bytes


def test_missing_data_files_are_named_together_before_any_work(capfd, tmp_path: Path, mlp_bytes: bytes,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Every data file the config names but the disk lacks, in one line, before the model is read (the
    model file here is not even valid ONNX: the data check comes first)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "here.npz").write_bytes(b"")
    model = tmp_path / "mlp.onnx"
    model.write_bytes(b"not a model")
    cfg = write_config(tmp_path, PIPELINE, "data:\n  train: {source: gone.npz}\n  eval: {source: here.npz}\n"
                       "  calibration: {source: sub/also-gone.npz}\n")
    line = run_rejected(capfd, model, cfg, tmp_path / "m.onnx", "data files not found", "data.train.source",
                        "gone.npz", "data.calibration.source", "also-gone.npz")
    assert "data.eval.source" not in line


def test_cuda_without_cuda(capfd, tmp_path: Path, mlp_bytes: bytes, cfg: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    model = tmp_path / "mlp.onnx"
    model.write_bytes(mlp_bytes)
    line = run_rejected(capfd, model, cfg, tmp_path / "m.onnx", "--device cuda", "--device auto", extra=("--device", "cuda"))
    assert line.startswith("error: ") and "\n" not in line


def test_scientific_notation_is_a_number_in_the_file_and_in_set(tmp_path: Path) -> None:
    # PyYAML alone (YAML 1.1) reads these as strings; the toolchain reads them as numbers.
    import yaml

    from optimize.config import load_config
    from optimize.yaml_source import parse_yaml

    assert yaml.safe_load("lr: 1e-4") == {"lr": "1e-4"}
    assert parse_yaml("a: 1e-4\nb: -5E+3\nc: '1e-4'\n").data == {"a": 1e-4, "b": -5000.0, "c": "1e-4"}
    cfg_file = write_config(tmp_path, "  - type: distill\n    lr: 1e-4\n")
    cfg = load_config(str(cfg_file), ["passes[0].temperature=2e0"])
    assert cfg.passes[0].lr == 1e-4 and isinstance(cfg.passes[0].lr, float)
    assert cfg.passes[0].temperature == 2.0


# ---------------------------------------------------------------- real processes


def test_rejections_in_real_processes(tmp_path: Path, mlp_bytes: bytes) -> None:
    """The same contract from a separate interpreter: exit code, one line, no traceback, no file.
    Started together (each pays the torch import) to keep the test short."""
    import subprocess
    import sys


    cfg = write_config(tmp_path, PIPELINE)
    flipped = tmp_path / "flipped.onnx"
    flipped.write_bytes(_byte_flipped(mlp_bytes))
    marker = tmp_path / "pwned"
    evil = _pt2_with_payload(tmp_path, "sample_inputs", marker)
    cases = {
        "flipped": ([str(flipped)], "not a readable ONNX model"),
        "pickle": ([str(evil)], "--trust-model"),
        "flag": ([str(flipped), "--bogus"], "No such option: --bogus"),
    }
    env = {"PYTHONPATH": child_pythonpath()}
    import os

    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "cli", "run", *args, "-c", str(cfg), "-o", str(tmp_path / "out" / f"{name}.onnx"), "-q"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **env},
        )
        for name, (args, _) in cases.items()
    }
    for name, p in procs.items():
        out, err = p.communicate(timeout=120)
        assert_one_line_error(p.returncode, err, 2, cases[name][1])
        assert out == ""
        assert_nothing_written(tmp_path / "out" / f"{name}.onnx")
    assert not marker.exists()
    assert cli_process("--version").returncode == 0
