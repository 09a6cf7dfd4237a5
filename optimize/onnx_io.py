"""Reading and writing ONNX files, path-based so external data and models over 2 GB work, and the
atomic output discipline: write under a temporary name beside the target, then rename.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from optimize.errors import ModelLoadError

# protobuf cannot serialise a single message over 2 GiB; above this, weights go to external data.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


def load(path: str | Path, load_external_data: bool = True) -> Any:
    import onnx

    try:
        return onnx.load(str(path), load_external_data=load_external_data)
    except FileNotFoundError as exc:
        raise ModelLoadError(f"{path}: external data file missing ({exc.filename or exc})") from None
    except Exception as exc:  # protobuf DecodeError, ValueError on bad external data, ...
        raise ModelLoadError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None


def save(model: Any, path: str | Path) -> Path:
    """Save a ModelProto; large models get their weights in `NAME.onnx.data` beside it.

    `onnx.save_model(save_as_external_data=True)` moves the weights out of the caller's proto (it
    then points at the data file, by a path relative to it); they are read back afterwards so the
    caller's model stays self-contained and usable (found by tests/integration/test_large_model.py)."""
    import onnx
    from onnx.external_data_helper import load_external_data_for_model

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    normalize_ir_version(model)
    if proto_bytes(model) > EXTERNAL_DATA_THRESHOLD:
        onnx.save_model(
            model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=path.name + ".data"
        )
        load_external_data_for_model(model, str(path.parent))
    else:
        onnx.save_model(model, str(path))
    return path


def proto_bytes(model: Any) -> int:
    """Serialized size of a ModelProto. protobuf raises EncodeError when asked to size a message
    over 2 GiB; such a model is, by definition, over the external-data threshold."""
    from google.protobuf.message import EncodeError

    try:
        return int(model.ByteSize())
    except (EncodeError, ValueError, OverflowError):
        return 2**31


def normalize_ir_version(model: Any) -> None:
    """Raise the IR version to the least one its opsets need.

    Tools that upgrade a model's opset (ONNX Runtime's quantizer does, for DynamicQuantizeLinear)
    keep an old IR version; below IR 4 every initializer must also be a graph input, so the checker
    rejects the result. Old model-zoo files hit this.
    """
    import onnx

    try:
        needed = onnx.helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    except Exception:
        return
    if model.ir_version < needed:
        if model.ir_version < 4:
            _drop_ir3_initializer_inputs(model)
        model.ir_version = needed


def _drop_ir3_initializer_inputs(model: Any) -> None:
    """Below IR 4 every initializer is also listed as a graph input. From IR 4 on such an entry
    means "an input the caller may override", and one whose initializer a tool folded away becomes
    a required input. Neither was ever a user input, so drop both kinds of entry."""
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    used = {name for node in graph.node for name in node.input}
    keep = [i for i in graph.input if i.name not in inits and (i.name in used or i.name in {o.name for o in graph.output})]
    del graph.input[:]
    graph.input.extend(keep)


def normalize_ir_version_file(path: str | Path) -> None:
    """`normalize_ir_version` for a file written by another tool (external data left in place),
    and its nodes in an order the ONNX checker accepts (optimize.graph_order: another tool's sort may
    miss what If/Loop bodies read from the outer graph)."""
    import onnx

    from optimize.graph_order import sort_graph

    model = onnx.load(str(path), load_external_data=False)
    before = model.ir_version
    normalize_ir_version(model)
    if sort_graph(model.graph) or model.ir_version != before:
        onnx.save_model(model, str(path))


def total_bytes(path: str | Path) -> int:
    """Size of the model file plus every external data file it references."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    path = Path(path)
    size = path.stat().st_size
    model = onnx.load(str(path), load_external_data=False)
    seen: set[str] = set()
    for t in _get_all_tensors(model):
        if uses_external_data(t):
            loc = ExternalDataInfo(t).location
            if loc not in seen:
                seen.add(loc)
                f = path.parent / loc
                if f.exists():
                    size += f.stat().st_size
    return size


def write_atomic(model_path: str | Path, target: str | Path) -> Path:
    """Copy the ONNX model at `model_path` (and its external data) to `target` atomically.

    Everything is written beside the target under a temporary name and renamed into place, so a
    crash or Ctrl-C never leaves a file under the final name. A model under the protobuf threshold
    becomes one self-contained file; a larger one is written into a temporary folder beside the target (same filesystem) as
    model + `NAME.onnx.data`, its tensors copied file-to-file (never all in memory), and both are
    renamed: data first, then the model that references it.
    """
    import shutil

    model_path, target = Path(model_path), Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if total_bytes(model_path) <= EXTERNAL_DATA_THRESHOLD:
        return write_bytes_atomic(load(model_path).SerializeToString(), target)
    model = load(model_path, load_external_data=False)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        data_name = target.name + ".data"
        save_streaming(model, tmp_dir / target.name, model_path.parent, externalize_inline=True)
        for f in tmp_dir.iterdir():
            os.chmod(f, 0o666 & ~_umask())
        if (tmp_dir / data_name).exists():
            os.replace(tmp_dir / data_name, target.parent / data_name)
        os.replace(tmp_dir / target.name, target)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return target


def copy_file_atomic(src: str | Path, target: str | Path) -> Path:
    """Copy a file to `target` through a temporary name beside it and a rename."""
    import shutil

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out, open(src, "rb") as fh:
            shutil.copyfileobj(fh, out, _COPY_CHUNK)
        os.chmod(tmp_name, 0o666 & ~_umask())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(data: bytes, target: str | Path) -> Path:
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp_name, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get normal permissions
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return target


# ---------------------------------------------------------------- streaming external data
#
# Models over 2 GB keep their weights in external data. Loading them whole (onnx.load with
# external data) and re-serialising holds the model several times in memory (16.9 GB peak for a
# 2.42 GB model, found by tests/integration/test_large_model.py). The helpers below read one tensor at a time,
# count in chunks and copy external data file-to-file, so memory is bounded by the largest tensor.
# onnx has no streaming writer for external data (its save loads every tensor), hence hand-written.

_COPY_CHUNK = 64 << 20


def external_key(tensor: Any) -> tuple[str, int, int | None]:
    from onnx.external_data_helper import ExternalDataInfo

    info = ExternalDataInfo(tensor)
    return info.location, int(info.offset or 0), (int(info.length) if info.length is not None else None)


def uses_external(tensor: Any) -> bool:
    from onnx.external_data_helper import uses_external_data

    return bool(uses_external_data(tensor))


def tensor_array(tensor: Any, base_dir: str | Path) -> Any:
    """The tensor as a numpy array, its external data (if any) read from `base_dir`; the tensor
    itself is not changed (no data is loaded into the proto)."""
    from onnx import numpy_helper

    return numpy_helper.to_array(tensor, str(base_dir))


def count_nonzero(tensor: Any, base_dir: str | Path | None) -> int | None:
    """Non-zeros of an external tensor, read in chunks (bounded memory). None when the tensor is
    not external, its dtype has no plain numpy equivalent, or no folder is known."""
    import numpy as np
    from onnx import TensorProto, helper

    if base_dir is None or not uses_external(tensor):
        return None
    simple = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.INT8, TensorProto.UINT8,
              TensorProto.INT16, TensorProto.UINT16, TensorProto.INT32, TensorProto.UINT32, TensorProto.INT64,
              TensorProto.UINT64}
    if tensor.data_type not in simple:
        return None
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).newbyteorder("<")
    location, offset, length = external_key(tensor)
    count = 1
    for d in tensor.dims:
        count *= int(d)
    nbytes = count * dtype.itemsize if length is None else min(length, count * dtype.itemsize)
    chunk = max(dtype.itemsize, (_COPY_CHUNK // dtype.itemsize) * dtype.itemsize)
    nonzero = 0
    with open(Path(base_dir) / location, "rb") as fh:
        fh.seek(offset)
        left = nbytes
        while left > 0:
            buf = fh.read(min(chunk, left))
            if not buf:
                break
            nonzero += int(np.count_nonzero(np.frombuffer(buf, dtype=dtype)))
            left -= len(buf)
    return nonzero


def save_streaming(
    model: Any, path: str | Path, src_dir: str | Path, replace: dict[tuple[str, int, int | None], Any] | None = None,
    externalize_inline: bool = False,
) -> Path:
    """Save `model` (loaded without its external data) to `path`, its external tensors copied one
    by one from `src_dir` into one `NAME.onnx.data` file beside `path` (offsets rewritten).

    `replace` maps an external tensor's (location, offset, length) to a callable returning the new
    raw little-endian bytes for it (called once, when the writer reaches that tensor), so a pass
    can rewrite weights without holding them all. Inline tensors are left as they are, unless
    `externalize_inline` (then those of 1 KB or more move to the data file too, as onnx's own
    external-data save does). The caller's `model` ends up pointing at the new data file."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    src_dir = Path(src_dir)
    replace = replace or {}
    data_name = path.name + ".data"
    tensors = [t for t in _get_all_tensors(model) if uses_external(t) or (externalize_inline and _inline_bytes(t) >= 1024)]
    normalize_ir_version(model)
    if not tensors:
        onnx.save_model(model, str(path))
        return path
    tmp_data = path.parent / f".{data_name}.{os.getpid()}.tmp"  # the source may be the same file
    try:
        _copy_tensors(tensors, tmp_data, data_name, src_dir, replace)
        os.replace(tmp_data, path.parent / data_name)
    finally:
        tmp_data.unlink(missing_ok=True)
    onnx.save_model(model, str(path))
    return path


def _copy_tensors(tensors: list[Any], tmp_data: Path, data_name: str, src_dir: Path, replace: dict[Any, Any]) -> None:
    offset = 0
    with open(tmp_data, "wb") as out:
        for t in tensors:
            if not uses_external(t):  # an inline tensor moving out
                raw = _raw_bytes(t)
                out.write(raw)
                n = len(raw)
                del raw
                t.ClearField("raw_data")
                for f in _TYPED_FIELDS:
                    t.ClearField(f)
                t.data_location = t.EXTERNAL
                _set_location(t, data_name, offset, n)
                offset += n
                continue
            key = external_key(t)
            location, start, length = key
            if key in replace:
                raw = replace[key]()
                out.write(raw)
                n = len(raw)
                del raw
            else:
                n = 0
                with open(src_dir / location, "rb") as src:
                    src.seek(start)
                    left = length
                    while left is None or left > 0:
                        buf = src.read(_COPY_CHUNK if left is None else min(_COPY_CHUNK, left))
                        if not buf:
                            break
                        out.write(buf)
                        n += len(buf)
                        if left is not None:
                            left -= len(buf)
            _set_location(t, data_name, offset, n)
            offset += n


_TYPED_FIELDS = ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data")


def _set_location(t: Any, data_name: str, offset: int, length: int) -> None:
    del t.external_data[:]
    for k, v in (("location", data_name), ("offset", str(offset)), ("length", str(length))):
        entry = t.external_data.add()
        entry.key, entry.value = k, v


def _inline_bytes(t: Any) -> int:
    if uses_external(t) or t.data_type == t.STRING:
        return 0
    if t.HasField("raw_data"):
        return len(t.raw_data)
    return sum(len(getattr(t, f)) for f in _TYPED_FIELDS) * 4  # a lower bound: enough to compare with 1 KB


def _raw_bytes(t: Any) -> bytes:
    if t.HasField("raw_data"):
        return bytes(t.raw_data)
    from onnx import numpy_helper

    return bytes(numpy_helper.from_array(numpy_helper.to_array(t)).raw_data)
