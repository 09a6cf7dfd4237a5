"""Helpers shared by test modules in any folder (`from helpers import ...`: tests/ is on sys.path
because tests/conftest.py lives there). Tiny model builders live in tiny_models.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from optimize.config import load_config_text
from optimize.context import RunContext
from optimize.handle import ModelHandle

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent  # the repository root, wherever the importing test module sits


def child_pythonpath() -> str:
    """PYTHONPATH for a child process: the repository first, then what this process was given (where
    dependencies come from PYTHONPATH rather than an installed environment)."""
    import os

    return os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)

EMPTY_CONFIG = "schema_version: 1\npasses: []\n"


def make_ctx(work_dir: Path, config: Any = EMPTY_CONFIG, *, inputs: Any = None, **fields: Any) -> RunContext:
    """A RunContext for calling one pass directly. `config`: YAML text or a loaded config;
    `inputs`: the TensorSpecs the pass feeds (default: those of `input_model`); other fields go to
    RunContext (threads, input_model, base_dir, resume, progress); None leaves a field's default."""
    cfg = load_config_text(config) if isinstance(config, str) else config
    fields = {k: v for k, v in fields.items() if v is not None}
    if inputs is None and "input_model" in fields:
        inputs = fields["input_model"].inputs
    return RunContext(config=cfg, work_dir=work_dir, inputs=list(inputs or []), **fields)


def rewrite_ctx(work_dir: Path, mode: str = "auto", device: str = "cpu") -> Any:
    """The slice of a run context the graph rewrites after the passes read (optimize/rewrite_step.py:
    skip_layernorm, softmax_guard, pad_trim): each set to `mode`, short timing, one thread."""
    from types import SimpleNamespace

    from optimize.progress import NullProgress

    cfg = SimpleNamespace(output=SimpleNamespace(skip_layernorm=mode, softmax_guard=mode, pad_trim=mode),
                          measure=SimpleNamespace(warmup=1, repeat=5, speed_tolerance=0.03))
    return SimpleNamespace(config=cfg, device=device, work_dir=work_dir, threads=1, progress=NullProgress())


def distill_ctx(work_dir: Path, teacher: ModelHandle, body: str, **fields: Any) -> RunContext:
    """make_ctx for a distill pass: `body` is the pipeline YAML after `schema_version`, `teacher`
    the pipeline's input model; one thread, so the training is deterministic."""
    return make_ctx(work_dir, "schema_version: 1\n" + body, input_model=teacher, threads=1, **fields)


class StopAfterEpochs:
    """A progress display that interrupts a distillation (Ctrl-C) once `n` of its epochs have ended
    (advances of one step; a budget's re-plan advances by none)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def start(self, *a: Any, **k: Any) -> None:
        pass

    def advance(self, key: str, steps: int = 1, info: str | None = None) -> None:
        if key == "distill" and steps == 1 and info != "resumed":
            self.n -= 1
            if self.n == 0:
                raise KeyboardInterrupt

    def finish(self, *a: Any, **k: Any) -> None:
        pass


def run_first_pass(ctx: RunContext, model: ModelHandle) -> Any:
    """Run the first pass of `ctx.config` on `model` (its class found by name, as the pipeline does)."""
    from optimize import registry

    pcfg = ctx.config.passes[0]
    return registry.get(pcfg.type)(pcfg).run(model, ctx)


def onnx_handle(path: Path, inputs: Any, outputs: Any = ("y",)) -> ModelHandle:
    return ModelHandle(form="onnx", inputs=list(inputs), outputs=list(outputs), onnx_path=path)


def torch_handle(module: Any, inputs: Any, outputs: Any = ("y",)) -> ModelHandle:
    return ModelHandle(form="torch", inputs=list(inputs), outputs=list(outputs), module=module)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two outputs, flattened, in float64."""
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def digits_teacher(weights: Path) -> Any:
    """The built-in digits CNN with the given weights, in eval mode (the distillation teacher)."""
    from optimize import example
    from optimize.loaders import load_weights

    m = example.digits_cnn()
    load_weights(m, weights)
    return m.eval()


def eval_data_yaml(folder: Path, name: str, shape: tuple[int, ...], n: int = 64, seed: int = 0,
                   normal: bool = False) -> str:
    """A `data:` section whose eval set is `n` samples of `shape` for input `name`, uniform in [0, 1)
    like the input spec's random probes (standard normal with `normal`), written to FOLDER/eval.npz: data the user gave, as the
    accuracy-aware fallback requires (it does not steer by random probes)."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "eval.npz"
    rng = np.random.default_rng(seed)
    values = rng.standard_normal((n, *shape)) if normal else rng.random((n, *shape))
    np.savez(path, **{name: values.astype(np.float32)})
    return f"data:\n  eval: {{source: '{path}'}}\n"
