"""The distill pass's settings: the student, feature pairs, and the training options."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from optimize.errors import PassError
from optimize.pass_api import PassConfig

RANDOM_SAMPLES_DEFAULT = 1024


class StudentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    width: float | None = Field(
        None, gt=0, lt=1,
        description="Derive the student from the teacher with this fraction of every layer's channels/neurons (structured pruning, output layer kept; kept weights come from the teacher).",
    )
    depth: float | None = Field(
        None, gt=0, lt=1,
        description="Derive the student from the teacher keeping this fraction of the blocks of its largest nn.ModuleList / nn.Sequential of repeated blocks (evenly spaced, first and last kept).",
    )
    depth_module: str | None = Field(
        None, min_length=1, description="With depth: the container whose blocks are dropped (e.g. 'encoder.layer'), instead of the largest one."
    )
    factory: str | None = Field(
        None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
        description="A student architecture of your own: 'package.module:callable' returning an nn.Module (called with no arguments).",
    )
    weights: str | None = Field(
        None, min_length=1, description="With factory: initial weights (.safetensors, or a state_dict loaded weights_only)."
    )

    @model_validator(mode="after")
    def _one_kind(self) -> StudentConfig:
        if self.width is None and self.depth is None and self.factory is None:
            raise ValueError("give width, depth or factory (omit student to train the current model)")
        if self.factory is not None and (self.width is not None or self.depth is not None):
            raise ValueError("factory cannot be combined with width or depth")
        if self.weights is not None and self.factory is None:
            raise ValueError("weights needs factory")
        if self.depth_module is not None and self.depth is None:
            raise ValueError("depth_module needs depth")
        return self


class FeaturePairConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    teacher: str = Field(min_length=1, description="Teacher layer name (as in named_modules(), e.g. 'layer2.0.conv1').")
    student: str = Field(min_length=1, description="Student layer name whose output should match it.")
    weight: float = Field(1.0, gt=0, le=1e6, description="Weight of this pair's loss.")


class DistillConfig(PassConfig):
    type: Literal["distill"] = Field("distill", description="Pass name: distill")
    epochs: int = Field(5, ge=1, le=100000, description="Passes over the training data (at most; early stopping may end sooner).")
    batch_size: int | None = Field(None, gt=0, description="Training batch size per process (default: data.batch_size).")
    lr: float = Field(1e-3, gt=0, le=10, description="Peak learning rate.")
    optimizer: Literal["adamw", "adam", "sgd"] = Field("adamw", description="Optimizer (sgd uses momentum 0.9).")
    weight_decay: float = Field(0.0, ge=0, description="Weight decay.")
    temperature: float = Field(4.0, gt=0, le=100, description="Softmax temperature T for the KD loss.")
    alpha: float = Field(
        0.7, ge=0, le=1, description="Weight of the KD loss; (1 - alpha) weighs the hard-label loss when labels exist."
    )
    lr_schedule: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="Learning rate after warm-up: cosine decay to 0, linear decay to 0, or constant."
    )
    warmup_steps: int = Field(0, ge=0, le=10_000_000, description="Steps of linear learning-rate warm-up from lr/warmup_steps to lr.")
    grad_clip: float | None = Field(None, gt=0, description="Clip the global gradient norm to this value (none: no clipping).")
    student: StudentConfig | None = Field(
        None, description="The student: omitted = the current model (after prune/quantize); or width / depth / factory."
    )
    features: list[FeaturePairConfig] = Field(
        default_factory=list, description="Feature distillation: teacher/student layer pairs whose outputs are matched (a learned projection maps differing widths)."
    )
    feature_loss: Literal["mse", "cosine"] = Field("mse", description="Loss between projected student and teacher features.")
    output_loss: Literal["mse", "cosine"] = Field(
        "mse", description="For model.task regression/embedding: MSE or 1 − cosine between student and teacher outputs."
    )
    early_stopping_patience: int | None = Field(
        None, ge=1, le=100000, description="Stop after this many epochs without improvement of the eval metric (needs data.eval)."
    )
    min_delta: float = Field(0.0, ge=0, description="Smallest eval-metric gain that counts as an improvement.")
    train_mode: bool = Field(
        True,
        description="Train the student in training mode (dropout active, batch-norm statistics updated). false: in "
        "inference mode (dropout off, batch-norm statistics frozen) while its weights train — for matching a "
        "teacher's exact outputs on little data (pruned all-MiniLM-L6-v2, one epoch of 2,000 lines: embedding "
        "cosine mean 0.925 / min 0.749 against 0.917 / 0.735 with dropout; docs/distill.md).",
    )
    freeze: list[str] = Field(
        default_factory=list,
        description="Student parameters left as they are: glob patterns of parameter names (as in named_parameters(), "
        "e.g. '*embeddings*', '*.attention.*'); each must match at least one. Fewer weights to update trains faster: "
        "the pruned all-MiniLM-L6-v2 with embeddings and attention frozen (81% of its weights) trained ~1.35x the "
        "samples/s, and 6 frozen epochs ended slightly above 4 unfrozen ones in about the same time (docs/distill.md).",
    )
    keep_best: bool = Field(
        False, description="Return the weights of the epoch with the best eval metric, not the last (needs data.eval); the starting weights count as epoch 0 (eval_metric_start), so a run that only made the student worse returns it unchanged; with early_stopping_patience, epochs then count as bad until one beats the start.",
    )
    checkpoint_every: int | None = Field(
        None, ge=1, le=100_000_000, description="Write a safetensors checkpoint every N steps (resume with --resume)."
    )
    checkpoint_dir: str | None = Field(
        None, min_length=1, description="Checkpoint folder (default: optimize-checkpoints/stepNN-distill in the working directory)."
    )
    channels_last: Literal["auto"] | bool = Field(
        "auto",
        description="Feed 4-D inputs in channels-last memory format (convolutions and pooling then run channels-last; often faster on CPU and GPU): true, false, or auto (on for models with Conv2d layers when a probe forward works).",
    )
    num_workers: int = Field(0, ge=0, le=64, description="DataLoader worker processes for training batches (0: load in the training process).")
    keep_zeros: bool = Field(
        True,
        description="Hold weights that are exactly zero (and not under a parametrization) at zero while training, so sparsity from pruning that left no mask is kept.",
    )
    budget_minutes: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="Train at most about this long: once a fifth of the first epoch has run and after every epoch, the epochs are planned to what fits at the pace measured (fewer than `epochs`, or more again up to it while a whole epoch of the schedule is left), the last possibly the first steps of one (its batches are shuffled), and the learning-rate schedule is re-planned to end with them, so a slower machine trains fewer epochs instead of running over. Counts the epochs (with their evaluation on data.eval), not the setup before them nor the evaluation after. text_variants rounds of epochs past a cut go untrained. The step's metrics (epochs_in_budget, e.g. 2.75) and notes say how many fit; a resumed run may change it.",
    )
    amp: Literal["auto"] | bool = Field(
        "auto",
        description="Train under autocast. On CUDA, true and auto both use bf16 where supported, else fp16 with loss scaling. On the CPU, true uses bf16 and auto uses it only where a timing probe of the run's own training step shows it at least 1.3x faster (CPUs with AVX512-BF16 or AMX; one process, not under torchrun; not for a student with forward hooks of its own, such as quantization-aware training's; the step's metrics say what was measured, amp_choice). The probe also times bf16 with transformers' eager attention and trains that way, for the training only, where that is the fastest (on an Intel Xeon with AMX, PyTorch's SDPA gained nothing from bf16: the pruned all-MiniLM-L6-v2's step 1.61x faster with eager attention, 1.04x with SDPA). A resumed run keeps its first choice (decided again on a host without native bf16). false: fp32 everywhere.",
    )
    random_samples: int = Field(
        RANDOM_SAMPLES_DEFAULT,
        ge=1,
        le=10_000_000,
        description="Without data.train: how many random inputs to draw from the input spec (teacher outputs are the targets).",
    )

    @model_validator(mode="after")
    def _unique_pairs(self) -> DistillConfig:
        seen = set()
        for pair in self.features:
            if (pair.teacher, pair.student) in seen:
                raise ValueError(f"feature pair {pair.teacher} -> {pair.student} is listed twice")
            seen.add((pair.teacher, pair.student))
        return self


def fail(message: str) -> Any:
    """Stop the pass with one line (every training error is the distill pass's)."""
    raise PassError("distill", message)
