"""The Makefile pattern rule documented in the README (`%.opt.onnx: %.onnx pipeline.yaml`) works
with make's own up-to-date logic: a failed run (here a quality gate, exit 3) leaves nothing under
the target's name, so the next `make` runs it again; a successful run is up to date afterwards and
is redone when the pipeline changes; `make -j2` builds several models side by side."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_models import export_onnx, make_mlp

ROOT = Path(__file__).resolve().parent.parent

# The README's rule, verbatim apart from OPTIMIZE (the test runs `python -m cli`, i.e. `optimize`).
MAKEFILE = """\
OPTIMIZE ?= optimize
PIPELINE ?= pipeline.yaml

%.opt.onnx: %.onnx $(PIPELINE)
\t$(OPTIMIZE) run $< -c $(PIPELINE) -o $@ --progress none -q

all: a.opt.onnx b.opt.onnx
.PHONY: all
"""

FAST = "measure: {repeat: 3, warmup: 1, parity_samples: 8, single_thread: false}\n"


def _make(d: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, GITHUB_ACTIONS="false")
    return subprocess.run(["make", "--no-print-directory", f"OPTIMIZE={sys.executable} -m cli", *args], cwd=d,
                          capture_output=True, text=True, timeout=300, env=env)


def test_readme_documents_this_rule():
    readme = (ROOT / "README.md").read_text()
    rule = MAKEFILE.split("\n\nall:")[0]
    assert rule in readme, "README's Makefile rule and the tested one differ"


# Three `optimize run` processes (each imports torch): 15–30 s on 2 cores, so `slow` (`make test-all`).
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_pattern_rule_reruns_after_a_failure_and_is_then_up_to_date(tmp_path):
    d = tmp_path
    (d / "Makefile").write_text(MAKEFILE)
    export_onnx(make_mlp(0), d / "a.onnx")
    export_onnx(make_mlp(1), d / "b.onnx")
    pipeline = d / "pipeline.yaml"
    pipeline.write_text("schema_version: 1\npasses: []\n" + FAST + "gates:\n  min_sparsity: 0.99\n")

    # 1. the gate fails: make fails, nothing under the target name, the rejected model is kept
    r = _make(d, "a.opt.onnx")
    assert r.returncode != 0
    assert "gate min_sparsity" in r.stderr and "FAILED" in r.stderr
    assert not (d / "a.opt.onnx").exists()
    assert (d / "a.opt.rejected.onnx").is_file()
    assert _make(d, "-q", "a.opt.onnx").returncode == 1, "make must consider the target out of date"

    # 2. fix the pipeline: the same command now builds it (and b, in parallel)
    pipeline.write_text("schema_version: 1\npasses: []\n" + FAST)
    r = _make(d, "-j2", "all")
    assert r.returncode == 0, r.stderr
    assert (d / "a.opt.onnx").is_file() and (d / "b.opt.onnx").is_file()
    assert (d / "a.opt.report.json").is_file()

    # 3. up to date now; changing the pipeline makes it out of date again
    assert _make(d, "-q", "all").returncode == 0
    os.utime(pipeline, (pipeline.stat().st_atime, (d / "a.opt.onnx").stat().st_mtime + 10))
    assert _make(d, "-q", "a.opt.onnx").returncode == 1
