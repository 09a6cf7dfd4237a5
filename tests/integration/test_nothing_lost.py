"""Nothing lost (issue 17): no route by which an output replaces an input, work folders that are the
run's own, console failures that change nothing decided, and configs that run no code unasked.

Every refusal is exit 2 with one `error:` line, before any work, with every input unchanged.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

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

GRAPH = "  - type: graph\n"
FAILING_GATE = "gates:\n  max_size_mb: 0.000001\n"


@pytest.fixture(scope="module")
def mlp_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return make_mlp_onnx(tmp_path_factory.mktemp("mlp") / "mlp.onnx").read_bytes()


@pytest.fixture
def model(tmp_path: Path, mlp_bytes: bytes) -> Path:
    p = tmp_path / "in" / "mlp.onnx"
    p.parent.mkdir()
    p.write_bytes(mlp_bytes)
    return p


def assert_refused(capfd, *args: str | Path, fragments: tuple[str, ...] = ()) -> str:
    code, _, err = cli(capfd, "run", *[str(a) for a in args], "-q")
    return assert_one_line_error(code, err, 2, *fragments)


# ---------------------------------------------------------------- file identity, not path spelling


def test_rejected_model_never_takes_the_inputs_name(capfd, tmp_path: Path, mlp_bytes: bytes) -> None:
    src = tmp_path / "x.rejected.onnx"
    src.write_bytes(mlp_bytes)
    cfg = write_config(tmp_path, GRAPH, FAILING_GATE)
    assert_refused(capfd, src, "-c", cfg, "-o", tmp_path / "x.onnx", fragments=("the rejected model", "x.rejected.onnx"))
    assert src.read_bytes() == mlp_bytes
    assert not (tmp_path / "x.onnx").exists()


def test_rejected_model_replaces_only_a_file_this_tool_wrote(capfd, tmp_path: Path, model: Path) -> None:
    cfg, out = write_config(tmp_path, GRAPH, FAILING_GATE), tmp_path / "o.onnx"
    rejected = tmp_path / "o.rejected.onnx"
    code, _, err = cli(capfd, "run", str(model), "-c", str(cfg), "-o", str(out), "-q")
    assert code == 3 and rejected.is_file(), err
    code, _, err = cli(capfd, "run", str(model), "-c", str(cfg), "-o", str(out), "-q")  # a re-run replaces its own
    assert code == 3, err
    rejected.write_bytes(b"the user's own file, not a model")  # no report of this tool names these bytes
    assert_refused(capfd, model, "-c", cfg, "-o", out, fragments=("o.rejected.onnx", "no report of this tool"))
    assert rejected.read_bytes() == b"the user's own file, not a model"


def test_output_named_like_the_inputs_external_data(capfd, tmp_path: Path, mlp_bytes: bytes) -> None:
    folder = tmp_path / "dir"
    folder.mkdir()
    m = onnx.load_from_string(mlp_bytes)
    onnx.save_model(m, str(folder / "ext.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="w.onnx", size_threshold=0)
    weights = (folder / "w.onnx").read_bytes()
    assert_refused(capfd, folder / "ext.onnx", "-c", write_config(tmp_path, GRAPH), "-o", folder / "w.onnx",
            fragments=("the input model (w.onnx)",))
    assert (folder / "w.onnx").read_bytes() == weights


def test_hard_link_to_the_input(capfd, tmp_path: Path, model: Path, mlp_bytes: bytes) -> None:
    out = tmp_path / "out" / "other.onnx"
    out.parent.mkdir()
    os.link(model, out)
    assert_refused(capfd, model, "-c", write_config(tmp_path, GRAPH), "-o", out, fragments=("the input model",))
    assert model.read_bytes() == mlp_bytes


def test_symlinked_folder_to_the_input(capfd, tmp_path: Path, model: Path, mlp_bytes: bytes) -> None:
    (tmp_path / "alias").symlink_to(model.parent, target_is_directory=True)
    assert_refused(capfd, model, "-c", write_config(tmp_path, GRAPH), "-o", tmp_path / "alias" / model.name,
            fragments=("the input model",))
    assert model.read_bytes() == mlp_bytes


def test_bind_mount_of_the_inputs_folder(capfd, tmp_path: Path, model: Path, mlp_bytes: bytes) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        done = subprocess.run(["mount", "--bind", str(model.parent), str(mnt)], capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        pytest.skip("mount is not available")
    if done.returncode != 0:
        pytest.skip(f"mount --bind failed: {done.stderr.decode(errors='replace').strip()}")
    try:
        assert_refused(capfd, model, "-c", write_config(tmp_path, GRAPH), "-o", mnt / model.name, fragments=("the input model",))
        assert model.read_bytes() == mlp_bytes
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True, timeout=10)


def test_report_pointing_at_the_config(capfd, tmp_path: Path, model: Path) -> None:
    cfg = write_config(tmp_path, GRAPH)
    text = cfg.read_text()
    assert_refused(capfd, model, "-c", cfg, "-o", tmp_path / "o.onnx", "--report", cfg, fragments=("the config file",))
    assert cfg.read_text() == text
    # the same file spelt another way: through `..`
    other = tmp_path / "in" / ".." / cfg.name
    assert_refused(capfd, model, "-c", cfg, "-o", tmp_path / "o.onnx", "--report", other, fragments=("the config file",))
    assert cfg.read_text() == text


def test_markdown_report_pointing_at_a_data_file(capfd, tmp_path: Path, model: Path) -> None:
    import numpy as np

    data = tmp_path / "d.report.md"  # the Markdown report of -o d.onnx would be d.report.md
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 16), np.float32))
    os.link(tmp_path / "d.npz", data)
    cfg = write_config(tmp_path, GRAPH, f"data:\n  eval: {{source: '{tmp_path / 'd.npz'}'}}\n")
    before = (tmp_path / "d.npz").read_bytes()
    assert_refused(capfd, model, "-c", cfg, "-o", tmp_path / "d.onnx", fragments=("the Markdown report", "data.eval.source"))
    assert (tmp_path / "d.npz").read_bytes() == before


def test_report_named_md_is_refused(capfd, tmp_path: Path, model: Path) -> None:
    out = tmp_path / "o.onnx"
    assert_refused(capfd, model, "-c", write_config(tmp_path, GRAPH), "-o", out, "--report", tmp_path / "r.md",
            fragments=("name it .json",))
    assert_nothing_written(out)


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS file systems refuse non-UTF-8 names themselves")
def test_output_name_not_utf8_refused_up_front(capfd, tmp_path: Path, model: Path) -> None:
    bad = os.fsdecode(bytes(tmp_path / "o") + b"\xff.onnx")
    assert_refused(capfd, model, "-c", write_config(tmp_path, GRAPH), "-o", bad, fragments=("not valid UTF-8",))
    assert [p for p in tmp_path.iterdir() if p.name.startswith("o")] == []


def test_batch_job_reading_an_earlier_jobs_output(capfd, tmp_path: Path, mlp_bytes: bytes) -> None:
    for name in ("a", "b"):
        (tmp_path / f"{name}.onnx").write_bytes(mlp_bytes)
    write_config(tmp_path, GRAPH)
    manifest = tmp_path / "m.yaml"
    manifest.write_text("jobs:\n  - {model: a.onnx, config: p.yaml, output: b.onnx}\n"
                        "  - {model: b.onnx, config: p.yaml, output: c.onnx}\n")
    code, out, err = cli(capfd, "batch", str(manifest), "-q")
    assert_one_line_error(code, err, 2, "jobs[0] the output model", "jobs[1] the input model")
    assert (tmp_path / "b.onnx").read_bytes() == mlp_bytes
    assert not (tmp_path / "c.onnx").exists() and out == ""


# ---------------------------------------------------------------- code runs only when asked

DATA_MODULE = """
import numpy as np
from pathlib import Path

def make():
    Path(__file__).with_suffix(".ran").write_text("ran")
    return {"x": np.zeros((4, 16), np.float32)}
"""


@pytest.fixture
def data_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"nl_data_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(DATA_MODULE)
    monkeypatch.chdir(tmp_path)
    return name


def test_config_callable_needs_trust_code(capfd, tmp_path: Path, model: Path, data_module: str) -> None:
    cfg = write_config(tmp_path, GRAPH, f"data:\n  eval: {{source: '{data_module}:make'}}\n")
    out = tmp_path / "o.onnx"
    assert_refused(capfd, model, "-c", cfg, "-o", out, fragments=("data.eval.source", "--trust-code"))
    assert not (tmp_path / f"{data_module}.ran").exists(), "the config's code ran without --trust-code"
    assert_nothing_written(out)
    code, _, err = cli(capfd, "run", str(model), "-c", str(cfg), "-o", str(out), "-q", "--trust-code")
    assert code == 0, err
    assert (tmp_path / f"{data_module}.ran").exists()


@pytest.mark.parametrize("spec", ["os:abort", "os.path:abspath", "subprocess:getoutput"])
def test_config_never_names_a_standard_library_callable(capfd, tmp_path: Path, model: Path, spec: str) -> None:
    cfg = write_config(tmp_path, GRAPH, f"data:\n  eval: {{source: '{spec}'}}\n")
    for extra in ((), ("--trust-code",)):
        assert_refused(capfd, model, "-c", cfg, "-o", tmp_path / "o.onnx", *extra, fragments=("standard-library", spec))


def test_student_factory_in_config_needs_trust_code(capfd, tmp_path: Path, model: Path, data_module: str) -> None:
    cfg = write_config(tmp_path, f"  - type: distill\n    student: {{factory: '{data_module}:make'}}\n")
    assert_refused(capfd, model, "-c", cfg, "-o", tmp_path / "o.onnx", fragments=("student.factory", "--trust-code"))
    assert not (tmp_path / f"{data_module}.ran").exists()


def test_batch_manifest_factory_and_config_callables_need_trust_code(capfd, tmp_path: Path, model: Path,
                                                                     data_module: str) -> None:
    write_config(tmp_path, GRAPH, f"data:\n  eval: {{source: '{data_module}:make'}}\n")
    manifest = tmp_path / "m.yaml"
    manifest.write_text(f"jobs:\n  - {{model: {model}, config: p.yaml, output: o.onnx}}\n")
    code, _, err = cli(capfd, "batch", str(manifest), "-q")
    assert_one_line_error(code, err, 2, "--trust-code")
    manifest.write_text(f"jobs:\n  - {{model: '{data_module}:make', config: p.yaml, output: o.onnx}}\n")
    code, _, err = cli(capfd, "batch", str(manifest), "-q")
    assert_one_line_error(code, err, 2, "jobs[0].model", "--trust-code")
    assert not (tmp_path / f"{data_module}.ran").exists()


def test_batch_forwards_trust_code(tmp_path: Path) -> None:
    from optimize.batch import Job, job_argv

    job = Job(0, "a", "m.onnx", "p.yaml", "o.onnx", [], str(tmp_path), trust_code=True)
    assert "--trust-code" in job_argv(job)
    assert "--trust-code" not in job_argv(Job(0, "a", "m.onnx", "p.yaml", "o.onnx", [], str(tmp_path)))


# ---------------------------------------------------------------- work folders are the run's own


def test_work_dir_that_is_a_file(capfd, tmp_path: Path, model: Path) -> None:
    work = tmp_path / "work"
    work.write_text("not a folder")
    out = tmp_path / "o.onnx"
    assert_refused(capfd, model, "-c", write_config(tmp_path, GRAPH), "-o", out, "--work-dir", work, fragments=("is a file",))
    assert_nothing_written(out)
    assert work.read_text() == "not a folder"


def test_work_dir_holding_the_input(capfd, tmp_path: Path, mlp_bytes: bytes) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "m.onnx").write_bytes(mlp_bytes)
    assert_refused(capfd, work / "m.onnx", "-c", write_config(tmp_path, GRAPH), "-o", tmp_path / "o.onnx", "--work-dir", work,
            fragments=("--work-dir", "the input model"))
    assert (work / "m.onnx").read_bytes() == mlp_bytes


def test_work_dir_of_someone_else_is_refused(capfd, tmp_path: Path, model: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    assert_refused(capfd, model, "-c", write_config(tmp_path, GRAPH), "-o", tmp_path / "o.onnx", "--work-dir", work,
            fragments=("not empty",))
    assert (work / "notes.txt").read_text() == "mine"


def test_work_dir_resumes_the_same_run_and_refuses_another(capfd, tmp_path: Path, model: Path) -> None:
    work, out = tmp_path / "work", tmp_path / "o.onnx"
    cfg = write_config(tmp_path, GRAPH)
    args = ("run", str(model), "-c", str(cfg), "-o", str(out), "-q", "--work-dir", str(work))
    assert cli(capfd, *args)[0] == 0
    assert cli(capfd, *args)[0] == 0  # same input and config: a resume
    other = write_config(tmp_path, "  - type: prune\n    sparsity: 0.5\n", name="other.yaml")
    assert_refused(capfd, model, "-c", other, "-o", tmp_path / "o2.onnx", "--work-dir", work, fragments=("another input or config",))
    assert not (tmp_path / "o2.onnx").exists()


def test_work_dir_in_use_by_a_running_run(capfd, tmp_path: Path, model: Path) -> None:
    import fcntl

    from optimize.files import WORK_LOCK

    cfg, work, out = write_config(tmp_path, GRAPH), tmp_path / "work", tmp_path / "o.onnx"
    assert cli(capfd, "run", str(model), "-c", str(cfg), "-o", str(out), "-q", "--work-dir", str(work))[0] == 0
    out.unlink()
    with open(work / WORK_LOCK, "a+") as held:  # what a concurrent run holds while it works
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert_refused(capfd, model, "-c", cfg, "-o", out, "--work-dir", work, fragments=("in use by another run",))
    assert_nothing_written(out)


# ---------------------------------------------------------------- console failures change nothing decided


def _process(tmp_path: Path, model: Path, cfg: Path, out: Path, *extra: str, **popen: object) -> int:
    env = {**os.environ, "PYTHONPATH": child_pythonpath()}
    argv = [sys.executable, "-m", "cli", "run", str(model), "-c", str(cfg), "-o", str(out), *extra]
    return subprocess.run(argv, env=env, timeout=180, **popen).returncode  # type: ignore[call-overload]


@pytest.mark.parametrize("gate, code", [("", 0), (FAILING_GATE, 3)])
def test_closed_stdout_pipe_keeps_files_and_exit_code(tmp_path: Path, model: Path, gate: str, code: int) -> None:
    cfg, out = write_config(tmp_path, GRAPH, gate), tmp_path / "o.onnx"
    env = {**os.environ, "PYTHONPATH": child_pythonpath()}
    p = subprocess.Popen([sys.executable, "-m", "cli", "run", str(model), "-c", str(cfg), "-o", str(out), "--json", "-q"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    p.stdout.close()  # type: ignore[union-attr] - `optimize run ... --json | true`
    assert p.wait(timeout=180) == code
    written = out if code == 0 else tmp_path / "o.rejected.onnx"
    assert written.is_file() and json.loads((tmp_path / "o.report.json").read_text())["status"] in ("ok", "gate_failed")


@pytest.mark.parametrize("gate, code", [("", 0), (FAILING_GATE, 3)])
def test_stdout_to_dev_full_keeps_files_and_exit_code(tmp_path: Path, model: Path, gate: str, code: int) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    cfg, out = write_config(tmp_path, GRAPH, gate), tmp_path / "o.onnx"
    with open("/dev/full", "w") as full:
        assert _process(tmp_path, model, cfg, out, "--json", "-q", stdout=full, stderr=subprocess.DEVNULL) == code
    assert (out if code == 0 else tmp_path / "o.rejected.onnx").is_file()


def test_closed_stderr_keeps_files_and_exit_code(tmp_path: Path, model: Path) -> None:
    cfg, out = write_config(tmp_path, GRAPH, FAILING_GATE), tmp_path / "o.onnx"
    code = _process(tmp_path, model, cfg, out, "--progress", "plain", stdout=subprocess.DEVNULL,
                    preexec_fn=lambda: os.close(2))
    assert code == 3
    rejected = tmp_path / "o.rejected.onnx"
    assert rejected.is_file() and onnx.load(str(rejected)) is not None  # no console line landed in a file
    assert json.loads((tmp_path / "o.report.json").read_text())["status"] == "gate_failed"


def test_console_broken_before_the_result_leaves_no_model(capfd, tmp_path: Path, model: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from cli.progress import NoProgress

    def broken(self, *a, **k):  # noqa: ANN001, ANN002, ANN003
        raise BrokenPipeError(32, "Broken pipe")

    out = tmp_path / "o.onnx"
    out.write_bytes(b"an earlier run's model")
    monkeypatch.setattr("cli.progress.make_progress", lambda *a, **k: type("P", (NoProgress,), {"advance": broken})())
    code, _, err = cli(capfd, "run", str(model), "-c", str(write_config(tmp_path, GRAPH)), "-o", str(out), "-q")
    assert code == 1 and "Broken pipe" in err, err
    assert_nothing_written(out)


# ---------------------------------------------------------------- SIGHUP is handled like SIGTERM

SLOW_PASS = """
import sys, time
from pathlib import Path
from passes import graph

def slow(self, model, ctx):
    Path(sys.argv[1]).write_text(str(ctx.work_dir))
    time.sleep(120)

graph.GraphPass.run = slow
if sys.argv[2] == "batch":  # each job runs this script too, so its pass is slow as well
    from optimize import batch
    job_argv = batch.job_argv
    batch.job_argv = lambda job, threads=None: [sys.executable, __file__, sys.argv[1], *job_argv(job, threads)[3:]]
from cli.app import main
main(sys.argv[2:])
"""


def _hang_up(tmp_path: Path, *args: str) -> tuple[int, str, Path]:
    import signal
    import time

    script, started = tmp_path / "slow_pass.py", tmp_path / "started"
    script.write_text(SLOW_PASS)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "PYTHONPATH": child_pythonpath(), "TMPDIR": str(tmp)}
    p = subprocess.Popen([sys.executable, str(script), str(started), *args], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 90
        while not started.exists():
            assert p.poll() is None, p.communicate()
            assert time.monotonic() < deadline, "the pass never started"
            time.sleep(0.05)
        time.sleep(0.2)
        p.send_signal(signal.SIGHUP)
        _, err = p.communicate(timeout=90)
    finally:
        if p.poll() is None:
            p.kill()
    return p.returncode, err, Path(started.read_text())


def test_sighup_mid_pass(tmp_path: Path, model: Path) -> None:
    out = tmp_path / "o.onnx"
    out.write_bytes(b"an earlier run's model")
    code, err, work = _hang_up(tmp_path, "run", str(model), "-c", str(write_config(tmp_path, GRAPH)), "-o", str(out), "-q")
    assert code == 129, err
    assert [ln for ln in err.splitlines() if ln.strip()][-1] == "hung up (SIGHUP)"
    assert_nothing_written(out)
    assert not work.exists(), "the temporary work folder was left behind"


def test_sighup_stops_batch_jobs(tmp_path: Path, model: Path) -> None:
    write_config(tmp_path, GRAPH)
    (tmp_path / "m.yaml").write_text(f"jobs:\n  - {{model: {model}, config: p.yaml, output: o.onnx}}\n")
    code, err, work = _hang_up(tmp_path, "batch", "m.yaml", "-q")
    assert code == 129, err
    assert "hung up (SIGHUP)" in err
    assert_nothing_written(tmp_path / "o.onnx")
    assert not work.exists(), "the job's work folder was left behind: the job was not stopped"


# ---------------------------------------------------------------- every config-parse failure is exit 2


@pytest.mark.parametrize("text", [
    "schema_version: 1\npasses: " + "[" * 5000 + "]" * 5000 + "\n",
    "schema_version: 1\nseed: " + "{a: " * 3000 + "1" + "}" * 3000 + "\n",
    "schema_version: 1\npasses: []\n\x00\n",
    "schema_version: 1\npasses: []\nseed: 1\x00\n",
], ids=["deep-lists", "deep-maps", "nul-line", "nul-value"])
def test_config_parse_failures_are_exit_2(capfd, tmp_path: Path, model: Path, text: str) -> None:
    cfg = tmp_path / "p.yaml"
    cfg.write_text(text)
    out = tmp_path / "o.onnx"
    assert_refused(capfd, model, "-c", cfg, "-o", out, fragments=(str(cfg), "invalid YAML"))
    assert_nothing_written(out)
    code, _, err = cli(capfd, "validate", str(cfg))
    assert_one_line_error(code, err, 2, "invalid YAML")


def test_deep_set_value_is_exit_2(capfd, tmp_path: Path, model: Path) -> None:
    assert_refused(capfd, model, "-c", write_config(tmp_path, GRAPH), "-o", tmp_path / "o.onnx", "--set", "seed=" + "[" * 5000,
            fragments=("--set seed",))


def test_a_killed_runs_temporary_folder_is_swept(capfd, tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fcntl
    import tempfile

    from optimize.files import WORK_LOCK

    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    dead, live, young = root / "optimize-dead", root / "optimize-live", root / "optimize-young"
    for folder in (dead, live, young):
        folder.mkdir()
        (folder / "big.bin").write_bytes(b"x" * 1000)
        (folder / WORK_LOCK).touch()
    for folder in (dead, live):
        os.utime(folder / WORK_LOCK, (1, 1))  # an hour-old lock: not a run starting this second
    with open(live / WORK_LOCK, "a+") as held:  # a run still working holds its lock
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        code, _, err = cli(capfd, "run", str(model), "-c", str(write_config(tmp_path, GRAPH)), "-o", str(tmp_path / "o.onnx"), "-q")
    assert code == 0, err
    assert not dead.exists(), "a killed run's folder was not swept"
    assert live.exists() and young.exists()
    assert sorted(p.name for p in root.iterdir()) == ["optimize-live", "optimize-young"]


def test_writing_has_a_progress_line(capfd, tmp_path: Path, model: Path) -> None:
    code, _, err = cli(capfd, "run", str(model), "-c", str(write_config(tmp_path, GRAPH)), "-o", str(tmp_path / "o.onnx"),
                       "--progress", "plain")
    assert code == 0, err
    starts = [ln.split("]")[0] + "]" for ln in err.splitlines() if ln.startswith("[")]
    for key in ("[pipeline]", "[write]"):  # loading prints none: a plan-time error stays one line
        assert key in starts, f"no {key} line in: {err}"
