"""The built-in example: a small CNN for scikit-learn's 8x8 handwritten digits.

`optimize run` with no MODEL optimizes this network, so a new user sees the whole toolchain work
on a real data set with one command and no download: the digits ship inside scikit-learn.

The teacher is trained once (a few seconds on two CPU cores) and cached as a safetensors
state_dict under `$OPTIMIZE_CACHE` (default `$XDG_CACHE_HOME/optimize`, else `~/.cache/optimize`),
in `example/digits_cnn-v1.safetensors`. The version tag is part of the file name, so a change to
the architecture or the recipe (bump `VERSION`) never loads stale weights. Writes are atomic
(temporary file + rename), so parallel runs and interrupted runs never leave a broken cache file.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger("optimize")

VERSION = "v1"
FACTORY = "optimize.example:digits_cnn"
WEIGHTS_NAME = f"digits_cnn-{VERSION}.safetensors"
TRAIN_EPOCHS = 25
BATCH = 128
LR = 1e-2
MIN_ACCURACY = 97.0  # percent on the fixed digits test split; below this a warning is logged

INPUT_SPEC: list[dict[str, Any]] = [{"name": "x", "shape": ["batch", 1, 8, 8], "dtype": "float32"}]
OUTPUT_NAMES = ["logits"]


def _build_class() -> type:
    import torch
    import torch.nn.functional as F
    from torch import nn

    class DigitsCNN(nn.Module):
        """conv(1→w) → ReLU → conv(w→2w) → ReLU → maxpool 2 → linear(32w→hidden) → ReLU → linear(→10).

        Input `x`: (batch, 1, 8, 8) float32 in [0, 1]; output `logits`: (batch, 10).
        """

        input_spec = INPUT_SPEC
        output_names = OUTPUT_NAMES

        def __init__(self, width: int = 16, hidden: int = 64, num_classes: int = 10) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(1, width, kernel_size=3, padding=1)
            self.conv2 = nn.Conv2d(width, 2 * width, kernel_size=3, padding=1)
            self.pool = nn.MaxPool2d(2)
            self.fc1 = nn.Linear(2 * width * 4 * 4, hidden)
            self.fc2 = nn.Linear(hidden, num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = F.relu(self.conv1(x))
            x = self.pool(F.relu(self.conv2(x)))
            x = torch.flatten(x, 1)
            return self.fc2(F.relu(self.fc1(x)))

    DigitsCNN.__module__ = __name__
    DigitsCNN.__qualname__ = "DigitsCNN"
    return DigitsCNN


_CLASS: type | None = None


def __getattr__(name: str) -> Any:
    # `DigitsCNN` is built on first access so importing this module does not import torch.
    if name == "DigitsCNN":
        global _CLASS
        if _CLASS is None:
            _CLASS = _build_class()
        return _CLASS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def digits_cnn(width: int = 16, hidden: int = 64) -> Any:
    """The example architecture, untrained (the factory `optimize.example:digits_cnn`)."""
    cls = __getattr__("DigitsCNN")
    return cls(width=width, hidden=hidden)


def accuracy(module: Any, x: Any, y: Any, batch_size: int = 512) -> float:
    """Top-1 accuracy in percent of `module` on numpy arrays `x`, `y` (eval mode, no grad)."""
    import torch

    was_training = module.training
    module.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            logits = module(torch.from_numpy(x[start : start + batch_size]))
            correct += int((logits.argmax(-1).numpy() == y[start : start + batch_size]).sum())
    module.train(was_training)
    return 100.0 * correct / max(len(x), 1)


def train_teacher(path: str | Path, seed: int = 0, epochs: int = TRAIN_EPOCHS) -> float:
    """Train the example network on the digits train split and save its weights to `path`.

    Recipe: AdamW (lr 1e-2, weight decay 1e-2) with a one-cycle schedule, batch 128, and a random
    shift of up to one pixel per batch as augmentation; about 99% test accuracy in a few seconds.
    Deterministic for a given seed (single-threaded, own RNG state; the global RNG is untouched).
    Writes a safetensors state_dict atomically. Returns the test-split top-1 accuracy in percent.
    """
    import torch
    from safetensors.torch import save_file

    from optimize.data import digits

    x_tr, y_tr = digits("train")
    x_te, y_te = digits("test")
    threads = torch.get_num_threads()
    # One thread: the network is so small that more threads only add overhead (and contend badly
    # on busy machines), and results are then bit-identical whatever the core count.
    torch.set_num_threads(1)
    try:
        model = _fit(x_tr, y_tr, seed, epochs)
    finally:
        torch.set_num_threads(threads)
    acc = accuracy(model, x_te, y_te)
    if acc < MIN_ACCURACY:
        log.warning("example teacher reached only %.1f%% test accuracy (expected ≥ %.0f%%)", acc, MIN_ACCURACY)
    else:
        log.debug("example teacher: %.2f%% test accuracy after %d epochs", acc, epochs)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    meta = {"version": VERSION, "seed": str(seed), "epochs": str(epochs), "test_accuracy": f"{acc:.2f}"}
    _atomic_save(state, meta, Path(path), save_file)
    return acc


def _fit(x_tr: Any, y_tr: Any, seed: int, epochs: int) -> Any:
    import numpy as np
    import torch
    import torch.nn.functional as F

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = digits_cnn()
        steps_per_epoch = -(-len(x_tr) // BATCH)
        opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=1e-2)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=epochs * steps_per_epoch)
        rng = np.random.default_rng(seed)
        xt, yt = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
        model.train()
        for _ in range(epochs):
            order = torch.from_numpy(rng.permutation(len(x_tr)))
            for start in range(0, len(order), BATCH):
                idx = order[start : start + BATCH]
                # augmentation: shift the batch by up to one pixel in each direction
                dx, dy = rng.integers(0, 3, size=2)
                xb = F.pad(xt[idx], (1, 1, 1, 1))[:, :, dy : dy + 8, dx : dx + 8]
                loss = F.cross_entropy(model(xb), yt[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    model.eval()
    return model


def _atomic_save(state: dict[str, Any], meta: dict[str, str], path: Path, save_file: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(state, tmp, metadata=meta)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the cache holds nothing secret
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cache_dir() -> Path:
    """Root of optimize's cache: $OPTIMIZE_CACHE, else $XDG_CACHE_HOME/optimize, else ~/.cache/optimize."""
    env = os.environ.get("OPTIMIZE_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "optimize"


def _valid(path: Path) -> bool:
    """The cached file exists, is our version, and loads strictly into the architecture."""
    if not path.is_file():
        return False
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}).get("version") != VERSION:
                return False
        from optimize.loaders import load_weights

        load_weights(digits_cnn(), path)
    except Exception:
        return False
    return True


def ensure_teacher() -> Path:
    """Path of the trained example weights; trains and caches them on first use (a few seconds).

    Falls back to a folder under the system temp dir when the cache folder is not writable.
    """
    path = cache_dir() / "example" / WEIGHTS_NAME
    if _valid(path):
        return path
    log.info("training the example digits teacher once (cached at %s)", path)
    try:
        train_teacher(path)
    except OSError as exc:
        fallback = Path(tempfile.gettempdir()) / f"optimize-cache-{os.getuid() if hasattr(os, 'getuid') else 0}"
        path = fallback / "example" / WEIGHTS_NAME
        log.warning("cache folder not writable (%s); using %s", exc, path)
        if not _valid(path):
            train_teacher(path)
    return path


def example_model_spec() -> tuple[str, Path]:
    """(factory string, weights path) for the built-in example; trains the teacher if needed."""
    return FACTORY, ensure_teacher()
