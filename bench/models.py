"""Models the benchmark builds in code (no downloads): the MLP, a ResNet-18-style CNN, a 6-layer
BERT-style encoder, and Zipf-distributed token sequences to feed the encoder.

All are plain torch with random (seeded) weights, which is enough for speed and size; none is
trained. Each class carries `input_spec` / `output_names`, so `optimize run bench.models:NAME`
knows its inputs without a `model.inputs` section (torchvision is not a dependency, hence the
hand-written ResNet).
"""

from __future__ import annotations

from typing import Any

import numpy as np
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


class BertLike(nn.Module):
    """A 6-layer BERT-style encoder: token embedding → LayerNorm → 6 × nn.TransformerEncoderLayer
    (post-norm, GELU, hidden 384, 12 heads, FFN 1536, no dropout). Input `ids`: int64 (batch, 128)
    token ids in [0, vocab); output `hidden`: (batch, 128, 384), the last hidden states (what a
    BERT encoder returns; the bench compares all of them, per sample, rather than a pooled vector).
    The vocabulary is 8000 tokens (not BERT's 30522) so the files stay small; no position
    embeddings (they add no compute worth measuring)."""

    input_spec = [{"name": "ids", "shape": ["batch", 128], "dtype": "int64", "low": 0, "high": 8000}]
    output_names = ["hidden"]

    def __init__(self, vocab: int = 8000, d: int = 384, heads: int = 12, ffn: int = 1536, layers: int = 6) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.norm = nn.LayerNorm(d)
        self.layers = nn.ModuleList([
            nn.TransformerEncoderLayer(d, heads, ffn, dropout=0.0, activation="gelu", batch_first=True)
            for _ in range(layers)
        ])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.emb(ids))
        for layer in self.layers:
            x = layer(x)
        return x


BERT_VOCAB, BERT_SEQ = 8000, 128


def zipf_tokens(n: int, seed: int, vocab: int = BERT_VOCAB, seq: int = BERT_SEQ, a: float = 1.0,
                shift: float = 2.7) -> np.ndarray:
    """`n` token sequences whose ids follow a Zipf–Mandelbrot law, p(rank r) ∝ 1 / (r + shift)^a —
    the shape of word frequencies in text — with ranks mapped to ids by a fixed permutation.
    Uniform ids (the input spec's random inputs) are unlike text: every id equally rare."""
    ranks = np.arange(1, vocab + 1, dtype=np.float64)
    p = 1.0 / (ranks + shift) ** a
    p /= p.sum()
    ids_of_rank = np.random.default_rng(12345).permutation(vocab)
    rng = np.random.default_rng(seed)
    return ids_of_rank[rng.choice(vocab, size=(n, seq), p=p)].astype(np.int64)


def zipf_train() -> dict[str, np.ndarray]:
    """Data source `bench.models:zipf_train`: 4096 unlabeled Zipf token sequences (seed 1); configs
    take fewer with `samples:`."""
    return {"ids": zipf_tokens(4096, seed=1)}


def zipf_eval() -> dict[str, np.ndarray]:
    """Data source `bench.models:zipf_eval`: 64 unlabeled Zipf token sequences (seed 2), held out."""
    return {"ids": zipf_tokens(64, seed=2)}


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


def bert_like() -> nn.Module:
    """Factory `bench.models:bert_like` (random weights, seed 0)."""
    return _seeded(BertLike)
