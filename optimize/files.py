"""Nothing lost: the files a run reads and writes, compared by identity, and the work folder it owns.

Paths are compared by file identity (device, inode) after following links, not by spelling, so a
hard link, a symlink, a bind mount or `..` cannot make an output replace an input. Every check runs
before any work and raises UsageError (exit 2; a missing data file is its DataError).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from optimize.errors import DataError, UsageError

_CALLABLE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_FOLDER_FILES_MAX = 10_000  # a model or data folder: compare at most this many of its files
WORK_MARKER = ".optimize-work.json"
WORK_LOCK = ".optimize-work.lock"


def identity(path: Path) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the file `path` names after following links; None if there is none."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def is_callable_reference(source: str) -> bool:
    """`package.module:callable` (not `builtin:NAME`, not a path that exists)."""
    return bool(_CALLABLE.match(source)) and not source.startswith("builtin:") and not Path(source).exists()


def onnx_files(path: Path) -> list[Path]:
    """An ONNX file and the external-data files it names (read without loading the weights)."""
    files = [path]
    try:
        import onnx
        from onnx.external_data_helper import _get_all_tensors

        model = onnx.load(str(path), load_external_data=False)
        for t in _get_all_tensors(model):
            if t.data_location == onnx.TensorProto.EXTERNAL:
                loc = next((e.value for e in t.external_data if e.key == "location"), None)
                if loc and (path.parent / loc) not in files:
                    files.append(path.parent / loc)
    except Exception:  # an unreadable model is the loader's to report; compare the file itself
        pass
    return files


def _expand(path: Path) -> list[Path]:
    """A file, or the files under a folder (a Hugging Face model folder, an image folder)."""
    if path.is_dir():
        found = [p for _, p in zip(range(_FOLDER_FILES_MAX), (q for q in path.rglob("*") if q.is_file()), strict=False)]
        return [path, *found]
    if path.suffix.lower() == ".onnx" and path.is_file():
        return onnx_files(path)
    return [path] if path.exists() else []


def read_paths(model: str | None, cfg: Any, config_file: str | None, base_dir: Path) -> dict[str, Path]:
    """Every file the run reads, labelled for the error message: the model (with its external data
    or folder), its weights, the config file, and the data sources that are files or folders."""
    reads: dict[str, Path] = {}

    def add(label: str, path: Path) -> None:
        for i, p in enumerate(_expand(path)):
            reads[label if i == 0 else f"{label} ({p.name})"] = p

    if model and not (is_callable_reference(model) and not Path(model).exists()):
        add("the input model", Path(model))
    if config_file:
        add("the config file", Path(config_file))
    weights = getattr(cfg.model, "weights", None)
    if weights:
        add("model.weights", base_dir / weights)
    for role in ("train", "eval", "calibration"):
        spec = getattr(cfg.data, role)
        if spec is not None and not spec.source.startswith("builtin:") and not is_callable_reference(spec.source):
            add(f"data.{role}.source", base_dir / spec.source)
    return reads


def check_data_files(cfg: Any, base_dir: Path) -> None:
    """Every data source named as a file or folder exists: all missing ones named in one line (DataError)."""
    missing = []
    for role in ("train", "eval", "calibration"):
        spec = getattr(cfg.data, role)
        if spec is None or spec.source.startswith("builtin:") or is_callable_reference(spec.source):
            continue
        path = base_dir / spec.source
        if not path.exists():
            missing.append(f"data.{role}.source {path}")
    if missing:
        raise DataError(f"data file{'s' if len(missing) > 1 else ''} not found: {'; '.join(missing)}")


def write_paths(output: Path, report: Path, markdown: bool, charts: bool) -> dict[str, Path]:
    """Every file the run may write: the model (or NAME.rejected.onnx after a failed gate) with its
    external data, the report, its Markdown and its charts."""
    rejected = output.with_name(output.name[: -len(".onnx")] + ".rejected.onnx")
    writes = {
        "the output model": output, "the output model's external data": output.with_name(output.name + ".data"),
        "the rejected model": rejected, "the rejected model's external data": rejected.with_name(rejected.name + ".data"),
        "the report": report,
    }
    if markdown:
        writes["the Markdown report"] = report.with_suffix(".md")
    if charts:
        from optimize.charts import chart_paths

        writes.update({f"the {k.removeprefix('chart_')} chart": p for k, p in chart_paths(report.with_suffix("")).items()})
    return writes


def check_no_clash(reads: dict[str, Path], writes: dict[str, Path], work_dir: Path | None = None) -> None:
    """Exit 2 when a path the run writes is (by identity) a file it reads, when two writes name one
    file, or when a file it reads lies inside the work folder."""
    read_ids = {identity(p): (label, p) for label, p in reads.items()}
    read_ids.pop(None, None)
    seen: dict[Any, str] = {}
    for label, p in writes.items():
        ident = identity(p)
        if ident in read_ids:
            what, src = read_ids[ident]
            raise UsageError(f"{label} {p} is {what} ({src}): refusing to overwrite an input; choose another path")
        slot = ident or (identity(p.parent), p.name)
        if slot[0] is not None and slot in seen:
            raise UsageError(f"{label} and {seen[slot]} are the same file: {p}")
        seen[slot] = label
    if work_dir is not None:
        inside = _inside(work_dir, reads.items())
        if inside is not None:
            raise UsageError(f"--work-dir {work_dir} holds {inside[0]} ({inside[1]}): use a folder of its own")


def check_rejected_name(rejected: Path, report: Path) -> None:
    """A failed gate writes NAME.rejected.onnx, a name the user never typed: it may only replace a
    file this tool wrote there (the report beside it names that file and its sha256). Exit 2 before
    any work otherwise, so an unrelated file of that name is never lost."""
    if not rejected.exists():
        return
    from optimize.cache import sha256_file

    try:
        doc = json.loads(report.read_text(encoding="utf-8"))
        ours = (identity(Path(doc["files"]["model"])) == identity(rejected)
                and doc["output"]["sha256"] == sha256_file(rejected))
    except (OSError, ValueError, KeyError, TypeError):
        ours = False
    if not ours:
        raise UsageError(
            f"{rejected} exists and no report of this tool ({report}) says it wrote it: a failed gate would "
            "replace it with the rejected model; move it away or choose another output name (-o)"
        )


def _inside(folder: Path, files: Iterable[tuple[str, Path]]) -> tuple[str, Path] | None:
    target = identity(folder)
    if target is None:
        return None
    for label, p in files:
        for parent in Path(os.path.realpath(p)).parents:
            if identity(parent) == target:
                return label, p
    return None


def check_output_name(path: Path, what: str) -> None:
    """Exit 2 now for a name the file system may refuse after the work (not valid UTF-8)."""
    try:
        os.fsencode(path).decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{what} name is not valid UTF-8: {os.fsdecode(os.fsencode(path))!r}") from None


# ---------------------------------------------------------------- the work folder


def run_key(reads: dict[str, Path], config_dump: dict[str, Any]) -> str:
    """What a work folder belongs to: the inputs (path, size, mtime) and the resolved config."""
    facts = []
    for label, p in sorted(reads.items()):
        try:
            st = os.stat(p)
            facts.append([label, os.path.realpath(p), st.st_size, st.st_mtime_ns])
        except OSError:
            facts.append([label, str(p)])
    text = json.dumps([facts, config_dump], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def claim_work_dir(work: Path, key: str) -> Any:
    """Make `work` this run's own: a new or empty folder, or one holding this tool's marker from a
    run of the same input and config (a resume). Returns the held lock (close it to release);
    exit 2 for a file, a foreign folder, another run's folder, or a folder another run holds now."""
    if work.exists() and not work.is_dir():
        raise UsageError(f"--work-dir {work} is a file, not a folder")
    marker = work / WORK_MARKER
    if work.is_dir() and any(work.iterdir()):
        try:
            owner = json.loads(marker.read_text())
        except (OSError, ValueError):
            raise UsageError(f"--work-dir {work} is not empty and was not made by optimize: use a new or empty folder") from None
        if not isinstance(owner, dict) or owner.get("key") != key:
            raise UsageError(f"--work-dir {work} holds a run of another input or config: use another folder")
    try:
        work.mkdir(parents=True, exist_ok=True)
        lock = _lock(work / WORK_LOCK)
    except OSError as exc:
        raise UsageError(f"--work-dir {work}: {exc.strerror or exc}") from None
    if lock is None:
        raise UsageError(f"--work-dir {work} is in use by another run now (lock {WORK_LOCK})")
    marker.write_text(json.dumps({"tool": "optimize", "key": key}))
    return lock


def _lock(path: Path) -> Any:
    """An exclusive lock the operating system drops when the process ends (even when killed)."""
    import fcntl

    fh = open(path, "a+")  # noqa: SIM115 - held for the run; closed by the caller
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        return None
    return fh


def own_temp_work_dir() -> tuple[Path, Any]:
    """A fresh temporary work folder, locked for this run, after sweeping the folders of runs that
    were killed (SIGKILL, power loss) before they could remove their own."""
    import tempfile

    root = Path(tempfile.gettempdir())
    sweep_killed(root)
    work = Path(tempfile.mkdtemp(prefix="optimize-", dir=root))
    return work, _lock(work / WORK_LOCK)


def sweep_killed(root: Path, min_age_s: float = 60.0) -> None:
    """Remove `optimize-*` folders whose lock no process holds (its run died); a folder without a
    lock file, or whose lock is younger than `min_age_s` (a run starting now), is left alone."""
    import shutil
    import time

    try:
        candidates = [p for p in root.glob("optimize-*") if p.is_dir() and not p.is_symlink()]
    except OSError:
        return
    for folder in candidates:
        lock_file = folder / WORK_LOCK
        try:
            if time.time() - lock_file.stat().st_mtime < min_age_s:
                continue
            lock = _lock(lock_file)
        except OSError:
            continue
        if lock is not None:
            shutil.rmtree(folder, ignore_errors=True)
            lock.close()
