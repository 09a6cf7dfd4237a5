"""`optimize batch MANIFEST -j N` (optimize/batch.py): manifest validation with file:line errors,
the exit-code order, the scheduler (N at a time, one process per job), Ctrl-C, and — `slow` — real
`optimize run` jobs through the command line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers import child_pythonpath

from optimize.batch import Job, combine_exit_codes, load_manifest, run_batch, summary_lines
from optimize.errors import ConfigError

PIPELINE = "schema_version: 1\npasses: []\nmeasure: {repeat: 3, warmup: 1, parity_samples: 8, single_thread: false}\n"


def _files(d: Path, manifest: str) -> Path:
    (d / "a.onnx").write_bytes(b"not read by load_manifest")
    (d / "b.onnx").write_bytes(b"x")
    (d / "p.yaml").write_text(PIPELINE)
    m = d / "m.yaml"
    m.write_text(textwrap.dedent(manifest))
    return m


@pytest.mark.parametrize(
    "codes, expected",
    [([], 0), ([0, 0], 0), ([0, 3], 3), ([3, 1], 1), ([1, 2, 3], 2), ([2, 130, 1], 130), ([3, 143], 143),
     ([130, 143], 130), ([0, -9], 1), ([0, 7], 1), ([3, -15], 1)],
)
def test_exit_code_order(codes, expected):
    assert combine_exit_codes(codes) == expected


def test_manifest_resolves_paths_from_its_folder(tmp_path, monkeypatch):
    m = _files(tmp_path, """\
        jobs:
          - model: a.onnx
            config: p.yaml
          - model: b.onnx
            config: p.yaml
            output: out/b.int8.onnx
            set: [hardware.threads=1]
            name: bee
        """)
    monkeypatch.chdir("/")
    jobs = load_manifest(m)
    assert [(j.name, j.model, j.output, j.overrides, j.workdir) for j in jobs] == [
        ("a", str(tmp_path / "a.onnx"), str(tmp_path / "a.opt.onnx"), [], str(tmp_path)),
        ("bee", str(tmp_path / "b.onnx"), str(tmp_path / "out" / "b.int8.onnx"), ["hardware.threads=1"], str(tmp_path)),
    ]


@pytest.mark.parametrize(
    "manifest, where, words",
    [
        ("jobs:\n  - model: a.onnx\n    confg: p.yaml\n", ":3: jobs[0].confg:", "did you mean 'config'"),
        ("jobs: []\n", ":1: jobs:", "at least one job"),
        ("job:\n  - model: a.onnx\n", ":1: job:", "did you mean 'jobs'"),
        ("jobs:\n  - model: a.onnx\n    config: p.yaml\n  - model: nope.onnx\n    config: p.yaml\n",
         ":4: jobs[1].model:", "model not found"),
        ("jobs:\n  - model: a.onnx\n    config: missing.yaml\n", ":3: jobs[0].config:", "config file not found"),
        ("jobs:\n  - model: a.onnx\n    config: p.yaml\n    set: [hardware.thread=2]\n", ":4: jobs[0].set:",
         "did you mean 'threads'"),
        ("jobs:\n  - model: a.onnx\n    config: p.yaml\n    output: x.onnx\n  - model: b.onnx\n    config: p.yaml\n"
         "    output: ./x.onnx\n", ":7: jobs[1].output:", "two jobs would write"),
        ("jobs:\n  - model: a.onnx\n    config: p.yaml\n    output: a.txt\n", ":4: jobs[0].output:", "must end in .onnx"),
        ("jobs:\n  - {model: a.onnx, config: p.yaml}\n  - {model: a.onnx, config: p.yaml}\n", "jobs[1].model:",
         "two jobs would write"),
    ],
)
def test_manifest_errors_point_at_the_line(tmp_path, manifest, where, words):
    m = _files(tmp_path, manifest)
    with pytest.raises(ConfigError) as info:
        load_manifest(m)
    assert info.value.exit_code == 2
    assert str(info.value).startswith(str(m)) and where in str(info.value) and words in str(info.value)


def test_a_bad_job_config_is_reported_at_its_own_file_and_line(tmp_path):
    m = _files(tmp_path, "jobs:\n  - model: a.onnx\n    config: bad.yaml\n")
    (tmp_path / "bad.yaml").write_text("schema_version: 1\npasses:\n  - type: prune\n    sparsity: 2\n")
    with pytest.raises(ConfigError) as info:
        load_manifest(m)
    assert str(info.value).startswith(f"{tmp_path / 'bad.yaml'}:4: passes[0]") and "sparsity" in str(info.value)


# ---------------------------------------------------------------- the scheduler, with stand-in jobs

# A stand-in for `optimize run --json`: records when it ran, prints a report-shaped JSON, exits CODE.
STUB = """\
import json, os, sys, time
name, code, sleep, log = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
with open(log, "a") as fh: fh.write(f"start {name} {time.monotonic()}\\n")
time.sleep(sleep)
with open(log, "a") as fh: fh.write(f"end {name} {time.monotonic()}\\n")
status = {0: "ok", 3: "gate_failed"}.get(code, "failed")
if code != 2:
    print(json.dumps({"status": status, "metrics": {"speedup": {"value": 1.5},
          "accuracy": {"value": 97.0, "inputs": {"drop": 0.25}}},
          "gates": [{"name": "min_speedup", "passed": code != 3}], "files": {"model": name + ".onnx"}}))
if code:
    print("error: something " + name, file=sys.stderr)
sys.exit(code)
"""


def _jobs(tmp_path: Path, n: int) -> list[Job]:
    return [Job(index=i, name=f"j{i}", model=f"m{i}.onnx", config="p.yaml", output=str(tmp_path / f"m{i}.opt.onnx"),
                overrides=[], workdir=str(tmp_path)) for i in range(n)]


def test_runs_n_at_a_time_and_summarizes(tmp_path):
    stub = tmp_path / "stub.py"
    stub.write_text(STUB)
    log = tmp_path / "log.txt"
    codes = {"j0": 0, "j1": 3, "j2": 2}
    jobs = _jobs(tmp_path, 3)
    events: list[tuple[str, str]] = []
    result = run_batch(jobs, parallel=2, argv_for=lambda j: [sys.executable, str(stub), j.name, str(codes[j.name]),
                                                            "0.3", str(log)],
                       on_event=lambda kind, job, res: events.append((kind, job.name)))
    assert [(r.name, r.exit_code, r.status) for r in result.jobs] == [
        ("j0", 0, "ok"), ("j1", 3, "gate_failed"), ("j2", 2, "rejected")]
    assert result.exit_code == 2 and not result.interrupted
    assert result.jobs[1].gates_failed == ["min_speedup"] and result.jobs[0].speedup == 1.5
    assert result.jobs[2].error == "error: something j2"
    # never more than 2 at once
    running = peak = 0
    for line in sorted(log.read_text().splitlines(), key=lambda ln: float(ln.split()[2])):
        running += 1 if line.startswith("start") else -1
        peak = max(peak, running)
    assert peak == 2
    assert sorted(events) == sorted([(k, f"j{i}") for i in range(3) for k in ("start", "done")])
    lines = summary_lines(result)
    assert len(lines) == 4 and "exit 3" in lines[1] and "gate_failed" in lines[1] and "speedup 1.50x" in lines[0]
    assert "accuracy 97.00% (drop +0.25 pts)" in lines[0]
    assert lines[-1] == "3 jobs: 1 ok, 1 gate_failed, 1 rejected; exit 2"
    assert json.loads(json.dumps(result.to_dict()))["exit_code"] == 2


def test_a_job_killed_by_a_signal_fails_the_batch(tmp_path):
    jobs = _jobs(tmp_path, 2)
    argv = {"j0": [sys.executable, "-c", "pass"],
            "j1": [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"]}
    result = run_batch(jobs, argv_for=lambda j: argv[j.name])
    assert [r.status for r in result.jobs] == ["failed", "killed (signal 9)"]  # j0 printed no report
    assert result.exit_code == 1


DRIVER = """\
import signal, sys
from optimize.batch import Job, run_batch
# a test session started in the background (nohup, `&`) hands its children SIGINT ignored, which the
# batch keeps ignored (nohup's meaning): this driver stands for a batch run from a terminal
signal.signal(signal.SIGINT, signal.default_int_handler)
d, stub = sys.argv[1], sys.argv[2]
jobs = [Job(index=i, name=f"j{i}", model="m", config="p", output=f"{d}/o{i}.onnx", overrides=[], workdir=d)
        for i in range(3)]
res = run_batch(jobs, parallel=2, argv_for=lambda j: [sys.executable, stub, j.name, d])
print(res.exit_code, [r.status for r in res.jobs], flush=True)
sys.exit(res.exit_code)
"""

# A long job that, like `optimize run`, cleans up on SIGTERM and exits 143.
LONG = """\
import os, signal, sys, time
name, d = sys.argv[1], sys.argv[2]
def stop(*_):
    open(os.path.join(d, name + ".stopped"), "w").close()
    sys.exit(143)
signal.signal(signal.SIGTERM, stop)
open(os.path.join(d, name + ".started"), "w").close()
time.sleep(60)
"""


def test_ctrl_c_stops_every_job_and_exits_130(tmp_path):
    (tmp_path / "driver.py").write_text(DRIVER)
    (tmp_path / "long.py").write_text(LONG)
    env = dict(os.environ, PYTHONPATH=child_pythonpath())
    p = subprocess.Popen([sys.executable, str(tmp_path / "driver.py"), str(tmp_path), str(tmp_path / "long.py")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 30
    while len(list(tmp_path.glob("*.started"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 130, err
    assert out.strip() == "130 ['interrupted', 'interrupted', 'not started']"
    assert sorted(x.name for x in tmp_path.glob("j*")) == ["j0.started", "j0.stopped", "j1.started", "j1.stopped"]


# ---------------------------------------------------------------- real jobs through the command line


def _model(path: Path, seed: int) -> None:
    from tiny_models import export_onnx, make_mlp

    export_onnx(make_mlp(seed), path)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, GITHUB_ACTIONS="false")
    return subprocess.run([sys.executable, "-m", "cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env=env)


def test_cli_manifest_error_exits_2_and_runs_nothing(tmp_path):
    m = _files(tmp_path, "jobs:\n  - model: a.onnx\n    config: p.yaml\n    outptu: x.onnx\n")
    r = _cli("batch", str(m), cwd=tmp_path)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip() == f"error: {m}:4: jobs[0].outptu: unknown key (did you mean 'output'?)"
    assert not list(tmp_path.glob("*.opt.*"))


# Two `optimize run` processes (each imports torch): ~15 s on 2 cores, so `slow` (`make test-all`).
@pytest.mark.slow
def test_cli_batch_runs_real_jobs_one_failing_a_gate(tmp_path):
    _model(tmp_path / "a.onnx", 0)
    _model(tmp_path / "b.onnx", 1)
    (tmp_path / "p.yaml").write_text(PIPELINE)
    (tmp_path / "gate.yaml").write_text(PIPELINE + "gates: {min_sparsity: 0.99}\n")
    m = tmp_path / "models.yaml"
    m.write_text("jobs:\n  - {model: a.onnx, config: p.yaml, output: out/a.opt.onnx}\n"
                 "  - {model: b.onnx, config: gate.yaml, output: out/b.opt.onnx, set: [hardware.threads=1]}\n")
    r = _cli("batch", str(m), "-j", "2", "--json", cwd=tmp_path)
    assert r.returncode == 3, r.stderr
    assert "warning: -j 2" in r.stderr
    data = json.loads(r.stdout)
    a, b = data["jobs"]
    assert (a["exit_code"], a["status"], b["exit_code"], b["status"]) == (0, "ok", 3, "gate_failed")
    assert b["gates_failed"] == ["min_sparsity"] and isinstance(a["speedup"], float)
    out = tmp_path / "out"
    assert (out / "a.opt.onnx").is_file() and not (out / "b.opt.onnx").exists() and (out / "b.opt.rejected.onnx").is_file()
    report = json.loads((out / "a.opt.report.json").read_text())
    assert report["status"] == "ok" and a["speedup"] == report["metrics"]["speedup"]["value"]
    assert json.loads((out / "b.opt.report.json").read_text())["config"]["hardware"]["threads"] == 1
    assert not list(out.glob(".*.tmp"))

    # Ctrl-C while both run: exit 130, nothing under either final name
    for f in out.iterdir():
        f.unlink()
    # SIG_DFL: a suite started in the background from a script (`cmd &`) passes SIGINT on ignored
    p = subprocess.Popen([sys.executable, "-m", "cli", "batch", str(m), "-j", "2", "-q"], cwd=tmp_path,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(1.5)  # the jobs are still importing or running (one takes ~7 s here)
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 130, stderr
    assert "2 jobs: 2 interrupted; exit 130 (interrupted)" in stdout
    left = sorted(f.name for f in out.iterdir()) if out.exists() else []
    assert left == [], left
