"""distill: train the current (pruned and/or quantization-simulated) torch model to match the
teacher (the pipeline's input model): KL on temperature-softened outputs × T², blended with the
hard-label loss by alpha.

Loss, per batch (classification, 2-D logits):

    alpha · KL(softmax(t/T) ‖ softmax(s/T)) · T²  +  (1 − alpha) · cross_entropy(s, labels)

with s the student's and t the teacher's logits (Hinton et al. 2015; the T² keeps the gradient
scale independent of T). Without labels (unlabeled data, or random inputs drawn from the input
spec) the hard-label term is dropped (pure KD). Logits with more than two axes (e.g. per-token)
are distilled position by position. For `model.task: regression | embedding` the loss is the mean
squared error against the teacher's outputs (blended with the MSE against float labels of the
same shape when those exist).

The student is a deep copy of the current model, trained *through* whatever it carries: torch
parametrizations (pruning masks, fake quantization) and forward pre-hooks marked `training_only`
stay in place, so sparsity is kept and quantization-aware training happens here. Weights that are
exactly zero and not under a parametrization (pruning that left no mask) are held at zero too
(`keep_zeros`). The teacher is only run forward, in eval mode, under `torch.no_grad()`; its
weights are never touched.

On CUDA, training runs under autocast (bf16 where supported, else fp16 with a grad scaler). When
`torch.distributed` is initialized (torchrun), the student is wrapped in DistributedDataParallel
and each rank trains on its shard of every epoch's shuffled order.

Written by hand: the loop is short, and no maintained library distills a model that carries
arbitrary parametrizations and hooks without also owning the model's construction.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from optimize.errors import ConfigError, PassError
from passes.base import Pass, PassConfig

if TYPE_CHECKING:
    from optimize.context import PlanContext, RunContext
    from optimize.data import Dataset
    from optimize.handle import ModelHandle
    from passes.base import PassResult

RANDOM_SAMPLES_DEFAULT = 1024


class DistillConfig(PassConfig):
    epochs: int = Field(5, ge=1, le=100000, description="Passes over the training data.")
    batch_size: int | None = Field(None, gt=0, description="Training batch size (default: data.batch_size).")
    lr: float = Field(1e-3, gt=0, le=10, description="Learning rate.")
    optimizer: Literal["adamw", "adam", "sgd"] = Field("adamw", description="Optimizer (sgd uses momentum 0.9).")
    weight_decay: float = Field(0.0, ge=0, description="Weight decay.")
    temperature: float = Field(4.0, gt=0, le=100, description="Softmax temperature T for the KD loss.")
    alpha: float = Field(
        0.7, ge=0, le=1, description="Weight of the KD loss; (1 - alpha) weighs the hard-label loss when labels exist."
    )
    lr_schedule: Literal["cosine", "constant"] = Field(
        "cosine", description="Learning-rate schedule over all steps: cosine decay to 0, or constant."
    )
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


class DistillPass(Pass):
    name = "distill"
    summary = (
        "Train the current torch model (pruned and/or quantization-simulated) to match the input model "
        "(the teacher): KL on temperature-softened logits × T² blended with the hard-label loss by alpha; "
        "masks and fake quantization stay applied."
    )
    config_cls = DistillConfig
    accepts = frozenset({"torch"})
    trains = True
    config: DistillConfig

    # ------------------------------------------------------------------ plan time

    def check(self, plan: PlanContext) -> None:
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

    # ------------------------------------------------------------------ run time

    def run(self, model: ModelHandle, ctx: RunContext) -> PassResult:
        import numpy as np
        import torch

        from passes.base import PassResult

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

        # ---- models
        student = copy.deepcopy(model.module)
        teacher_was_training = teacher.training
        teacher_device = _module_device(teacher)
        prev_threads = torch.get_num_threads()
        progress_open = False
        if ctx.threads:
            torch.set_num_threads(max(1, int(ctx.threads)))
        try:
            torch.manual_seed(ctx.seed)
            teacher.eval()
            teacher.to(device)
            student.to(device)
            params = [p for p in student.parameters() if p.requires_grad]
            if not params:
                fail("the student has no trainable parameters")
            zero_masks = self._zero_masks(student) if cfg.keep_zeros else []

            train_module: Any = student
            if dist_on:
                from torch.nn.parallel import DistributedDataParallel

                ids = [device.index] if device.type == "cuda" else None
                train_module = DistributedDataParallel(student, device_ids=ids)

            labels_ok = self._labels_usable(train, task)
            if train.labels is not None and not labels_ok and task == "classification":
                notes.append("distill: training labels are not 1-D integer class ids; trained with pure KD")

            # ---- evaluation before training (teacher once, student before)
            before = self._evaluate(student, teacher, eval_ds, names, batch_size, device, task, with_teacher=True)

            opt = self._optimizer(params)
            n = len(train)
            shard = n // world if dist_on else n
            if shard == 0:
                fail(f"{n} training samples cannot be shared by {world} ranks")
            steps_per_epoch = -(-shard // batch_size)
            total_steps = cfg.epochs * steps_per_epoch
            sched = None
            if cfg.lr_schedule == "cosine":
                sched = torch.optim.lr_scheduler.LambdaLR(
                    opt, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
                )
            scaler = torch.amp.GradScaler("cuda") if use_amp and amp_dtype == torch.float16 else None

            ctx.progress.start("distill", f"distill ({cfg.epochs} epochs, {data_desc})", cfg.epochs)
            progress_open = True
            history: list[float] = []
            kd_history: list[float] = []
            train_acc: float | None = None
            steps = 0
            samples = 0
            t0 = time.perf_counter()
            for epoch in range(cfg.epochs):
                student.train()
                order = np.random.default_rng(ctx.seed + epoch).permutation(n)
                if dist_on:
                    order = order[rank::world][:shard]
                sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, kd, correct, count
                acc_known = True
                for start in range(0, len(order), batch_size):
                    idx = np.sort(order[start : start + batch_size])
                    if len(idx) == 1 and len(order) > 1:
                        continue  # a lone trailing sample: batch norm cannot train on one sample
                    xs = [torch.from_numpy(np.ascontiguousarray(train.inputs[k][idx])).to(device) for k in names]
                    y = None
                    if labels_ok:
                        y = torch.from_numpy(np.ascontiguousarray(train.labels[idx])).to(device)
                    with torch.no_grad(), torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                        t_out = teacher(*xs)
                    with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                        s_out = train_module(*xs)
                    loss, kd, correct = self._loss(s_out, t_out, y, task)
                    if not torch.isfinite(loss):
                        fail(
                            f"the loss became {loss.item()} at epoch {epoch + 1}, step {steps + 1}; "
                            f"lower lr (now {cfg.lr}) or check the data"
                        )
                    opt.zero_grad(set_to_none=True)
                    if scaler is not None:
                        scaler.scale(loss).backward()
                        scaler.step(opt)
                        scaler.update()
                    else:
                        loss.backward()
                        opt.step()
                    if sched is not None:
                        sched.step()
                    if zero_masks:
                        with torch.no_grad():
                            for p, keep in zero_masks:
                                p.mul_(keep)
                    bs = len(idx)
                    acc_known = acc_known and correct is not None
                    sums += torch.tensor(
                        [loss.item() * bs, kd.item() * bs, float(correct or 0), bs], dtype=torch.float64, device=device
                    )
                    steps += 1
                    samples += bs
                if dist_on:
                    torch.distributed.all_reduce(sums)
                loss_sum, kd_sum, correct_sum, count = sums.tolist()
                history.append(loss_sum / count)
                kd_history.append(kd_sum / count)
                train_acc = 100.0 * correct_sum / count if acc_known else None
                info = f"loss {history[-1]:.3f}" + (f" acc {train_acc:.1f}%" if train_acc is not None else "")
                ctx.progress.advance("distill", 1, info)
            seconds = time.perf_counter() - t0

            # ---- evaluation after training
            after = self._evaluate(
                student, teacher, eval_ds, names, batch_size, device, task,
                with_teacher=task != "classification", teacher_preds=before.get("teacher_preds"),
            )
        finally:
            if progress_open and sys.exc_info()[0] is not None:
                ctx.progress.finish("distill", "failed")
            teacher.to(teacher_device)
            teacher.train(teacher_was_training)
            torch.set_num_threads(prev_threads)

        student.to("cpu")
        student.eval()

        # ---- metrics
        metrics: dict[str, Any] = {
            "epochs": cfg.epochs,
            "steps": steps,
            "batch_size": batch_size,
            "samples_per_s": round(samples * world / seconds, 1) if seconds > 0 else None,
            "train_seconds": round(seconds, 3),
            "train_loss": _r(history[-1]),
            "train_loss_first_epoch": _r(history[0]),
            "kd_loss": _r(kd_history[-1]),
            "kd_loss_first_epoch": _r(kd_history[0]),
            "loss_per_epoch": [_r(v) for v in history[:100]],
            "train_accuracy": _r(train_acc),
            "loss": self._loss_text(task, labels_ok and task == "classification"),
            "data": data_desc,
            "device": str(device),
            "amp": str(amp_dtype).replace("torch.", "") if use_amp else None,
            "world_size": world,
            "frozen_zero_weights": int(sum(int((keep == 0).sum()) for _, keep in zero_masks)),
        }
        metrics.update(self._accuracy_metrics(task, eval_ds, before, after))
        info = (
            f"student {metrics['student_accuracy']:.1f}% (teacher {metrics['teacher_accuracy']:.1f}%)"
            if metrics.get("student_accuracy") is not None and metrics.get("teacher_accuracy") is not None
            else f"loss {history[-1]:.3f}"
        )
        ctx.progress.finish("distill", info)
        ctx.log.info("distill: %s", info)
        return PassResult(model=model.replace(module=student), metrics=metrics, notes=notes)

    # ------------------------------------------------------------------ helpers

    def _fail(self, message: str) -> Any:
        raise PassError(self.name, message)

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
        parts = [F.mse_loss(a.float(), b.float()) for a, b in zip(s_all, t_all, strict=True) if b.is_floating_point()]
        match = torch.stack(parts).mean() if parts else s.sum() * 0.0
        if y is not None and cfg.alpha < 1.0 and y.numel() == s.numel():
            return cfg.alpha * match + (1.0 - cfg.alpha) * F.mse_loss(s, y.float().reshape(s.shape)), match, None
        return match, match, None

    def _loss_text(self, task: str, with_labels: bool) -> str:
        cfg = self.config
        if task != "classification":
            return "MSE(student, teacher)"
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
                offset += rows
        student.train(was_training)
        if preds_t:
            out["teacher_preds"] = np.concatenate(preds_t)
        out["has_labels"] = labels is not None
        return out

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
