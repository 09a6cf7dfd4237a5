"""Layering and start-up cost: only cli/ imports typer or rich; the CLI starts without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
import time

from cli_helpers import ROOT

UI_MODULES = {"typer", "rich", "click"}


def _imports(path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0], node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module.split(".")[0], node.lineno


def test_only_cli_imports_typer_or_rich():
    offenders = []
    for package in ("optimize", "passes"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for module, line in _imports(path):
                if module in UI_MODULES:
                    offenders.append(f"{path.relative_to(ROOT)}:{line}: imports {module}")
    assert not offenders, "\n".join(offenders)


def test_cli_does_import_them():
    found = {m for p in (ROOT / "cli").rglob("*.py") for m, _ in _imports(p)}
    assert {"typer", "rich"} <= found


HEAVY = ("torch", "onnx", "onnxruntime", "sklearn", "onnxscript")


def test_import_cli_app_is_light():
    code = (
        "import sys, cli.app\n"
        f"heavy = [m for m in {HEAVY + ('numpy', 'yaml', 'pydantic', 'rich')!r} if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr


def test_light_commands_do_not_import_torch():
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from cli.app import app\n"
        "for args in (['--help'], ['passes'], ['passes', 'distill'], ['schema']):\n"
        "    r = CliRunner().invoke(app, args)\n"
        "    assert r.exit_code == 0, (args, r.stderr)\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr


def test_python_m_cli_help_is_fast():
    cmd = [sys.executable, "-m", "cli", "--help"]
    subprocess.run(cmd, cwd=ROOT, capture_output=True, timeout=60)  # warm the bytecode cache
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - t0
    assert p.returncode == 0, p.stderr
    assert "run" in p.stdout and "validate" in p.stdout
    assert p.stderr == ""
    assert elapsed < 2.0, f"optimize --help took {elapsed:.2f}s"  # ~0.25s here; loose for slow CI


def test_usage_error_exit_2_in_a_real_process():
    p = subprocess.run([sys.executable, "-m", "cli", "run", "--nope"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert p.stdout == ""
    assert "--nope" in p.stderr
