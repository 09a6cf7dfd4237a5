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
widths differ get a learned projection (`passes/distill_features.py`).

The student is, by default, a deep copy of the current model, trained *through* whatever it
carries: torch parametrizations (pruning masks, fake quantization) and forward pre-hooks marked
`training_only` stay in place, so sparsity is kept and quantization-aware training happens here.
Weights that are exactly zero and not under a parametrization (pruning that left no mask) are held
at zero too (`keep_zeros`). With `student: {width | depth | factory}` the student is a smaller
architecture derived from the teacher (initialized from its weights) or the user's own
(`passes/students.py`). The teacher is only run forward, in eval mode, under
`torch.no_grad()`; its weights are never touched.

Training: AdamW/Adam/SGD, linear warm-up then cosine/linear/constant learning rate, gradient
clipping, evaluation on data.eval after every epoch for early stopping and best-weights selection,
safetensors checkpoints every N steps and `--resume` (`optimize/train_checkpoint.py`); with a seed
on the CPU, runs (and resumed runs) are bit-identical. Batches come from a torch DataLoader
(optional worker processes) over a DistributedSampler, so one process and torchrun share one code
path. On CUDA, training runs under autocast (bf16 where supported, else fp16 with a grad scaler).
When `torch.distributed` is initialized (torchrun), the student is wrapped in
DistributedDataParallel and each rank trains on its shard of every epoch's shuffled order.

Written by hand: the loop is short, and no maintained library distills a model that carries
arbitrary parametrizations and hooks without also owning the model's construction.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from optimize.errors import ConfigError, PassError
from optimize.pass_api import Pass, PassConfig

if TYPE_CHECKING:
    from optimize.context import PlanContext, RunContext
    from optimize.data import Dataset
    from optimize.handle import ModelHandle
    from optimize.pass_api import PassResult

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
    keep_best: bool = Field(
        False, description="Return the weights of the epoch with the best eval metric, not the last (needs data.eval)."
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
    amp: bool = Field(
        True, description="On CUDA, train under autocast (bf16 where supported, else fp16 with loss scaling); ignored on CPU."
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


class _Batches:
    """Map-style dataset for a DataLoader whose sampler yields index lists: one item = one batch."""

    def __init__(self, arrays: list[Any], labels: Any) -> None:
        import numpy as np
        import torch

        # torch tensors sharing the arrays' memory; batches are gathered by torch (index_select),
        # whose outputs are allocated (aligned) by torch like any other activation
        self.arrays = [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]
        self.labels = None if labels is None else torch.from_numpy(np.ascontiguousarray(labels))

    def __getitem__(self, idx: Any) -> tuple[list[Any], Any]:
        import torch

        index = torch.as_tensor(idx, dtype=torch.long)
        xs = [a.index_select(0, index) for a in self.arrays]
        y = None if self.labels is None else self.labels.index_select(0, index)
        return xs, y

    def __len__(self) -> int:
        return len(self.arrays[0])


def _as_batch(item: Any) -> Any:
    return item


class DistillPass(Pass):
    name = "distill"
    summary = (
        "Train a student (the current pruned/quantization-simulated model, or one derived from the teacher by "
        "width/depth, or a factory) to match the input model (the teacher): KL on temperature-softened logits × T² "
        "blended with the hard-label loss by alpha, optional feature losses; masks and fake quantization stay applied."
    )
    config_cls = DistillConfig
    accepts = frozenset({"torch"})
    trains = True
    config: DistillConfig
    _key = "distill"

    # ------------------------------------------------------------------ plan time

    def check(self, plan: PlanContext) -> None:
        cfg = self.config
        self._key = plan.key
        if plan.input_form == "onnx":
            raise ConfigError(
                "distill needs the teacher in torch form; the input model is ONNX (no ONNX→torch converter)",
                key=plan.key,
            )
        if plan.form_at_pass == "onnx":
            raise ConfigError(
                "distill trains the torch model, but an earlier pass leaves it in ONNX form "
                "(no ONNX→torch converter); move distill before that pass",
                key=plan.key,
            )
        if not plan.has_data("train") and not plan.has_input_spec:
            raise ConfigError(
                "distill needs training data (data.train) or declared model.inputs for unlabeled random inputs",
                key=plan.key,
            )
        if cfg.student is not None:
            earlier = [p.name for p in plan.earlier if p.name != "export"]
            if earlier:
                raise ConfigError(
                    f"student builds a new model from the teacher, so what {', '.join(earlier)} did before distill "
                    "would be discarded; put those passes after distill (or omit student to train the current model)",
                    key=f"{plan.key}.student",
                )
            if (cfg.student.width is not None or cfg.student.depth is not None) and not plan.has_input_spec:
                raise ConfigError(
                    "student.width/depth trace the model with example inputs: declare model.inputs (name, shape, dtype)",
                    key=f"{plan.key}.student",
                )
            if cfg.student.factory:
                self._check_factory(cfg.student.factory, plan)
        if (cfg.keep_best or cfg.early_stopping_patience) and not plan.has_data("eval"):
            what = "keep_best" if cfg.keep_best else "early_stopping_patience"
            raise ConfigError(f"{what} selects on the eval metric: declare data.eval", key=f"{plan.key}.{what}")
        module = getattr(getattr(plan, "model", None), "module", None)
        if cfg.features and module is not None:
            from passes.distill_features import check_names

            names_kept = cfg.student is None or (cfg.student.depth is None and cfg.student.factory is None)
            check_names(cfg.features, module, module if names_kept else None, plan.key)

    def _check_factory(self, spec: str, plan: PlanContext) -> None:
        import importlib
        import importlib.util

        module_name, _, attr = spec.partition(":")
        key = f"{plan.key}.student.factory"
        try:
            found = importlib.util.find_spec(module_name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            import sys
            from pathlib import Path

            if str(Path.cwd()) not in sys.path:
                sys.path.insert(0, str(Path.cwd()))
            try:
                found = importlib.util.find_spec(module_name) is not None
            except (ImportError, ValueError):
                found = False
        if not found:
            raise ConfigError(f"cannot find module '{module_name}' for the student factory '{spec}'", key=key)

    # ------------------------------------------------------------------ run time

    def run(self, model: ModelHandle, ctx: RunContext) -> PassResult:
        import torch

        from optimize.pass_api import PassResult

        cfg = self.config
        fail = self._fail
        if model.form != "torch" or model.module is None:
            fail(f"needs the model in torch form (got {model.form})")
        teacher_handle = ctx.input_model
        if teacher_handle is None or teacher_handle.form != "torch" or teacher_handle.module is None:
            fail("needs the teacher (the pipeline's input model) in torch form")
        teacher = teacher_handle.module
        task = getattr(getattr(ctx.config, "model", None), "task", "classification")
        notes: list[str] = []
        metrics: dict[str, Any] = {}

        # ---- data
        train = ctx.data("train")
        if train is None:
            from optimize.data import random_dataset

            specs = ctx.inputs or model.inputs
            train = random_dataset(specs, cfg.random_samples, ctx.seed)
            data_desc = f"{len(train)} random inputs from the input spec"
            notes.append(
                f"distill: no data.train, so the student was trained on {len(train)} random inputs drawn from "
                "the input spec with the teacher's outputs as targets; this is weak (random inputs rarely look "
                "like real data): give data.train for a meaningful result"
            )
        else:
            data_desc = f"data.train ({len(train)} samples, {'labels' if train.labels is not None else 'no labels'})"
        names = self._input_order(model, train)
        eval_ds = ctx.data("eval")
        batch_size = min(cfg.batch_size or ctx.config.data.batch_size, len(train))

        # ---- device, distributed
        device, rank, world = self._placement(ctx)
        dist_on = world > 1
        use_amp = cfg.amp and device.type == "cuda"
        amp_dtype = torch.float16 if use_amp and not torch.cuda.is_bf16_supported() else torch.bfloat16

        # ---- the student
        torch.manual_seed(ctx.seed)
        if cfg.student is not None:
            from passes.students import build_student

            student, student_metrics, student_notes = build_student(cfg.student, teacher_handle, ctx, f"{self._key}.student")
            metrics.update(student_metrics)
            notes.extend(student_notes)
        else:
            from optimize.export import copy_module

            student = copy_module(model.module)
            metrics["student"] = "the current model"
        from passes.students import param_count

        metrics["teacher_params"] = param_count(teacher)
        metrics["student_params"] = param_count(student)
        if cfg.features:
            from passes.distill_features import check_names

            check_names(cfg.features, teacher, student, self._key)

        teacher_was_training = teacher.training
        teacher_device = _module_device(teacher)
        prev_threads = torch.get_num_threads()
        progress_open = False
        recorders: list[Any] = []
        if ctx.threads:
            torch.set_num_threads(max(1, int(ctx.threads)))
        try:
            teacher.eval()
            teacher.to(device)
            student.to(device)
            zero_masks = self._zero_masks(student) if cfg.keep_zeros else []

            labels_ok = self._labels_usable(train, task)
            if train.labels is not None and not labels_ok and task == "classification":
                notes.append("distill: training labels are not 1-D integer class ids; trained with pure KD")

            # ---- batches: a DataLoader over a DistributedSampler (one process: 1 replica)
            from torch.utils.data import BatchSampler, DataLoader, DistributedSampler

            n = len(train)
            if n < world:
                fail(f"{n} training samples cannot be shared by {world} ranks")
            sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=ctx.seed, drop_last=False)
            per_rank = len(sampler)

            def epoch_batches(epoch: int) -> list[list[int]]:
                sampler.set_epoch(epoch)
                # a lone trailing sample is skipped: batch norm cannot train on one sample
                return [b for b in BatchSampler(sampler, batch_size, drop_last=False) if len(b) > 1 or per_rank == 1]

            steps_per_epoch = len(epoch_batches(0))
            total_steps = cfg.epochs * steps_per_epoch
            source = _Batches([train.inputs[k] for k in names], train.labels if labels_ok else None)

            use_cl = self._channels_last(student, source, device)
            metrics["channels_last"] = use_cl

            # ---- feature distillation: hooks, and projections sized by a probe forward
            projections = None
            s_rec = t_rec = None
            if cfg.features:
                from passes.distill_features import Recorder, make_projections

                s_rec = Recorder(student, [p.student for p in cfg.features])
                t_rec = Recorder(teacher, [p.teacher for p in cfg.features])
                recorders = [s_rec, t_rec]
                probe, _ = source[list(range(min(2, n)))]
                probe = [x.to(device) for x in probe]
                was = student.training
                student.eval()
                with torch.no_grad():
                    student(*probe)
                    teacher(*probe)
                student.train(was)
                projections = make_projections(cfg.features, s_rec.take(), t_rec.take(), self._key).to(device)
                metrics["feature_pairs"] = [f"{p.teacher} <- {p.student}" for p in cfg.features]
                metrics["feature_projections"] = [type(p).__name__ for p in projections]
            from passes.distill_features import Trainable

            trainable = Trainable.wrap(student, s_rec, projections if projections is not None else torch.nn.ModuleList())
            params = [p for p in trainable.parameters() if p.requires_grad]
            if not any(p.requires_grad for p in student.parameters()):
                fail("the student has no trainable parameters")
            train_module: Any = trainable
            if dist_on:
                from torch.nn.parallel import DistributedDataParallel

                ids = [device.index] if device.type == "cuda" else None
                train_module = DistributedDataParallel(trainable, device_ids=ids)

            # ---- evaluation before training (teacher once, student before)
            before = self._evaluate(student, teacher, eval_ds, names, batch_size, device, task, with_teacher=True)

            opt = self._optimizer(params)
            scaler = torch.amp.GradScaler("cuda") if use_amp and amp_dtype == torch.float16 else None

            # ---- checkpoints and resume
            ckpt_dir = self._checkpoint_dir(ctx)
            fingerprint = self._fingerprint(trainable, n, batch_size, world, ctx.seed)
            state: dict[str, Any] = {
                "step": 0, "epoch": 0, "batch": 0, "history": [], "kd_history": [], "feat_history": [],
                "sums": [0.0] * 5, "acc_known": True, "best_score": None, "best_epoch": None, "bad_epochs": 0,
                "eval_scores": [], "clipped": 0, "samples": 0, "stopped_early": False, "seconds": 0.0,
            }
            best_state: dict[str, Any] | None = None
            resumed_from = None
            if getattr(ctx, "resume", False):
                from optimize import train_checkpoint

                found = train_checkpoint.latest(ckpt_dir) if ckpt_dir else None
                if found is None:
                    notes.append(f"distill: --resume, but no checkpoint in {ckpt_dir}; trained from the start")
                else:
                    ck = train_checkpoint.load(found, fingerprint, self._key)
                    trainable.load_state_dict({k: v.to(device) for k, v in ck["model"].items()})
                    opt.load_state_dict(ck["optim"])
                    torch.set_rng_state(ck["rng"])
                    state.update(ck["meta"]["state"])
                    best_state = ck["best"]
                    resumed_from = str(found)
                    notes.append(f"distill: resumed from {found} (step {state['step']} of {total_steps})")
            elif ckpt_dir is not None and ckpt_dir.is_dir() and _is_main(rank):
                from optimize import train_checkpoint

                stale = [p for p in ckpt_dir.iterdir() if train_checkpoint.PATTERN.match(p.name)]
                for p in stale:
                    p.unlink(missing_ok=True)
                if stale:
                    notes.append(f"distill: removed {len(stale)} checkpoint(s) of an earlier run in {ckpt_dir} (use --resume to continue one)")

            def amp_context() -> Any:
                return torch.autocast(device.type, dtype=amp_dtype) if use_amp else contextlib.nullcontext()

            select = eval_ds is not None and (cfg.keep_best or cfg.early_stopping_patience is not None)
            epochs_label = f"{cfg.epochs} epochs" + (f", resumed at step {state['step']}" if resumed_from else "")
            ctx.progress.start("distill", f"distill ({epochs_label}, {data_desc})", cfg.epochs)
            progress_open = True
            if state["epoch"]:
                ctx.progress.advance("distill", state["epoch"], "resumed")
            train_module.train()
            while state["epoch"] < cfg.epochs and not state["stopped_early"]:
                epoch = state["epoch"]
                batches = epoch_batches(epoch)[state["batch"]:]
                if cfg.num_workers:
                    loader: Any = DataLoader(
                        source, sampler=batches, batch_size=None, num_workers=cfg.num_workers, collate_fn=_as_batch,
                        persistent_workers=False,
                    )
                else:  # in-process: the DataLoader machinery would only add per-batch overhead
                    loader = (source[b] for b in batches)
                sums = list(state["sums"])  # loss, kd, feature, correct, count (float64 sums)
                t0 = time.perf_counter()
                for xs, y in loader:
                    xs = [x.to(device, non_blocking=True) for x in xs]
                    if use_cl:
                        xs = [_channels_last_copy(x) if x.dim() == 4 else x for x in xs]
                    if y is not None:
                        y = y.to(device, non_blocking=True)
                    with torch.no_grad(), amp_context():
                        t_out = teacher(*xs)
                    t_feats = t_rec.take() if t_rec is not None else []
                    with amp_context():
                        s_out, s_feats = train_module(*xs)
                    loss, kd, correct = self._loss(s_out, t_out, y, task)
                    feat = None
                    if cfg.features:
                        from passes.distill_features import feature_loss

                        feat = feature_loss(cfg.features, s_feats, t_feats, cfg.feature_loss)
                        loss = loss + feat
                    step = state["step"]
                    loss_value = loss.item()
                    if not math.isfinite(loss_value):
                        fail(
                            f"the loss became {loss_value} at epoch {epoch + 1}, step {step + 1}; "
                            f"lower lr (now {cfg.lr}) or check the data"
                        )
                    lr = lr_at(cfg, step, total_steps)
                    for group in opt.param_groups:
                        group["lr"] = lr
                    opt.zero_grad(set_to_none=True)
                    if scaler is not None:
                        scaler.scale(loss).backward()
                        if cfg.grad_clip is not None:
                            scaler.unscale_(opt)
                    else:
                        loss.backward()
                    if cfg.grad_clip is not None:
                        norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                        state["clipped"] += int(float(norm) > cfg.grad_clip)
                    if scaler is not None:
                        scaler.step(opt)
                        scaler.update()
                    else:
                        opt.step()
                    if zero_masks:
                        with torch.no_grad():
                            for p, keep in zero_masks:
                                p.mul_(keep)
                    bs = len(xs[0])
                    state["acc_known"] = state["acc_known"] and correct is not None
                    kd_value = loss_value if kd is loss else kd.item()
                    for i, v in enumerate(
                        (loss_value * bs, kd_value * bs, (feat.item() if feat is not None else 0.0) * bs, float(correct or 0), bs)
                    ):
                        sums[i] += v
                    state["step"] += 1
                    state["batch"] += 1
                    state["samples"] += bs
                    if cfg.checkpoint_every and ckpt_dir is not None and state["step"] % cfg.checkpoint_every == 0:
                        state["seconds"] += time.perf_counter() - t0
                        t0 = time.perf_counter()
                        state["sums"] = list(sums)
                        if _is_main(rank):
                            self._save_checkpoint(ckpt_dir, trainable, opt, state, fingerprint, best_state)
                state["seconds"] += time.perf_counter() - t0
                if dist_on:
                    reduced = torch.tensor(sums, dtype=torch.float64, device=device)
                    torch.distributed.all_reduce(reduced)
                    sums = reduced.cpu().tolist()
                loss_sum, kd_sum, feat_sum, correct_sum, count = sums
                state["history"].append(loss_sum / count)
                state["kd_history"].append(kd_sum / count)
                state["feat_history"].append(feat_sum / count)
                train_acc = 100.0 * correct_sum / count if state["acc_known"] else None
                state["train_acc"] = train_acc
                info = f"loss {state['history'][-1]:.3f}" + (f" acc {train_acc:.1f}%" if train_acc is not None else "")
                if select:
                    score = self._score(student, teacher, eval_ds, names, batch_size, device, task, before)
                    if dist_on:  # every rank takes rank 0's decision
                        box = torch.tensor([score], dtype=torch.float64, device=device)
                        torch.distributed.broadcast(box, 0)
                        score = float(box.item())
                    state["eval_scores"].append(score)
                    info += f" eval {score:.{4 if task != 'classification' else 1}f}"
                    if state["best_score"] is None or score > state["best_score"] + cfg.min_delta:
                        state["best_score"], state["best_epoch"], state["bad_epochs"] = score, epoch + 1, 0
                        if cfg.keep_best:
                            best_state = {k: v.detach().clone() for k, v in trainable.state_dict().items()}
                    else:
                        state["bad_epochs"] += 1
                        if cfg.early_stopping_patience and state["bad_epochs"] >= cfg.early_stopping_patience:
                            state["stopped_early"] = True
                    train_module.train()
                elapsed = state["seconds"]
                info += f" {state['samples'] * world / elapsed:.0f} samples/s" if elapsed > 0 else ""
                state["epoch"] += 1
                state["batch"] = 0
                state["sums"] = [0.0] * 5
                ctx.progress.advance("distill", 1, info)
            seconds = state["seconds"]

            if cfg.keep_best and best_state is not None:
                trainable.load_state_dict(best_state)
            # ---- evaluation after training
            after = self._evaluate(
                student, teacher, eval_ds, names, batch_size, device, task,
                with_teacher=task != "classification", teacher_preds=before.get("teacher_preds"),
            )
        finally:
            for rec in recorders:
                rec.remove()
            if progress_open and sys.exc_info()[0] is not None:
                ctx.progress.finish("distill", "failed")
            teacher.to(teacher_device)
            teacher.train(teacher_was_training)
            torch.set_num_threads(prev_threads)

        student.to("cpu")
        student.eval()

        # ---- metrics
        history, kd_history = state["history"], state["kd_history"]
        metrics.update({
            "epochs": cfg.epochs,
            "epochs_run": len(history),
            "steps": state["step"],
            "batch_size": batch_size,
            "samples_per_s": round(state["samples"] * world / seconds, 1) if seconds > 0 else None,
            "train_seconds": round(seconds, 3),
            "train_loss": _r(history[-1]) if history else None,
            "train_loss_first_epoch": _r(history[0]) if history else None,
            "kd_loss": _r(kd_history[-1]) if kd_history else None,
            "kd_loss_first_epoch": _r(kd_history[0]) if kd_history else None,
            "loss_per_epoch": [_r(v) for v in history[:100]],
            "train_accuracy": _r(state.get("train_acc")),
            "loss": self._loss_text(task, labels_ok and task == "classification"),
            "data": data_desc,
            "device": str(device),
            "amp": str(amp_dtype).replace("torch.", "") if use_amp else None,
            "world_size": world,
            "frozen_zero_weights": int(sum(int((keep == 0).sum()) for _, keep in zero_masks)),
            "lr_schedule": cfg.lr_schedule + (f" after {cfg.warmup_steps} warm-up steps" if cfg.warmup_steps else ""),
        })
        if cfg.features:
            metrics["feature_loss"] = _r(state["feat_history"][-1]) if state["feat_history"] else None
            metrics["feature_loss_first_epoch"] = _r(state["feat_history"][0]) if state["feat_history"] else None
        if cfg.grad_clip is not None:
            metrics["clipped_steps"] = state["clipped"]
        if select:
            metrics["eval_metric_per_epoch"] = [_r(v) for v in state["eval_scores"][:100]]
            metrics["best_epoch"] = state["best_epoch"]
            metrics["stopped_early"] = state["stopped_early"]
            metrics["eval_metric"] = self._score_name(task, eval_ds)
            if cfg.keep_best:
                notes.append(
                    f"distill: keep_best returned the weights of epoch {state['best_epoch']}, chosen on data.eval; "
                    "accuracy measured on the same data is optimistic by that choice"
                )
        if cfg.checkpoint_every and ckpt_dir is not None:
            metrics["checkpoint_dir"] = str(ckpt_dir)
        metrics["resumed_from"] = resumed_from
        metrics.update(self._accuracy_metrics(task, eval_ds, before, after))
        info = (
            f"student {metrics['student_accuracy']:.1f}% (teacher {metrics['teacher_accuracy']:.1f}%)"
            if metrics.get("student_accuracy") is not None and metrics.get("teacher_accuracy") is not None
            else (f"loss {history[-1]:.3f}" if history else "no steps left")
        )
        ctx.progress.finish("distill", info)
        ctx.log.info("distill: %s", info)
        return PassResult(model=model.replace(module=student), metrics=metrics, notes=notes)

    # ------------------------------------------------------------------ helpers

    def _fail(self, message: str) -> Any:
        raise PassError(self.name, message)

    def _channels_last(self, student: Any, source: _Batches, device: Any) -> bool:
        import torch

        mode = self.config.channels_last
        if mode is False or not any(a.dim() == 4 and a.is_floating_point() for a in source.arrays):
            return False
        if mode is True:
            return True
        if not any(isinstance(m, torch.nn.Conv2d) for m in student.modules()):
            return False
        probe, _ = source[list(range(min(2, len(source))))]
        probe = [_channels_last_copy(x.to(device)) if x.dim() == 4 else x.to(device) for x in probe]
        was = student.training
        student.eval()
        try:
            with torch.no_grad():
                student(*probe)
        except Exception:  # e.g. .view() on an activation that is no longer contiguous
            return False
        finally:
            student.train(was)
        return True

    def _checkpoint_dir(self, ctx: RunContext) -> Path | None:
        cfg = self.config
        if not cfg.checkpoint_every:
            return None
        if cfg.checkpoint_dir:
            p = Path(cfg.checkpoint_dir)
            return p if p.is_absolute() else Path(ctx.base_dir) / p
        return Path(ctx.base_dir) / "optimize-checkpoints" / f"step{ctx.step_index:02d}-distill"

    def _fingerprint(self, trainable: Any, n: int, batch_size: int, world: int, seed: int) -> str:
        cfg = self.config.model_dump(mode="json", exclude={"checkpoint_every", "checkpoint_dir", "num_workers"})
        shapes = [(k, list(v.shape)) for k, v in trainable.state_dict().items()]
        blob = json.dumps({"cfg": cfg, "shapes": shapes, "n": n, "batch": batch_size, "world": world, "seed": seed}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @staticmethod
    def _save_checkpoint(directory: Path, trainable: Any, opt: Any, state: dict[str, Any], fingerprint: str, best: Any) -> None:
        from optimize import train_checkpoint

        meta = {"fingerprint": fingerprint, "state": state}
        train_checkpoint.save(directory, state["step"], trainable.state_dict(), opt, meta, best)

    def _input_order(self, model: ModelHandle, data: Dataset) -> list[str]:
        declared = [s.name for s in model.inputs]
        if declared and all(k in data.inputs for k in declared):
            return declared
        if declared and len(declared) != len(data.inputs):
            self._fail(f"the data has inputs {sorted(data.inputs)}, the model takes {declared}")
        return list(data.inputs)

    def _placement(self, ctx: RunContext) -> tuple[Any, int, int]:
        import os

        import torch

        dist = torch.distributed
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        rank = dist.get_rank() if world > 1 else 0
        want = str(ctx.device or "cpu")
        if want.startswith("cuda"):
            if not torch.cuda.is_available():
                self._fail("device is cuda but CUDA is not available")
            if want == "cuda":
                index = int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())) if world > 1 else torch.cuda.current_device()
                return torch.device("cuda", index), rank, world
        return torch.device(want), rank, world

    def _optimizer(self, params: list[Any]) -> Any:
        import torch

        cfg = self.config
        if cfg.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        if cfg.optimizer == "adam":
            return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    @staticmethod
    def _zero_masks(student: Any) -> list[tuple[Any, Any]]:
        """(parameter, keep-mask) for weights with exact zeros that no parametrization owns."""
        out = []
        for name, p in student.named_parameters():
            if not p.requires_grad or not p.is_floating_point() or p.dim() < 2:
                continue
            if ".parametrizations." in f".{name}":
                continue  # the parametrization (mask, fake quant) owns this weight
            keep = p.detach() != 0
            if not bool(keep.all()):
                out.append((p, keep.to(p.dtype)))
        return out

    @staticmethod
    def _labels_usable(data: Dataset, task: str) -> bool:
        import numpy as np

        y = data.labels
        if y is None:
            return False
        if task == "classification":
            return y.ndim == 1 and np.issubdtype(y.dtype, np.integer) and len(y) > 0 and int(y.min()) >= 0
        return np.issubdtype(y.dtype, np.floating)

    def _loss(self, s_out: Any, t_out: Any, y: Any, task: str) -> tuple[Any, Any, int | None]:
        """(total loss, KD/teacher-matching part, correct top-1 count or None)."""
        import torch
        import torch.nn.functional as F

        cfg = self.config
        s_all, t_all = _tensors(s_out), _tensors(t_out)
        if not s_all or len(s_all) != len(t_all):
            self._fail(f"student gives {len(s_all)} tensor outputs, teacher gives {len(t_all)}")
        for s, t in zip(s_all, t_all, strict=True):
            if s.shape != t.shape:
                self._fail(f"student output shape {tuple(s.shape)} differs from the teacher's {tuple(t.shape)}")
        s, t = s_all[0].float(), t_all[0].float()
        if task == "classification":
            classes = s.shape[-1]
            temp = cfg.temperature
            kd = F.kl_div(
                F.log_softmax(s.reshape(-1, classes) / temp, dim=-1),
                F.log_softmax(t.reshape(-1, classes) / temp, dim=-1),
                reduction="batchmean",
                log_target=True,
            ) * (temp * temp)
            if y is None or s.dim() != 2 or cfg.alpha >= 1.0:
                return kd, kd, None if y is None or s.dim() != 2 else int((s.argmax(-1) == y).sum())
            if int(y.max()) >= classes:
                self._fail(f"label {int(y.max())} is out of range for {classes} output classes")
            ce = F.cross_entropy(s, y)
            correct = int((s.argmax(-1) == y).sum())
            return cfg.alpha * kd + (1.0 - cfg.alpha) * ce, kd, correct
        # regression / embedding: match every floating output of the teacher
        if cfg.output_loss == "cosine":
            parts = [
                (1.0 - F.cosine_similarity(a.float().reshape(len(a), -1), b.float().reshape(len(b), -1), dim=1, eps=1e-8)).mean()
                for a, b in zip(s_all, t_all, strict=True)
                if b.is_floating_point()
            ]
        else:
            parts = [F.mse_loss(a.float(), b.float()) for a, b in zip(s_all, t_all, strict=True) if b.is_floating_point()]
        match = torch.stack(parts).mean() if parts else s.sum() * 0.0
        if y is not None and cfg.alpha < 1.0 and y.numel() == s.numel():
            return cfg.alpha * match + (1.0 - cfg.alpha) * F.mse_loss(s, y.float().reshape(s.shape)), match, None
        return match, match, None

    def _loss_text(self, task: str, with_labels: bool) -> str:
        cfg = self.config
        if task != "classification":
            return "1 - cosine(student, teacher)" if cfg.output_loss == "cosine" else "MSE(student, teacher)"
        kd = f"KL(softmax(t/T) || softmax(s/T)) * T^2, T={cfg.temperature:g}"
        if with_labels and cfg.alpha < 1.0:
            return f"{cfg.alpha:g} * {kd} + {1 - cfg.alpha:g} * cross_entropy(s, labels)"
        return kd

    def _evaluate(
        self, student: Any, teacher: Any, ds: Dataset | None, names: list[str], batch_size: int, device: Any,
        task: str, *, with_teacher: bool, teacher_preds: Any = None,
    ) -> dict[str, Any]:
        """One pass over the eval data: top-1 counts (classification) or MSE to the teacher."""
        import numpy as np
        import torch

        if ds is None:
            return {}
        was_training = student.training
        student.eval()
        labels = ds.labels if ds.labels is not None and ds.labels.ndim == 1 else None
        out: dict[str, Any] = {"n": len(ds), "student_correct": 0, "teacher_correct": 0, "agree": 0, "sq": 0.0, "elems": 0}
        preds_t: list[Any] = []
        ordered = {k: ds.inputs[k] for k in names}
        offset = 0
        with torch.no_grad():
            for start in range(0, len(ds), batch_size):
                batch = {k: v[start : start + batch_size] for k, v in ordered.items()}
                xs = [torch.from_numpy(np.ascontiguousarray(batch[k])).to(device) for k in names]
                s = _tensors(student(*xs))[0].float()
                t = _tensors(teacher(*xs))[0].float() if with_teacher else None
                rows = len(xs[0])
                if task == "classification":
                    ps = s.argmax(-1).cpu().numpy()
                    if t is not None:
                        pt = t.argmax(-1).cpu().numpy()
                        preds_t.append(pt)
                    else:
                        pt = None if teacher_preds is None else teacher_preds[offset : offset + rows]
                    if ps.ndim != 1:
                        labels = None  # top-1 against 1-D class ids needs one prediction per sample
                    if labels is not None:
                        y = labels[offset : offset + rows]
                        out["student_correct"] += int((ps == y).sum())
                        if t is not None:
                            out["teacher_correct"] += int((pt == y).sum())
                    if pt is not None:  # per sample: the fraction of positions where the top-1 agrees
                        out["agree"] += float((ps == pt).reshape(rows, -1).mean(axis=1).sum())
                elif t is not None:
                    out["sq"] += float(((s - t) ** 2).sum())
                    out["elems"] += s.numel()
                    out["cos"] = out.get("cos", 0.0) + float(
                        torch.nn.functional.cosine_similarity(s.reshape(rows, -1), t.reshape(rows, -1), dim=1, eps=1e-8).sum()
                    )
                offset += rows
        student.train(was_training)
        if preds_t:
            out["teacher_preds"] = np.concatenate(preds_t)
        out["has_labels"] = labels is not None
        return out

    def _score(
        self, student: Any, teacher: Any, ds: Any, names: list[str], batch_size: int, device: Any, task: str,
        before: dict[str, Any],
    ) -> float:
        """The eval metric for early stopping / best-weights selection (higher is better)."""
        if task == "classification":
            r = self._evaluate(
                student, teacher, ds, names, batch_size, device, task, with_teacher=False, teacher_preds=before.get("teacher_preds")
            )
            hit = r["student_correct"] if before.get("has_labels") else r["agree"]
            return 100.0 * hit / max(r["n"], 1)
        r = self._evaluate(student, teacher, ds, names, batch_size, device, task, with_teacher=True)
        if self.config.output_loss == "cosine":
            return r.get("cos", 0.0) / max(r["n"], 1)
        return -(r["sq"] / max(r["elems"], 1))

    def _score_name(self, task: str, ds: Any) -> str:
        if task == "classification":
            labelled = ds is not None and ds.labels is not None and ds.labels.ndim == 1
            return "top-1 accuracy (%) on data.eval" if labelled else "top-1 agreement with the teacher (%) on data.eval"
        if self.config.output_loss == "cosine":
            return "mean cosine to the teacher's outputs on data.eval"
        return "negative MSE to the teacher's outputs on data.eval"

    @staticmethod
    def _accuracy_metrics(task: str, eval_ds: Any, before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
        m: dict[str, Any] = {
            "teacher_accuracy": None,
            "student_accuracy_before": None,
            "student_accuracy": None,
            "distillation_ratio": None,
        }
        if eval_ds is None:
            m["accuracy_reason"] = "no data.eval declared"
            return m
        n = before["n"]
        if task != "classification":
            m["accuracy_reason"] = f"task is {task}: top-1 accuracy does not apply (see eval_mse_vs_teacher)"
            m["eval_mse_vs_teacher"] = _r(after["sq"] / after["elems"], 6) if after.get("elems") else None
            m["eval_mse_vs_teacher_before"] = _r(before["sq"] / before["elems"], 6) if before.get("elems") else None
            m["eval_cosine_vs_teacher"] = _r(after["cos"] / n, 6) if "cos" in after else None
            m["eval_cosine_vs_teacher_before"] = _r(before["cos"] / n, 6) if "cos" in before else None
            return m
        m["teacher_agreement"] = _r(100.0 * after["agree"] / n)
        m["teacher_agreement_before"] = _r(100.0 * before["agree"] / n)
        if not before["has_labels"]:
            m["accuracy_reason"] = "data.eval has no labels (1-D class ids); see teacher_agreement"
            return m
        teacher = 100.0 * before["teacher_correct"] / n
        student = 100.0 * after["student_correct"] / n
        m["teacher_accuracy"] = _r(teacher)
        m["student_accuracy_before"] = _r(100.0 * before["student_correct"] / n)
        m["student_accuracy"] = _r(student)
        m["eval_samples"] = n
        if teacher > 0:
            m["distillation_ratio"] = _r(student / teacher, 4)
        else:
            m["accuracy_reason"] = "teacher accuracy is 0: distillation_ratio undefined"
        return m


def _tensors(out: Any) -> list[Any]:
    """The tensor outputs of a forward call, in order (tensor, tuple/list, dict, ModelOutput)."""
    import torch

    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        flat: list[Any] = []
        for item in out:
            flat.extend(_tensors(item))
        return flat
    return []


def _module_device(module: Any) -> Any:
    import torch

    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def _r(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)


def lr_at(cfg: DistillConfig, step: int, total_steps: int) -> float:
    """The learning rate of (0-based) `step`: linear warm-up to cfg.lr, then the schedule to the end."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return cfg.lr
    span = max(1, total_steps - cfg.warmup_steps)
    p = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.lr * (0.5 * (1.0 + math.cos(math.pi * p)) if cfg.lr_schedule == "cosine" else 1.0 - p)


def _channels_last_copy(x: Any) -> Any:
    """`x` with channels-last strides. Not `x.contiguous(memory_format=...)`: with one channel that
    returns `x` unchanged (its strides already qualify), and torch then keeps activations NCHW."""
    import torch

    return torch.empty_like(x, memory_format=torch.channels_last).copy_(x)


def _is_main(rank: int) -> bool:
    return rank == 0
