"""The teacher's targets computed once and reused across epochs.

The teacher runs forward only, in eval mode, on the same samples every epoch: from the second
epoch on its outputs are known. When they are one vector per sample (logits, a pooled
embedding) and fit TEACHER_CACHE_BYTES, they are kept on the CPU, indexed by sample, and the
teacher's forward pass is skipped for every sample it has seen. Not cached: runs with feature
distillation (the teacher's hidden states are needed every step) and outputs that are not a
tensor of one vector per sample (their size would depend on the batch's length).
"""

from __future__ import annotations

from typing import Any

TEACHER_CACHE_BYTES = 1 << 30  # 1 GiB of targets at most (6,700 MiniLM embeddings take 10 MB)


class TeacherCache:
    """Per-sample teacher outputs; `get` answers only when every sample of a batch is known."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.values: Any = None
        self.known: Any = None
        self.disabled = False

    @classmethod
    def for_run(cls, cfg: Any, n: int, metrics: dict[str, Any]) -> TeacherCache | None:
        if cfg.features:
            metrics["teacher_targets"] = "computed every step (feature distillation needs the teacher's hidden states)"
            return None
        metrics["teacher_targets"] = "computed once per sample and reused across epochs"
        return cls(n)

    def get(self, idx: Any, device: Any) -> Any:
        if self.disabled or self.known is None or not bool(self.known[idx].all()):
            return None
        return self.values[idx].to(device, non_blocking=True)

    def put(self, idx: Any, out: Any, metrics: dict[str, Any]) -> None:
        import torch

        if self.disabled:
            return
        if self.values is None:
            why = self._unfit(out)
            if why:
                self.disabled = True
                metrics["teacher_targets"] = f"computed every step ({why})"
                return
            self.values = torch.empty((self.n, out.shape[1]), dtype=out.dtype)
            self.known = torch.zeros(self.n, dtype=torch.bool)
        self.values[idx] = out.detach().to("cpu")
        self.known[idx] = True

    def _unfit(self, out: Any) -> str | None:
        import torch

        if not isinstance(out, torch.Tensor) or out.dim() != 2:
            return "its outputs are not one vector per sample"
        size = self.n * out.shape[1] * out.element_size()
        if size > TEACHER_CACHE_BYTES:
            return f"{size / 2**30:.1f} GiB of targets would exceed the {TEACHER_CACHE_BYTES / 2**30:.0f} GiB cache"
        return None
