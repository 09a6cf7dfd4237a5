"""Tiny models built in code, importable by tests (`from tiny_models import ...`).

Kept out of conftest.py: a module named `conftest` is shadowed by any conftest.py in a sub-folder.
"""

from __future__ import annotations

from pathlib import Path

IN_FEATURES = 8
HIDDEN = 16
OUT_FEATURES = 4


def make_mlp(seed: int = 0):
    """Linear(8,16) → ReLU → Linear(16,4), deterministic for a seed, in eval mode."""
    import torch

    torch.manual_seed(seed)
    m = torch.nn.Sequential(
        torch.nn.Linear(IN_FEATURES, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, OUT_FEATURES)
    )
    return m.eval()


def export_onnx(module, path: Path, in_features: int = IN_FEATURES, opset: int = 17) -> Path:
    """Export with the TorchScript exporter: input 'x' (batch, in_features), output 'y'."""
    import torch

    with torch.no_grad():
        torch.onnx.export(
            module,
            (torch.randn(2, in_features),),
            str(path),
            dynamo=False,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
            opset_version=opset,
        )
    return path
