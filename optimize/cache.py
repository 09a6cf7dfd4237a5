"""Content-keyed cache of pass outputs, so a re-run (or `optimize run --resume` after a kill)
reuses the passes that already finished instead of recomputing them.

What is cached: steps whose input and output are ONNX files, of passes that declare themselves
`cacheable` (prune, quantize, graph, fp16), unless the config makes the pass nondeterministic
(`Pass.cache_exclusion`, e.g. quantize's format auto). Torch-form steps
(distill, torch prune/quantize, export) are not cached: their input is a live module, not a file;
distill resumes from its own training checkpoints instead (`--resume`).

The key is the sha256 of a JSON document holding:
- the input: sha256 of the ONNX file and of every external data file it references;
- the pass: its type and its config (JSON, sorted keys);
- what else a pass reads: the `data` and `model` config sections, the content of every data file
  they name, the seed, the device and the thread count;
- the tool version and the library versions (`optimize.hardware.versions()`: python, torch, onnx,
  onnxruntime, onnxscript, torch-pruning, numpy), and a cache format number;
- the tool's code: a sha256 over the `.py` files of the `optimize` package and of the folder holding
  the pass's module (`code_digest`), so an edited or patched install does not reuse what the old
  code made under the same version number.
A different library version or code therefore gives a different key: a miss, never a reuse.

`output.cache_max_gb` limits the folder's size: after each store, entries are removed least recently
used first (a hit counts as a use: it touches the entry document's mtime) until the rest fits.

An entry is `DIR/KEY[:2]/KEY/` holding the output model (+ `model.onnx.data`), and `entry.json`
(the key document, the pass's metrics and notes, and the sha256 and size of every file). It is
written in a temporary folder inside DIR and renamed into place in one step, so readers never see
a partial entry; when two runs store the same key at once, the second rename fails and its copy is
dropped (both runs succeed). On lookup every file's hash (and the entry document's own) is checked:
a tampered or truncated entry is a miss, is removed, and the pass is recomputed. This catches
corruption and edits, not forgery: whoever can write the cache folder can write a consistent
entry, so the folder needs the same trust as the models themselves.

Hand-written: no maintained library offers a content-addressed store with atomic directory
entries and per-file verification in a few lines (joblib.Memory pickles results and keys on
Python arguments, which would execute pickles from the cache and miss the external data files).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import logging
import os
import shutil
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from optimize.pass_api import Pass

log = logging.getLogger("optimize")

FORMAT = 1
ENTRY = "entry.json"

def default_dir() -> Path:
    """$OPTIMIZE_CACHE/passes, else $XDG_CACHE_HOME/optimize/passes, else ~/.cache/optimize/passes."""
    env = os.environ.get("OPTIMIZE_CACHE")
    if env:
        return Path(env) / "passes"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "optimize" / "passes"


def cacheable(pass_obj: Pass, form_in: str, form_out: str, inserted: bool) -> str | None:
    """None when the step's output may be cached, else the reason it is not."""
    if form_in != "onnx" or form_out != "onnx":
        return "torch-form step (the input is a live module, not a file)"
    if inserted:
        return "inserted step (materializes work deferred by an earlier torch pass)"
    if not pass_obj.cacheable:
        return f"{pass_obj.name} is not known to be deterministic"
    return pass_obj.cache_exclusion()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_files(path: Path) -> list[Path]:
    """The ONNX file and every external data file it references (each once, in a stable order)."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    model = onnx.load(str(path), load_external_data=False)
    locations = sorted({ExternalDataInfo(t).location for t in _get_all_tensors(model) if uses_external_data(t)})
    return [path, *(path.parent / loc for loc in locations)]


def model_digest(path: Path) -> dict[str, str]:
    files = model_files(path)
    return {("model" if i == 0 else f.relative_to(path.parent).as_posix()): sha256_file(f) for i, f in enumerate(files)}


@functools.cache
def code_digest(folder: str) -> str:
    """sha256 over every `.py` file under `folder` (relative path and content, in sorted order)."""
    h = hashlib.sha256()
    root = Path(folder)
    for f in sorted(root.rglob("*.py")):
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def _code(pass_obj: Pass) -> dict[str, str]:
    folder = Path(inspect.getfile(type(pass_obj))).parent
    top = type(pass_obj).__module__.split(".")[0]
    if top == "passes" and top in sys.modules:  # the built-in passes import one another (quantize → graph_rewrites)
        folder = Path(inspect.getfile(sys.modules[top])).parent
    return {"optimize": code_digest(str(Path(__file__).parent)), "pass": code_digest(str(folder))}


def _data_digest(value: Any, base_dir: Path) -> Any:
    """sha256 of every file a data/model config value names (folders: names, sizes, mtimes)."""
    out: dict[str, str] = {}

    def visit(v: Any) -> None:
        if isinstance(v, dict):
            for x in v.values():
                visit(x)
        elif isinstance(v, (list, tuple)):
            for x in v:
                visit(x)
        elif isinstance(v, str) and v and ":" not in v[1:2]:
            p = Path(v) if Path(v).is_absolute() else base_dir / v
            try:
                if p.is_file():
                    out[v] = sha256_file(p)
                elif p.is_dir():
                    h = hashlib.sha256()
                    for f in sorted(p.rglob("*")):
                        if f.is_file():
                            st = f.stat()
                            h.update(f"{f.relative_to(p).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
                    out[v] = "dir:" + h.hexdigest()
            except OSError:
                pass

    visit(value)
    return out


@dataclass
class Hit:
    model_path: Path
    metrics: dict[str, Any]
    notes: list[str]


class PassCache:
    def __init__(self, root: Path, max_bytes: int | None = None) -> None:
        self.root = Path(root)
        # size limit (output.cache_max_gb): after each store, least recently used entries go first
        self.max_bytes = max_bytes

    # ---------------------------------------------------------------- keys

    def key(self, *, input_path: Path, step_type: str, pass_config: dict[str, Any], cfg: Any, device: str,
            threads: int, base_dir: Path, versions: dict[str, str], tool_version: str,
            code: dict[str, str] | None = None) -> tuple[str, dict[str, Any]]:
        data = cfg.data.model_dump(mode="json") if hasattr(cfg, "data") else None
        model_sec = cfg.model.model_dump(mode="json") if hasattr(cfg, "model") else None
        doc = {
            "format": FORMAT,
            "input": model_digest(Path(input_path)),
            "pass": step_type,
            "config": pass_config,
            "data": data,
            "model": model_sec,
            "data_files": _data_digest([data, model_sec], base_dir),
            "seed": getattr(cfg, "seed", None),
            "device": device,
            "threads": threads,
            "tool": tool_version,
            "versions": versions,
            "code": code,
        }
        text = json.dumps(doc, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest(), doc

    def _dir(self, key: str) -> Path:
        return self.root / key[:2] / key

    # ---------------------------------------------------------------- lookup

    def lookup(self, key: str, into: Path) -> Hit | None:
        """The entry for `key`, verified file by file and linked (or copied) into `into`; None on a
        miss. A corrupt or tampered entry is removed and counts as a miss."""
        d = self._dir(key)
        meta_path = d / ENTRY
        if not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("key") != key or meta.get("format") != FORMAT:
                raise ValueError("entry does not match its key")
            if meta.get("sha256") != _meta_digest(meta):
                raise ValueError(f"{ENTRY}: content does not match its recorded sha256")
            files = meta["files"]
            if "model.onnx" not in files:
                raise ValueError("entry has no model")
            for name, info in files.items():
                f = d / name
                if "/" in name or name.startswith(".") or not f.is_file():
                    raise ValueError(f"{name}: missing")
                if f.stat().st_size != info["bytes"] or sha256_file(f) != info["sha256"]:
                    raise ValueError(f"{name}: content does not match its recorded sha256")
            into.mkdir(parents=True, exist_ok=True)
            for name in files:
                _link_or_copy(d / name, into / name)
            # the linked copy must still be what was verified (the entry could change meanwhile)
            for name, info in files.items():
                if sha256_file(into / name) != info["sha256"]:
                    raise ValueError(f"{name}: changed while being read")
            os.utime(meta_path)  # its last use: the size limit evicts least recently used entries first
            return Hit(into / "model.onnx", meta.get("metrics", {}), list(meta.get("notes", [])))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("pass cache: ignoring entry %s (%s); recomputing", d, exc)
            for name in os.listdir(into) if into.exists() else []:
                (into / name).unlink(missing_ok=True)
            self._remove(d)
            return None

    # ---------------------------------------------------------------- store

    def store(self, key: str, doc: dict[str, Any], model_path: Path, metrics: dict[str, Any], notes: list[str]) -> bool:
        """Store the output model (with its external data) under `key`. Never raises for disk
        problems (a cache that cannot be written only costs speed); True when stored."""
        tmp: Path | None = None
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.root))
            files: dict[str, dict[str, Any]] = {}
            src = Path(model_path)
            for i, f in enumerate(model_files(src)):
                name = "model.onnx" if i == 0 else f.relative_to(src.parent).as_posix()
                if i > 0 and ("/" in name or name in ("model.onnx", ENTRY) or name.startswith(".")):
                    return False  # a layout the entry could not reproduce: not cached
                shutil.copyfile(f, tmp / name)  # a copy: later work on the run's files never touches the entry
                files[name] = {"sha256": sha256_file(tmp / name), "bytes": (tmp / name).stat().st_size}
            meta = {"format": FORMAT, "key": key, "doc": doc, "metrics": metrics, "notes": notes, "files": files}
            meta["sha256"] = _meta_digest(meta)
            (tmp / ENTRY).write_text(json.dumps(meta, sort_keys=True, default=str))
            final = self._dir(key)
            final.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(tmp, final)  # atomic; fails when another run stored the key first
            except OSError:
                if (final / ENTRY).is_file():
                    return False  # stored concurrently: keep theirs
                raise
            tmp = None
            self.evict()
            return True
        except (OSError, ValueError) as exc:
            log.warning("pass cache: could not store an entry in %s (%s)", self.root, exc)
            return False
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)

    # ---------------------------------------------------------------- size limit

    def entries(self) -> list[tuple[float, int, Path]]:
        """(last use, bytes, folder) of every entry, least recently used first."""
        found = []
        for meta in self.root.glob(f"??/*/{ENTRY}"):
            try:
                size = sum(f.stat().st_size for f in meta.parent.iterdir() if f.is_file())
                found.append((meta.stat().st_mtime, size, meta.parent))
            except OSError:  # removed meanwhile by another run
                continue
        return sorted(found)

    def evict(self) -> int:
        """Remove least recently used entries until the cache fits `max_bytes`; how many went."""
        if self.max_bytes is None:
            return 0
        entries = self.entries()
        total = sum(size for _, size, _ in entries)
        removed = 0
        for _, size, d in entries:
            if total <= self.max_bytes:
                break
            self._remove(d)
            total -= size
            removed += 1
        if removed:
            log.info("pass cache: removed %d least recently used entries (limit %.3g GB)", removed, self.max_bytes / 1e9)
        return removed

    def _remove(self, d: Path) -> None:
        """Remove an entry: renamed aside first, so a concurrent reader never sees it half-deleted."""
        trash = d.parent / f".trash-{uuid.uuid4().hex}"
        try:
            os.rename(d, trash)
        except OSError:
            return
        shutil.rmtree(trash, ignore_errors=True)


def _meta_digest(meta: dict[str, Any]) -> str:
    body = {k: v for k, v in meta.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link when the filesystem allows (no copy of a multi-GB file), else a copy."""
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


# ---------------------------------------------------------------- the pipeline's side


def for_run(cfg: Any) -> PassCache | None:
    """The cache a run uses: `output.cache_dir`, else $OPTIMIZE_PASS_CACHE (a folder, or `off`),
    else `default_dir()`; None when `output.cache` is false (`--no-cache`) or the env says off."""
    out = getattr(cfg, "output", None)
    if out is not None and not getattr(out, "cache", True):
        return None
    explicit = getattr(out, "cache_dir", None) if out is not None else None
    max_gb = getattr(out, "cache_max_gb", None) if out is not None else None
    max_bytes = int(max_gb * 1e9) if max_gb is not None else None
    if explicit:
        return PassCache(Path(explicit).expanduser(), max_bytes)
    env = os.environ.get("OPTIMIZE_PASS_CACHE", "").strip()
    if env.lower() in ("off", "0", "false", "no"):
        return None
    return PassCache(Path(env).expanduser() if env else default_dir(), max_bytes)


_HANDLE_FIELDS = ("form", "inputs", "outputs", "exporter", "opset", "pending", "source")


def run_step(cache: PassCache | None, *, pass_obj: Pass, pass_config: dict[str, Any], inserted: bool, current: Any,
             ctx: Any, tool_version: str, run: Any) -> tuple[Any, bool]:
    """Run one step through the cache: (PassResult, served from the cache?). `run()` computes it."""
    from optimize.pass_api import PassResult

    if cache is None or current.form != "onnx" or current.onnx_path is None:
        return run(), False
    if cacheable(pass_obj, current.form, "onnx", inserted) is not None:
        return run(), False
    step_type = pass_obj.name
    from optimize.hardware import versions

    try:
        depends = pass_obj.cache_inputs(ctx.config)
        key, doc = cache.key(
            input_path=Path(current.onnx_path), step_type=step_type,
            pass_config={**pass_config, "_also_reads": depends} if depends else pass_config, cfg=ctx.config,
            device=ctx.device, threads=ctx.threads, base_dir=Path(ctx.base_dir), versions=versions(),
            tool_version=tool_version, code=_code(pass_obj),
        )
    except Exception as exc:  # an unreadable input: let the pass itself report it
        log.debug("pass cache: no key (%s)", exc)
        return run(), False
    hit = cache.lookup(key, ctx.step_dir(step_type) / "cached")
    if hit is not None:
        log.info("%s: reused from the pass cache (%s)", step_type, key[:12])
        return PassResult(current.replace(onnx_path=hit.model_path), metrics=hit.metrics, notes=hit.notes), True
    result = run()
    new = result.model
    same_shape = new.form == "onnx" and new.onnx_path is not None and all(
        getattr(new, f) == getattr(current, f) for f in _HANDLE_FIELDS
    )
    if same_shape and new.tokenizer is current.tokenizer:
        cache.store(key, doc, Path(new.onnx_path), _jsonable(result.metrics), list(result.notes))
    return result, False


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))
