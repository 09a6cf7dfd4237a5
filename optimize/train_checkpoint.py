"""Training checkpoints in safetensors: model, projections, optimizer state and RNG, every N steps.

A checkpoint is one `.safetensors` file named `step-NNNNNNNN.safetensors`: the tensors of the
trained module's state_dict (`model.*`), the optimizer's per-parameter state (`optim.<i>.<name>`),
the best weights so far (`best.*`, when best-checkpoint selection is on) and torch's CPU RNG state
(`rng.cpu`); everything else (step, epoch, loss history, optimizer hyper-parameters, a fingerprint
of the run's configuration) is JSON in the file's metadata. Files are written under a temporary
name and renamed into place, so an interrupted write never leaves a truncated checkpoint; the
newest `keep` files are kept.

Hand-written because safetensors stores flat tensors only: the optimizer's nested state has to be
flattened into tensors plus JSON, which torch's own `torch.save` (pickle) would not need but is
not a safe format to load from a shared directory.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from optimize.errors import ConfigError

PATTERN = re.compile(r"^step-(\d{8})\.safetensors$")


def latest(directory: Path) -> Path | None:
    if not directory.is_dir():
        return None
    found = sorted((int(m.group(1)), p) for p in directory.iterdir() if (m := PATTERN.match(p.name)))
    return found[-1][1] if found else None


def save(
    directory: Path,
    step: int,
    model_state: dict[str, Any],
    optimizer: Any,
    meta: dict[str, Any],
    best_state: dict[str, Any] | None = None,
    keep: int = 2,
) -> Path:
    import torch
    from safetensors.torch import save_file

    tensors: dict[str, Any] = {}
    for k, v in model_state.items():
        tensors[f"model.{k}"] = v.detach().to("cpu").contiguous()
    if best_state is not None:
        for k, v in best_state.items():
            tensors[f"best.{k}"] = v.detach().to("cpu").contiguous()
    opt = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in opt["state"].items():
        for name, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{name}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(pid), {})[name] = value
    tensors["rng.cpu"] = torch.get_rng_state()
    metadata = {
        "meta": json.dumps(meta),
        "param_groups": json.dumps(opt["param_groups"]),
        "optim_scalars": json.dumps(scalars),
        "has_best": "1" if best_state is not None else "0",
    }
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"step-{step:08d}.safetensors"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    old = sorted((int(m.group(1)), p) for p in directory.iterdir() if (m := PATTERN.match(p.name)))
    for _, p in old[:-keep]:
        p.unlink(missing_ok=True)
    return path


def load(path: Path, fingerprint: str, key: str) -> dict[str, Any]:
    """The checkpoint's parts: model, best (or None), optim (a torch optimizer state_dict), rng, meta."""
    import torch
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except Exception as exc:
        raise ConfigError(f"cannot read checkpoint {path} ({type(exc).__name__}: {exc}); remove it or run without --resume", key=key) from None
    meta = json.loads(metadata.get("meta", "{}"))
    if meta.get("fingerprint") != fingerprint:
        raise ConfigError(
            f"checkpoint {path} was written by a different run configuration (distill options, student "
            "architecture, data size, batch or process count differ); remove the checkpoint folder or run "
            "without --resume",
            key=key,
        )
    model = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    best = {k[len("best."):]: v for k, v in tensors.items() if k.startswith("best.")} if metadata.get("has_best") == "1" else None
    state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    for pid, values in json.loads(metadata.get("optim_scalars", "{}")).items():
        state.setdefault(int(pid), {}).update(values)
    optim = {"state": state, "param_groups": json.loads(metadata["param_groups"])}
    for group in optim["param_groups"]:  # JSON turned tuples (betas) into lists
        for name, value in list(group.items()):
            if isinstance(value, list) and name != "params":
                group[name] = tuple(value)
    return {"model": model, "best": best, "optim": optim, "rng": tensors.get("rng.cpu", torch.get_rng_state()), "meta": meta}
