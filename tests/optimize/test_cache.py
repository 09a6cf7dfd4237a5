"""The pass cache (optimize/cache.py): content-keyed ONNX pass outputs that re-runs and
`optimize run --resume` reuse, and every way an entry must miss instead of being reused.

The suite runs with OPTIMIZE_PASS_CACHE=off (tests/conftest.py); these tests turn the cache on with
--cache-dir.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest
from helpers import child_pythonpath
from reliability_helpers import cli, make_mlp_onnx, write_config

PIPE = "  - type: prune\n    sparsity: 0.5\n  - type: quantize\n    mode: dynamic\n"


def run(capfd, model: Path, cfg: Path, out: Path, cache: Path | None, *extra: str) -> dict:
    args = ["run", str(model), "-c", str(cfg), "-o", str(out), "-q", "--json", *extra]
    if cache is not None:
        args += ["--cache-dir", str(cache)]
    code, stdout, err = cli(capfd, *args)
    assert code == 0, err
    return json.loads(stdout)


def cached(report: dict) -> dict[str, bool]:
    return {s["type"]: s["cached"] for s in report["steps"]}


def entries(cache: Path) -> list[Path]:
    return sorted(p.parent for p in cache.glob("??/*/entry.json"))


@pytest.fixture
def setup(tmp_path: Path):
    model = make_mlp_onnx(tmp_path / "in" / "m.onnx")
    return model, write_config(tmp_path, PIPE), tmp_path / "cache"


def test_rerun_reuses_every_pass_and_gives_the_same_bytes(capfd, tmp_path: Path, setup, monkeypatch) -> None:
    model, cfg, cache = setup
    first = run(capfd, model, cfg, tmp_path / "a.onnx", cache)
    assert cached(first) == {"prune": False, "quantize": False}
    assert len(entries(cache)) == 2
    assert not [p for p in cache.iterdir() if p.name.startswith(".")], "temporary folder left in the cache"

    from passes.prune import PrunePass
    from passes.quantize import QuantizePass

    def boom(*a, **k):
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr(PrunePass, "run", boom)
    monkeypatch.setattr(QuantizePass, "run", boom)
    second = run(capfd, model, cfg, tmp_path / "b.onnx", cache)
    assert cached(second) == {"prune": True, "quantize": True}
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    assert [s["metrics"] for s in second["steps"]] == [s["metrics"] for s in first["steps"]]
    assert second["metrics"]["sparsity"] == first["metrics"]["sparsity"]


def test_no_cache_neither_reads_nor_writes(capfd, tmp_path: Path, setup) -> None:
    model, cfg, cache = setup
    run(capfd, model, cfg, tmp_path / "a.onnx", cache)
    report = run(capfd, model, cfg, tmp_path / "b.onnx", cache, "--no-cache")
    assert cached(report) == {"prune": False, "quantize": False}
    other = tmp_path / "other"
    run(capfd, model, cfg, tmp_path / "c.onnx", other, "--no-cache")
    assert not other.exists()


def test_changed_pass_config_misses(capfd, tmp_path: Path, setup) -> None:
    model, cfg, cache = setup
    run(capfd, model, cfg, tmp_path / "a.onnx", cache)
    cfg2 = write_config(tmp_path, PIPE.replace("0.5", "0.6"), name="p2.yaml")
    report = run(capfd, model, cfg2, tmp_path / "b.onnx", cache)
    assert cached(report) == {"prune": False, "quantize": False}  # quantize's input changed too


def test_changed_library_version_misses(capfd, tmp_path: Path, setup, monkeypatch) -> None:
    model, cfg, cache = setup
    run(capfd, model, cfg, tmp_path / "a.onnx", cache)
    from optimize import hardware

    real = hardware.versions()
    monkeypatch.setattr(hardware, "versions", lambda: {**real, "onnxruntime": "0.0.1"})
    report = run(capfd, model, cfg, tmp_path / "b.onnx", cache)
    assert cached(report) == {"prune": False, "quantize": False}
    assert len(entries(cache)) == 4
    monkeypatch.setattr("optimize.pipeline.__version__", "999.0")  # the tool's own version counts too
    assert cached(run(capfd, model, cfg, tmp_path / "c.onnx", cache)) == {"prune": False, "quantize": False}


def test_changed_pass_code_misses_only_that_pass(capfd, tmp_path: Path, setup, monkeypatch) -> None:
    """An edited install with the same version number must not reuse what the old code made."""
    model, cfg, cache = setup
    run(capfd, model, cfg, tmp_path / "a.onnx", cache)
    from optimize import cache as cache_mod

    real = cache_mod._code
    monkeypatch.setattr(cache_mod, "_code", lambda p: {**real(p), "pass": "edited"} if p.name == "quantize" else real(p))
    assert cached(run(capfd, model, cfg, tmp_path / "b.onnx", cache)) == {"prune": True, "quantize": False}


def test_code_digest_follows_every_py_file(tmp_path: Path) -> None:
    from optimize.cache import code_digest

    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    (tmp_path / "pkg" / "sub" / "b.py").write_text("y = 2\n")
    (tmp_path / "pkg" / "notes.txt").write_text("not code")
    first = code_digest.__wrapped__(str(tmp_path / "pkg"))
    (tmp_path / "pkg" / "notes.txt").write_text("still not code")
    assert code_digest.__wrapped__(str(tmp_path / "pkg")) == first
    (tmp_path / "pkg" / "sub" / "b.py").write_text("y = 3\n")
    assert code_digest.__wrapped__(str(tmp_path / "pkg")) != first


def test_changed_external_data_misses(capfd, tmp_path: Path) -> None:
    """The key covers the external data file, not just the .onnx that points at it."""
    src = make_mlp_onnx(tmp_path / "in" / "m.onnx")
    model = onnx.load(str(src))
    onnx.save_model(model, str(src), save_as_external_data=True, location="m.onnx.data", size_threshold=0)
    data = tmp_path / "in" / "m.onnx.data"
    cfg, cache = write_config(tmp_path, PIPE), tmp_path / "cache"
    run(capfd, src, cfg, tmp_path / "a.onnx", cache)
    assert cached(run(capfd, src, cfg, tmp_path / "b.onnx", cache))["prune"] is True
    raw = bytearray(data.read_bytes())
    raw[8] ^= 0x01  # one weight's low bit: same .onnx file, different content
    data.write_bytes(bytes(raw))
    assert cached(run(capfd, src, cfg, tmp_path / "c.onnx", cache)) == {"prune": False, "quantize": False}


@pytest.mark.parametrize("what", ["model", "entry_document", "truncated"])
def test_tampered_entry_misses_and_is_recomputed(capfd, tmp_path: Path, setup, what: str) -> None:
    model, cfg, cache = setup
    run(capfd, model, cfg, tmp_path / "a.onnx", cache)
    prune_entry = next(e for e in entries(cache) if json.loads((e / "entry.json").read_text())["doc"]["pass"] == "prune")
    if what == "model":
        f = prune_entry / "model.onnx"
        raw = bytearray(f.read_bytes())
        raw[-5] ^= 0x01
        f.write_bytes(bytes(raw))
    elif what == "entry_document":
        meta = json.loads((prune_entry / "entry.json").read_text())
        meta["metrics"]["sparsity"] = 0.99
        (prune_entry / "entry.json").write_text(json.dumps(meta))
    else:
        f = prune_entry / "model.onnx"
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    report = run(capfd, model, cfg, tmp_path / "b.onnx", cache)
    assert cached(report) == {"prune": False, "quantize": True}  # recomputed prune: same bytes, so quantize hits
    assert report["steps"][0]["metrics"]["sparsity"] != 0.99
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    assert cached(run(capfd, model, cfg, tmp_path / "c.onnx", cache)) == {"prune": True, "quantize": True}  # repaired


def test_a_failed_store_leaves_no_partial_entry_and_the_run_succeeds(capfd, tmp_path: Path, setup, monkeypatch) -> None:
    model, cfg, cache = setup
    import shutil

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shutil, "copyfile", full)
    report = run(capfd, model, cfg, tmp_path / "a.onnx", cache)
    assert cached(report) == {"prune": False, "quantize": False}
    assert entries(cache) == [] and [p.name for p in cache.iterdir() if p.name.startswith(".")] == []


def test_format_auto_and_torch_steps_are_not_cached(capfd, tmp_path: Path) -> None:
    from optimize import registry
    from optimize.cache import cacheable

    def make(name: str, **options):  # a pass object as the planner builds it
        cls = registry.get(name)
        return cls(cls.config_cls(**options))

    assert cacheable(make("quantize", format="auto"), "onnx", "onnx", False) is not None
    assert cacheable(make("quantize", format="qdq"), "onnx", "onnx", False) is None
    assert cacheable(make("distill"), "torch", "torch", False) is not None
    assert cacheable(make("quantize", format="qdq"), "onnx", "onnx", True) is not None  # materialize after QAT
    assert cacheable(make("prune"), "onnx", "onnx", False) is None
    assert cacheable(make("export"), "onnx", "onnx", False) is not None  # not declared cacheable


def test_default_folder_and_env(monkeypatch, tmp_path: Path) -> None:
    from types import SimpleNamespace

    from optimize import cache

    out = SimpleNamespace(output=SimpleNamespace(cache=True, cache_dir=None))
    monkeypatch.delenv("OPTIMIZE_PASS_CACHE", raising=False)
    monkeypatch.setenv("OPTIMIZE_CACHE", str(tmp_path / "oc"))
    assert cache.for_run(out).root == tmp_path / "oc" / "passes"
    monkeypatch.delenv("OPTIMIZE_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache.for_run(out).root == tmp_path / "home" / ".cache" / "optimize" / "passes"
    monkeypatch.setenv("OPTIMIZE_PASS_CACHE", "off")
    assert cache.for_run(out) is None
    out.output.cache_dir = str(tmp_path / "explicit")  # an explicit folder wins over the env
    assert cache.for_run(out).root == tmp_path / "explicit"
    out.output.cache = False
    assert cache.for_run(out) is None


def test_a_store_racing_another_keeps_the_first_entry(tmp_path: Path, setup) -> None:
    """The in-process core of the concurrent-runs promise (fast): the second writer of a key finds
    the first one's entry already renamed into place, drops its own copy, and both lookups hit."""
    from optimize.cache import PassCache

    model, _, cache_dir = setup
    cache = PassCache(cache_dir)
    assert cache.store("ab" * 32, {"x": 1}, model, {"m": 1}, ["first"]) is True
    assert cache.store("ab" * 32, {"x": 1}, model, {"m": 2}, ["second"]) is False
    hit = cache.lookup("ab" * 32, tmp_path / "into")
    assert hit is not None and hit.notes == ["first"] and hit.model_path.read_bytes() == model.read_bytes()
    assert [p.name for p in cache_dir.iterdir() if p.name.startswith(".")] == []


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": child_pythonpath()}
    env.pop("OPTIMIZE_PASS_CACHE", None)
    return env


@pytest.mark.slow  # two full runs in fresh interpreters: ~16 s on 2 cores
def test_two_concurrent_runs_sharing_a_cache_both_succeed(tmp_path: Path, setup) -> None:
    model, cfg, cache = setup
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "cli", "run", str(model), "-c", str(cfg), "-o", str(tmp_path / f"o{i}.onnx"),
             "-q", "--json", "--cache-dir", str(cache)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
        )
        for i in range(2)
    ]
    results = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err
        assert json.loads(out)["status"] == "ok"
    assert (tmp_path / "o0.onnx").read_bytes() == (tmp_path / "o1.onnx").read_bytes()
    assert len(entries(cache)) == 2
    assert not [p for p in cache.rglob(".*")], "temporary or trash folders left"


SLOW_QUANTIZE = """
import sys, time
from passes.quantize import QuantizePass
def stall(self, model, ctx):
    time.sleep(120)
QuantizePass.run = stall
from cli.app import main
main(sys.argv[1:])
"""


@pytest.mark.slow  # three runs in fresh interpreters: ~20 s on 2 cores
def test_resume_after_a_kill_continues_from_the_cached_passes(tmp_path: Path, setup) -> None:
    """SIGKILL while quantize runs (prune already stored); `optimize run --resume` reuses prune, runs
    quantize, and writes the same model as an uncached run."""
    model, cfg, cache = setup
    out = tmp_path / "o.onnx"
    args = ["run", str(model), "-c", str(cfg), "-o", str(out), "-q", "--json", "--cache-dir", str(cache)]
    proc = subprocess.Popen([sys.executable, "-c", SLOW_QUANTIZE, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env())
    try:
        deadline = time.time() + 120
        while not entries(cache) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert entries(cache), f"prune was never stored: {proc.poll()} {proc.stderr.read() if proc.poll() is not None else ''}"
        time.sleep(0.5)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()

    resumed = subprocess.run([sys.executable, "-m", "cli", *args, "--resume"], capture_output=True, text=True,
                             env=_env(), timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert cached(json.loads(resumed.stdout)) == {"prune": True, "quantize": False}
    fresh = subprocess.run(
        [sys.executable, "-m", "cli", "run", str(model), "-c", str(cfg), "-o", str(tmp_path / "f.onnx"), "-q",
         "--no-cache"], capture_output=True, text=True, env=_env(), timeout=300,
    )
    assert fresh.returncode == 0, fresh.stderr
    assert out.read_bytes() == (tmp_path / "f.onnx").read_bytes()


def test_size_limit_evicts_the_least_recently_used_entries(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from optimize import cache as cache_mod

    model = make_mlp_onnx(tmp_path / "in" / "m.onnx")
    one = cache_mod.PassCache(tmp_path / "c")  # no limit: learn one entry's size
    assert one.store("a" * 64, {}, model, {}, [])
    size = one.entries()[0][1]
    cfg = SimpleNamespace(output=SimpleNamespace(cache=True, cache_dir=str(tmp_path / "c"), cache_max_gb=2.5 * size / 1e9))
    limited = cache_mod.for_run(cfg)
    assert limited is not None and limited.max_bytes == int(2.5 * size)
    assert limited.store("b" * 64, {}, model, {}, [])
    # "a" is older than "b", but a hit makes it the most recently used
    for when, d in enumerate(entries(tmp_path / "c"), start=1):  # a, then b: explicit, distinct times
        os.utime(d / "entry.json", (when, when))
    assert limited.lookup("a" * 64, tmp_path / "into") is not None
    assert limited.store("c" * 64, {}, model, {}, [])  # three entries do not fit in 2.5: "b" goes
    assert sorted(p.name[:1] for p in entries(tmp_path / "c")) == ["a", "c"]
    assert sum(s for _, s, _ in limited.entries()) <= limited.max_bytes


def test_settings_a_pass_reads_outside_its_config_are_in_its_key(capfd, tmp_path: Path) -> None:
    """per_token auto measures token outliers in batches of measure.batch: another batch may choose
    other MatMuls, so it must not reuse the entry."""
    model = make_mlp_onnx(tmp_path / "in" / "m.onnx")
    cache = tmp_path / "cache"
    step = "  - type: quantize\n    mode: dynamic\n    per_token: auto\n"

    def with_batch(batch: int) -> Path:
        p = tmp_path / f"b{batch}.yaml"
        p.write_text(f"schema_version: 1\npasses:\n{step}measure: {{repeat: 3, warmup: 1, parity_samples: 8, batch: {batch}}}\n")
        return p

    run(capfd, model, with_batch(1), tmp_path / "a.onnx", cache)
    assert cached(run(capfd, model, with_batch(2), tmp_path / "b.onnx", cache)) == {"quantize": False}
    assert cached(run(capfd, model, with_batch(2), tmp_path / "c.onnx", cache)) == {"quantize": True}
