"""Models the benchmark builds in code (no downloads): the MLP and a ResNet-18-style CNN.

Both are plain torch with random (seeded) weights, which is enough for speed and size; neither is
trained. Each class carries `input_spec` / `output_names`, so `optimize run bench.models:NAME`
knows its inputs without a `model.inputs` section (torchvision is not a dependency, hence the
hand-written ResNet).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

SEED = 0


class MLP(nn.Module):
    """Linear(1024→4096) → ReLU → Linear(4096→1024). Input `x`: (batch, 1024)."""

    input_spec = [{"name": "x", "shape": ["batch", 1024], "dtype": "float32"}]
    output_names = ["y"]

    def __init__(self, d_in: int = 1024, d_hidden: int = 4096, d_out: int = 1024) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, d_hidden)
        self.fc2 = nn.Linear(d_hidden, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


class BasicBlock(nn.Module):
    """conv3x3 → BN → ReLU → conv3x3 → BN, plus the identity (or a 1x1 conv + BN projection)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + identity)


class ResNet18Like(nn.Module):
    """ResNet-18's layout: 7x7/2 stem, max-pool, BasicBlock x [2, 2, 2, 2] at 64-128-256-512
    channels, global average pool, Linear(512 → 1000). Input `x`: (batch, 3, 224, 224)."""

    input_spec = [{"name": "x", "shape": ["batch", 3, 224, 224], "dtype": "float32"}]
    output_names = ["logits"]

    def __init__(self, widths: tuple[int, ...] = (64, 128, 256, 512), blocks: tuple[int, ...] = (2, 2, 2, 2),
                 num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        layers: list[nn.Module] = []
        c_in = widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks, strict=True)):
            stage = [BasicBlock(c_in, w, stride=1 if i == 0 else 2)]
            stage += [BasicBlock(w, w) for _ in range(n - 1)]
            layers.append(nn.Sequential(*stage))
            c_in = w
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _seeded(build: Any) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        module = build()
    return module.eval()


def mlp() -> nn.Module:
    """Factory `bench.models:mlp` (random weights, seed 0)."""
    return _seeded(MLP)


def resnet18_like() -> nn.Module:
    """Factory `bench.models:resnet18_like` (random weights, seed 0)."""
    return _seeded(ResNet18Like)
