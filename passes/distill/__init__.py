"""distill: train a student to match the teacher (the pipeline's input model): KL on
temperature-softened outputs × T², blended with the hard-label loss by alpha, plus optional feature
losses on named layer pairs.

Loss, per batch (classification, 2-D logits):

    alpha · KL(softmax(t/T) ‖ softmax(s/T)) · T²  +  (1 − alpha) · cross_entropy(s, labels)
    + Σ_pairs weight · MSE(proj(student_feature), teacher_feature)      (features: [...])

with s the student's and t the teacher's logits (Hinton et al. 2015; the T² keeps the gradient
scale independent of T). Without labels (unlabeled data, or random inputs drawn from the input
spec) the hard-label term is dropped (pure KD). Logits with more than two axes (e.g. per-token)
are distilled position by position. For `model.task: regression | embedding` the output loss is
the mean squared error (or 1 − cosine, `output_loss: cosine`) against the teacher's outputs,
blended with the MSE against float labels of the same shape when those exist. Feature pairs whose
widths differ get a learned projection (`passes/distill/features.py`).

The student is, by default, a deep copy of the current model, trained *through* whatever it
carries: torch parametrizations (pruning masks, fake quantization) and forward pre-hooks marked
`training_only` stay in place, so sparsity is kept and quantization-aware training happens here.
Weights that are exactly zero and not under a parametrization (pruning that left no mask) are held
at zero too (`keep_zeros`). With `student: {width | depth | factory}` the student is a smaller
architecture derived from the teacher (initialized from its weights) or the user's own
(`passes/distill/students.py`). The teacher is only run forward, in eval mode, under
`torch.no_grad()`; its weights are never touched.

Training: AdamW/Adam/SGD, linear warm-up then cosine/linear/constant learning rate, gradient
clipping, a time budget (`budget_minutes`: fewer epochs at the pace measured, the schedule
re-planned to end at the last one), evaluation on data.eval after every epoch for early stopping
and best-weights selection, safetensors checkpoints every N steps and `--resume`
(`optimize/train_checkpoint.py`); with a seed on the CPU, runs (and resumed runs) that make the same
timing-based choices (`amp: auto`'s autocast, `budget_minutes`' epochs) are bit-identical. Batches
come from a torch DataLoader (optional worker processes) over a DistributedSampler, so one process
and torchrun share one code path. On CUDA, training runs under autocast (bf16 where supported, else
fp16 with a grad scaler); on the CPU, under bf16 autocast where a timing probe of the run's own step
shows it pays (`cpu_autocast`), which needs AVX512-BF16 or AMX. When `torch.distributed` is
initialized (torchrun), the student is wrapped in DistributedDataParallel and each rank trains on
its shard of every epoch's shuffled order.

Written by hand: the loop is short, and no maintained library distills a model that carries
arbitrary parametrizations and hooks without also owning the model's construction.

Modules: `config` (settings), `distill_pass` (plan-time checks, the student, the result),
`setup` (data and device), `training` (the loop, a plain function prune's fine-tuning calls too),
`batches`, `devices`, `cpu_autocast`, `budget`, `loss`, `optim`, `evaluation`, `checkpoints`,
`features`, `students`, `teacher_cache`, `summary`.
Importing the package stays light: torch is imported inside the functions.
"""

from __future__ import annotations

from passes.distill.config import (
    RANDOM_SAMPLES_DEFAULT,
    DistillConfig,
    FeaturePairConfig,
    StudentConfig,
)
from passes.distill.distill_pass import DistillPass
from passes.distill.optim import lr_at

__all__ = [
    "RANDOM_SAMPLES_DEFAULT", "DistillConfig", "DistillPass", "FeaturePairConfig", "StudentConfig", "lr_at",
]
