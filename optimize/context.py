"""Plan- and run-time context handed to passes: device, threads, seed, data, work dir, progress."""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optimize.progress import NullProgress, Progress

if TYPE_CHECKING:
    from optimize.data import Dataset
    from optimize.handle import ModelHandle, TensorSpec

log = logging.getLogger("optimize")


@dataclass
class PlanContext:
    """What a pass may check before any work: the config, the data declared, the model's form."""

    config: Any
    input_form: str
    has_input_spec: bool
    index: int  # position of the pass being checked in `passes:`
    form_at_pass: str  # the model's form when this pass runs
    later: list[Any] = field(default_factory=list)  # the Pass objects after this one
    earlier: list[Any] = field(default_factory=list)
    model: Any = None  # the loaded input ModelHandle when known before any work (None for the built-in example)

    def has_data(self, role: str) -> bool:
        return getattr(self.config.data, role) is not None

    @property
    def key(self) -> str:
        return f"passes[{self.index}]"


@dataclass
class RunContext:
    config: Any
    work_dir: Path
    device: str = "cpu"
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    seed: int = 0
    progress: Progress = field(default_factory=NullProgress)
    input_model: ModelHandle | None = None  # the pipeline's input (the distillation teacher)
    baseline: ModelHandle | None = None  # the input model as FP32 ONNX, what every comparison is against
    inputs: list[TensorSpec] = field(default_factory=list)
    base_dir: Path = field(default_factory=Path.cwd)  # relative data paths resolve here
    _data: dict[str, Dataset | None] = field(default_factory=dict)
    step_index: int = 0
    resume: bool = False  # --resume: training passes continue from their latest checkpoint
    # a decoder LLM: the folder whose tokenizer / generation / genai_config files go beside the output
    # (set by the export step to its chosen graph's folder; None: the baseline's)
    serving_dir: Path | None = None

    @property
    def log(self) -> logging.Logger:
        return log

    def with_input_model(self, model: ModelHandle) -> RunContext:
        """A copy whose pipeline input (the distillation teacher) is `model`. The loaded datasets
        are shared, so a pass run inside another (prune's fine-tune) reads the same data."""
        return dataclasses.replace(self, input_model=model, _data=self._data)

    def step_dir(self, name: str) -> Path:
        """A fresh directory for one pass's outputs (passes never overwrite their input)."""
        d = self.work_dir / f"{self.step_index:02d}-{name}"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def data(self, role: str) -> Dataset | None:
        """The dataset for 'train', 'eval' or 'calibration' (calibration falls back to train)."""
        if role not in self._data:
            from optimize.data import load_dataset

            spec = getattr(self.config.data, role)
            if spec is None and role == "calibration":
                spec = self.config.data.train
            text: dict[str, Any] = {}
            if spec is not None and spec.source.lower().endswith((".txt", ".jsonl")):
                from optimize.frameworks.text_data import tokenizer_for

                text = {"tokenizer": tokenizer_for(self.config, self.input_model, self.base_dir),
                        "text_options": self.config.model.tokenizer}
            self._data[role] = (
                load_dataset(spec, self.inputs, self.base_dir, seed=self.seed, **text) if spec is not None else None
            )
        return self._data[role]

    def parity_count(self) -> int:
        """The samples parity reads, in the report and in the quantize pass's choices alike:
        measure.parity_samples, or every data.eval sample when the user gave more, up to
        PROBE_ELEMENTS input elements. Choosing on fewer than the gate judges let a choice pass on
        its samples and fail the gate (openwakeword's speech embedding: 0.982 on the first 64 of
        129 windows, 0.979 on all)."""
        import numpy as np

        from optimize.probes import PROBE_ELEMENTS

        cfg = self.config
        ds = self.data("eval") if cfg.data.eval is not None else None
        if ds is None or len(ds) <= cfg.measure.parity_samples:
            return int(cfg.measure.parity_samples)
        per_sample = sum(int(np.prod(np.shape(v)[1:])) for v in ds.inputs.values() if np.ndim(v) > 0) or 1
        return max(cfg.measure.parity_samples, min(len(ds), PROBE_ELEMENTS // per_sample))

    def sample_inputs(self, role: str, n: int) -> tuple[dict[str, Any], str]:
        """Up to `n` input samples: from the dataset for `role` if declared, else random inputs
        drawn from the input spec. Returns (name -> array, description of the source)."""
        ds = self.data(role)
        if ds is not None:
            return ds.take(n).inputs, f"data.{role if getattr(self.config.data, role) else 'train'}"
        from optimize.data import random_dataset
        from optimize.probes import RANDOM_IDS_SOURCE, RANDOM_SOURCE, probe_count, token_id_inputs

        self.resolve_shapes_from_data()
        source = RANDOM_IDS_SOURCE if token_id_inputs(self.inputs) else RANDOM_SOURCE
        return random_dataset(self.inputs, probe_count(self.inputs, n), self.seed).inputs, source

    def resolve_shapes_from_data(self) -> None:
        """Symbolic dims left to the data (token inputs of a model with text data): take the sizes
        of the first declared data set's arrays, so random probes match the data's shapes."""
        if not any(s.unresolved_axes() for s in self.inputs):
            return
        from optimize.shapes import resolve_from_data

        for role in ("eval", "calibration", "train"):
            ds = self.data(role) if getattr(self.config.data, role, None) is not None else None
            if ds is not None:
                self.inputs = resolve_from_data(self.inputs, ds.inputs)
                return
