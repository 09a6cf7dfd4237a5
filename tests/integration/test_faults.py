"""Faults during a run, through the real command line: a pass that raises, ONNX Runtime failing
to create a session, a full disk or unwritable folder, SIGINT/SIGTERM mid-pass and mid-write, and
numerical faults (NaN/Inf, constant-zero output, parity just outside the limit).

Each failure: the documented exit code (1, 3, 130 or 143), one `error: ...` line with no
traceback, nothing under the final output name (not even a file from an earlier run), no
temporary files left, and a re-run after the fault succeeds.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import child_pythonpath
from reliability_helpers import (
    assert_nothing_written,
    assert_one_line_error,
    cli,
    make_mlp_onnx,
    write_config,
)

from optimize import registry

FACTORY = """
import torch

class Net(torch.nn.Module):
    input_spec = [{"name": "x", "shape": ["batch", 16], "dtype": "float32"}]
    output_names = ["y"]

    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(16, 32)
        self.fc2 = torch.nn.Linear(32, 4)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))

def make():
    torch.manual_seed(0)
    return Net()
"""

# Options that keep each pass quick; every registered pass must appear in the fault test.
PASS_OPTIONS = {"distill": "    epochs: 1\n", "prune": "    sparsity: 0.5\n", "quantize": "    random_calibration: true\n"}
# torch models: the TorchScript exporter is several times faster than dynamo on 2 cores
TORCH_EXTRA = "output:\n  exporter: torchscript\n"


@pytest.fixture
def onnx_model(tmp_path: Path) -> Path:
    return make_mlp_onnx(tmp_path / "in" / "mlp.onnx")


@pytest.fixture
def factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"faults_net_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(FACTORY)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return f"{name}:make"


def _pass_options(name: str) -> str:
    fields = registry.get(name).config_cls.model_fields
    return "".join(line + "\n" for line in PASS_OPTIONS.get(name, "").splitlines() if line.strip().split(":")[0] in fields)


def run_cli(capfd, model: str | Path, cfg: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    return cli(capfd, "run", str(model), "-c", str(cfg), "-o", str(out), "-q", *extra)


# ---------------------------------------------------------------- an exception inside each pass


@pytest.mark.parametrize("name", registry.names())
def test_an_exception_inside_each_pass(capfd, tmp_path: Path, onnx_model: Path, factory: str, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    cls = registry.get(name)
    model: str | Path = onnx_model if "onnx" in cls.accepts else factory
    extra = "" if "onnx" in cls.accepts else TORCH_EXTRA
    cfg = write_config(tmp_path, f"  - type: {name}\n" + _pass_options(name), extra=extra)
    out = tmp_path / "out" / "m.onnx"

    def boom(self, model, ctx):
        raise RuntimeError("injected fault")

    monkeypatch.setattr(cls, "run", boom)
    code, _, err = run_cli(capfd, model, cfg, out)
    line = assert_one_line_error(code, err, 1, "injected fault", name)
    assert "passes[0]" in line
    assert_nothing_written(out)
    report = json.loads(out.with_suffix(".report.json").read_text())
    assert report["status"] == "failed" and "injected fault" in report["error"]

    monkeypatch.undo()
    if "onnx" not in cls.accepts:
        monkeypatch.chdir(tmp_path)
        monkeypatch.syspath_prepend(str(tmp_path))
    code, _, err = run_cli(capfd, model, cfg, out)
    assert code == 0, err
    assert out.is_file()

    # a later failure removes the earlier run's model from the final name
    monkeypatch.setattr(cls, "run", boom)
    code, _, err = run_cli(capfd, model, cfg, out)
    assert code == 1
    assert_nothing_written(out)


# ---------------------------------------------------------------- the runtime and the disk


def test_onnx_runtime_failing_at_session_creation(capfd, tmp_path: Path, onnx_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime as ort

    real = ort.InferenceSession

    class Broken:
        def __init__(self, *a, **k):
            raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : injected\nsecond line")

    cfg = tmp_path / "none.yaml"  # no passes: the first session is the verification's
    cfg.write_text("schema_version: 1\npasses: []\nmeasure: {repeat: 3, warmup: 1, parity_samples: 8}\n")
    out = tmp_path / "m.onnx"
    monkeypatch.setattr(ort, "InferenceSession", Broken)
    code, _, err = run_cli(capfd, onnx_model, cfg, out)
    assert_one_line_error(code, err, 1, "ONNX Runtime cannot load the model", "injected")
    assert_nothing_written(out)
    monkeypatch.setattr(ort, "InferenceSession", real)
    code, _, err = run_cli(capfd, onnx_model, cfg, out)
    assert code == 0, err


def test_disk_full_while_writing(capfd, tmp_path: Path, onnx_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC halfway through writing the model: exit 1 with the reason, the half-written
    temporary file removed, the previous output gone from the final name."""
    from optimize import onnx_io

    cfg = write_config(tmp_path, "  - type: graph\n")
    out = tmp_path / "out" / "m.onnx"
    assert run_cli(capfd, onnx_model, cfg, out)[0] == 0  # an earlier good output
    real_fdopen = os.fdopen

    class Full:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, data):
            self.fh.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(onnx_io.os, "fdopen", lambda fd, mode="r", *a, **k: Full(real_fdopen(fd, mode, *a, **k)))
    code, _, err = run_cli(capfd, onnx_model, cfg, out)
    assert_one_line_error(code, err, 1, f"cannot write the outputs in {out.parent}", "No space left on device", "errno 28")
    assert_nothing_written(out)
    monkeypatch.setattr(onnx_io.os, "fdopen", real_fdopen)
    assert run_cli(capfd, onnx_model, cfg, out)[0] == 0
    assert out.is_file()


def test_read_only_output_folder(capfd, tmp_path: Path, onnx_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """EACCES creating the temporary file beside the target (what a read-only folder gives; root
    ignores file modes, so the error is injected where the operating system would raise it)."""
    import tempfile

    from optimize import onnx_io

    cfg = write_config(tmp_path, "  - type: graph\n")
    out = tmp_path / "ro" / "m.onnx"
    out.parent.mkdir()
    real = tempfile.mkstemp

    def denied(*a, dir=None, **k):
        if dir is not None and Path(dir) == out.parent:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dir))
        return real(*a, dir=dir, **k)

    monkeypatch.setattr(onnx_io.tempfile, "mkstemp", denied)
    code, _, err = run_cli(capfd, onnx_model, cfg, out)
    assert_one_line_error(code, err, 1, "cannot write the outputs", "Permission denied")
    assert_nothing_written(out)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores folder permissions")
def test_really_read_only_output_folder(capfd, tmp_path: Path, onnx_model: Path) -> None:
    cfg = write_config(tmp_path, "  - type: graph\n")
    out = tmp_path / "ro" / "m.onnx"
    out.parent.mkdir()
    out.parent.chmod(0o555)
    try:
        code, _, err = run_cli(capfd, onnx_model, cfg, out)
        assert_one_line_error(code, err, 1, "Permission denied")
        assert_nothing_written(out)
    finally:
        out.parent.chmod(0o755)


# ---------------------------------------------------------------- signals


SLOW_PASS = """
import signal, sys, time
from pathlib import Path
from passes import graph

# a test session started in the background (nohup, `&`) hands its children SIGINT ignored: this
# process stands for a command run from a terminal, where Ctrl-C raises KeyboardInterrupt
signal.signal(signal.SIGINT, signal.default_int_handler)

def slow(self, model, ctx):
    Path(sys.argv[1]).write_text(str(ctx.work_dir))
    time.sleep(120)

graph.GraphPass.run = slow
from cli.app import main
main(sys.argv[2:])
"""


def _name_pattern(name: str) -> str:
    return re.sub(r"\d+", "#", name)


def _environment_leftovers(tmp_path: Path, env: dict[str, str]) -> set[str]:
    """Names (digits as #) of what any process importing the same runtimes leaves in $TMPDIR: the
    environment's, not a run's (onnxruntime 1.32 writes $TMPDIR/.ses on import; one GPU server's
    image writes an empty mat-debug-<pid>.log for every process)."""
    probe = tmp_path / "probe_tmp"
    probe.mkdir()
    subprocess.run([sys.executable, "-c", "import numpy, onnx, onnxruntime, cli.app"],
                   env={**env, "TMPDIR": str(probe)}, check=True, timeout=120)
    return {_name_pattern(p.name) for p in probe.iterdir()}


@pytest.mark.parametrize("sig, code, line", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated (SIGTERM)")])
def test_signal_mid_pass(capfd, tmp_path: Path, onnx_model: Path, sig: int, code: int, line: str) -> None:
    cfg = write_config(tmp_path, "  - type: graph\n")
    out = tmp_path / "out" / "m.onnx"
    out.parent.mkdir()
    out.write_bytes(b"an earlier run's model")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    started = tmp_path / "started"
    script = tmp_path / "slow_pass.py"
    script.write_text(SLOW_PASS)
    env = {**os.environ, "PYTHONPATH": child_pythonpath(), "TMPDIR": str(tmp)}
    p = subprocess.Popen(
        [sys.executable, str(script), str(started), "run", str(onnx_model), "-c", str(cfg), "-o", str(out), "-q"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        deadline = time.monotonic() + 90
        while not started.exists():
            assert p.poll() is None, p.communicate()
            assert time.monotonic() < deadline, "the pass never started"
            time.sleep(0.05)
        work_dir = Path(started.read_text())
        assert work_dir.is_dir() and work_dir.parent == tmp
        p.send_signal(sig)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == code, err
    assert "Traceback" not in err
    assert [ln for ln in err.splitlines() if ln.strip()][-1] == line
    assert_nothing_written(out)
    assert not work_dir.exists(), "the temporary work folder was left behind"
    environment = _environment_leftovers(tmp_path, env)
    assert [p for p in tmp.iterdir() if _name_pattern(p.name) not in environment] == []
    # a re-run succeeds
    assert run_cli(capfd, onnx_model, cfg, out)[0] == 0
    assert out.is_file()


@pytest.mark.parametrize("exc", [KeyboardInterrupt, "Terminated"])
def test_interrupt_mid_write_leaves_the_previous_file_and_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exc) -> None:
    from optimize import onnx_io
    from optimize.errors import Terminated

    err_cls = Terminated if exc == "Terminated" else exc
    target = tmp_path / "m.onnx"
    target.write_bytes(b"previous")
    real_fdopen = os.fdopen

    class Interrupted:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.fh.close()

        def write(self, data):
            self.fh.write(data[:10])
            raise err_cls()

    monkeypatch.setattr(onnx_io.os, "fdopen", lambda fd, mode="r", *a, **k: Interrupted(real_fdopen(fd, mode, *a, **k)))
    with pytest.raises(err_cls):
        onnx_io.write_bytes_atomic(b"x" * 1000, target)
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_sigterm_maps_to_143_in_the_error_map() -> None:
    from cli.app import print_error
    from optimize.errors import Terminated

    assert print_error(Terminated()) == 143
    assert print_error(KeyboardInterrupt()) == 130


# ---------------------------------------------------------------- numerical faults


def _poison_graph(monkeypatch: pytest.MonkeyPatch, value: float, last_only: bool = False) -> None:
    """Make the graph pass write a model whose weights are all `value` (NaN, Inf or 0)."""
    from optimize.pass_api import PassResult
    from passes import graph

    def poison(self, model, ctx):
        m = onnx.load(str(model.onnx_path))
        inits = list(m.graph.initializer)
        for init in inits[-2:] if last_only else inits:
            arr = onnx.numpy_helper.to_array(init).copy()
            arr[...] = value
            init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
        path = ctx.step_dir("graph") / "model.onnx"
        onnx.save(m, str(path))
        return PassResult(model.replace(onnx_path=path))

    monkeypatch.setattr(graph.GraphPass, "run", poison)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_outputs_exit_3_never_ok(capfd, tmp_path: Path, onnx_model: Path, monkeypatch: pytest.MonkeyPatch, value: float) -> None:
    _poison_graph(monkeypatch, value)
    cfg = write_config(tmp_path, "  - type: graph\n")  # no gates configured: finite_outputs is built in
    out = tmp_path / "m.onnx"
    code, stdout, err = run_cli(capfd, onnx_model, cfg, out, "--json")
    assert code == 3, err
    assert "Traceback" not in err
    assert any("finite_outputs" in ln for ln in err.splitlines())
    report = json.loads(stdout)
    assert report["status"] == "gate_failed"
    assert report["metrics"]["parity"]["value"] is None
    assert not out.exists() and (tmp_path / "m.rejected.onnx").is_file()


def test_constant_zero_output_fails_a_cosine_gate(capfd, tmp_path: Path, onnx_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _poison_graph(monkeypatch, 0.0, last_only=True)  # last Gemm's weight and bias: output ≡ 0
    cfg = write_config(tmp_path, "  - type: graph\n", extra="gates:\n  min_parity_cosine: 0.5\n")
    out = tmp_path / "m.onnx"
    code, stdout, err = run_cli(capfd, onnx_model, cfg, out, "--json")
    assert code == 3, err
    report = json.loads(stdout)
    assert report["metrics"]["parity"]["value"] == 0.0
    gate = next(g for g in report["gates"] if g["name"] == "min_parity_cosine")
    assert not gate["passed"]
    assert not out.exists()


def test_parity_just_outside_the_limit_fails_and_just_inside_passes(capfd, tmp_path: Path, onnx_model: Path) -> None:
    # prune, not quantize: the quantizer may choose its variant by the parity gate
    passes = "  - type: prune\n    sparsity: 0.3\n"
    out = tmp_path / "m.onnx"
    code, stdout, err = run_cli(capfd, onnx_model, write_config(tmp_path, passes), out, "--json")
    assert code == 0, err
    measured = json.loads(stdout)["metrics"]["parity"]["value"]
    assert 0.5 < measured < 1.0
    above = write_config(tmp_path, passes, extra=f"gates:\n  min_parity_cosine: {np.nextafter(measured, 2):.17g}\n", name="above.yaml")
    code, stdout, err = run_cli(capfd, onnx_model, above, out, "--json")
    assert code == 3
    assert json.loads(stdout)["metrics"]["parity"]["value"] == measured  # same seed, same number
    at = write_config(tmp_path, passes, extra=f"gates:\n  min_parity_cosine: {measured:.17g}\n", name="at.yaml")
    assert run_cli(capfd, onnx_model, at, out)[0] == 0
