"""Helpers for the reliability tests: drive the real command line (in-process through
`cli.app.main`, or as a subprocess) and check the contract for rejected or failed runs.

Not a conftest.py (tests import their conftest by module name).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import child_pythonpath

FAST = "measure: {repeat: 3, warmup: 1, parity_samples: 8}\n"


def cli(capfd: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run `optimize ARGS` in this process; return (exit code, stdout, stderr)."""
    from cli.app import main

    capfd.readouterr()
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    out, err = capfd.readouterr()
    code = info.value.code
    return (code if isinstance(code, int) else (0 if code is None else 1)), out, err


def cli_process(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run `python -m cli ARGS` as a real process (its own interpreter, exit code, streams)."""
    full_env = {**os.environ, "PYTHONPATH": child_pythonpath(), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "cli", *[str(a) for a in args]],
        capture_output=True, text=True, cwd=cwd, env=full_env, timeout=timeout,
    )


def error_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.strip()]


def assert_one_line_error(code: int, err: str, expected_code: int, *fragments: str) -> str:
    """The contract for a rejected run: the exit code, exactly one stderr line `error: ...`
    naming what went wrong, and no traceback."""
    lines = error_lines(err)
    assert code == expected_code, f"exit {code}, stderr: {err}"
    assert "Traceback" not in err, err
    assert len(lines) == 1, f"expected one line on stderr, got: {lines}"
    assert lines[0].startswith("error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]


def assert_nothing_written(output: Path) -> None:
    """Nothing under the final name, no external data beside it, no temporary leftovers."""
    assert not output.exists(), f"{output} exists after a failed run"
    assert not (output.parent / (output.name + ".data")).exists()
    if output.parent.is_dir():
        leftovers = [p.name for p in output.parent.iterdir() if p.name.startswith(f".{output.name}.")]
        assert not leftovers, f"temporary files left: {leftovers}"


def make_mlp_onnx(path: Path, seed: int = 0) -> Path:
    """Linear(16,32) → ReLU → Linear(32,4) as ONNX (TorchScript exporter), input x[batch,16]."""
    import torch

    torch.manual_seed(seed)
    m = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        m, (torch.randn(2, 16),), str(path), input_names=["x"], output_names=["y"],
        dynamic_axes={"x": {0: "b"}, "y": {0: "b"}}, dynamo=False,
    )
    return path


def write_config(tmp_path: Path, passes: str, extra: str = "", name: str = "p.yaml") -> Path:
    p = tmp_path / name
    p.write_text("schema_version: 1\npasses:\n" + passes + extra + FAST)
    return p
