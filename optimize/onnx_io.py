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
    caller's model stays self-contained and usable (found by tests/test_large_model.py)."""
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
    """`normalize_ir_version` for a file written by another tool (external data left in place)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    before = model.ir_version
    normalize_ir_version(model)
    if model.ir_version != before:
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

    The model is re-serialised beside the target under a temporary name and renamed into place, so a
    crash or Ctrl-C never leaves a file under the final name. Large models are saved into a temporary
    folder beside the target (same filesystem) with their data file, and both are renamed: data first,
    then the model that references it.
    """
    import shutil

    import onnx

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    model = load(model_path)
    if proto_bytes(model) <= EXTERNAL_DATA_THRESHOLD:
        return write_bytes_atomic(model.SerializeToString(), target)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        data_name = target.name + ".data"
        onnx.save_model(
            model, str(tmp_dir / target.name), save_as_external_data=True, all_tensors_to_one_file=True, location=data_name
        )
        for f in tmp_dir.iterdir():
            os.chmod(f, 0o666 & ~_umask())
        if (tmp_dir / data_name).exists():  # onnx keeps tensors under 1 KB inline
            os.replace(tmp_dir / data_name, target.parent / data_name)
        os.replace(tmp_dir / target.name, target)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
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
