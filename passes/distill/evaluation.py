"""Evaluation on data.eval: before and after training (the report's accuracy / agreement / MSE to
the teacher), and the per-epoch score that early stopping and best-weights selection use."""

from __future__ import annotations

from typing import Any

from passes.distill.config import DistillConfig
from passes.distill.loss import tensors


def rounded(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)


def evaluate(
    student: Any, teacher: Any, ds: Any, names: list[str], batch_size: int, device: Any,
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
            s = tensors(student(*xs))[0].float()
            t = tensors(teacher(*xs))[0].float() if with_teacher else None
            rows = len(xs[0])
            if task == "classification":
                labels = _tally_top1(out, s, t, labels, teacher_preds, preds_t, offset, rows)
            elif t is not None:
                _tally_match(out, s, t, rows)
            offset += rows
    student.train(was_training)
    if preds_t:
        out["teacher_preds"] = np.concatenate(preds_t)
    out["has_labels"] = labels is not None
    return out


def _tally_top1(
    out: dict[str, Any], s: Any, t: Any, labels: Any, teacher_preds: Any, preds_t: list[Any], offset: int, rows: int
) -> Any:
    """Add one batch's top-1 counts to `out`; returns the labels still usable (None once outputs
    are not one prediction per sample)."""
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
    return labels


def _tally_match(out: dict[str, Any], s: Any, t: Any, rows: int) -> None:
    import torch

    out["sq"] += float(((s - t) ** 2).sum())
    out["elems"] += s.numel()
    out["cos"] = out.get("cos", 0.0) + float(
        torch.nn.functional.cosine_similarity(s.reshape(rows, -1), t.reshape(rows, -1), dim=1, eps=1e-8).sum()
    )


def score(
    cfg: DistillConfig, student: Any, teacher: Any, ds: Any, names: list[str], batch_size: int, device: Any, task: str,
    before: dict[str, Any],
) -> float:
    """The eval metric for early stopping / best-weights selection (higher is better)."""
    if task == "classification":
        r = evaluate(
            student, teacher, ds, names, batch_size, device, task, with_teacher=False, teacher_preds=before.get("teacher_preds")
        )
    else:
        r = evaluate(student, teacher, ds, names, batch_size, device, task, with_teacher=True)
    return score_of(cfg, task, r, before)


def score_of(cfg: DistillConfig, task: str, r: dict[str, Any], before: dict[str, Any]) -> float:
    """`score`'s value from one `evaluate` result (the evaluation before training is one already)."""
    if task == "classification":
        hit = r["student_correct"] if before.get("has_labels") else r["agree"]
        return 100.0 * hit / max(r["n"], 1)
    if cfg.output_loss == "cosine":
        return r.get("cos", 0.0) / max(r["n"], 1)
    return -(r["sq"] / max(r["elems"], 1))


def score_name(cfg: DistillConfig, task: str, ds: Any) -> str:
    if task == "classification":
        labelled = ds is not None and ds.labels is not None and ds.labels.ndim == 1
        return "top-1 accuracy (%) on data.eval" if labelled else "top-1 agreement with the teacher (%) on data.eval"
    if cfg.output_loss == "cosine":
        return "mean cosine to the teacher's outputs on data.eval"
    return "negative MSE to the teacher's outputs on data.eval"


def accuracy_metrics(task: str, eval_ds: Any, before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
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
        m["eval_mse_vs_teacher"] = rounded(after["sq"] / after["elems"], 6) if after.get("elems") else None
        m["eval_mse_vs_teacher_before"] = rounded(before["sq"] / before["elems"], 6) if before.get("elems") else None
        m["eval_cosine_vs_teacher"] = rounded(after["cos"] / n, 6) if "cos" in after else None
        m["eval_cosine_vs_teacher_before"] = rounded(before["cos"] / n, 6) if "cos" in before else None
        return m
    m["teacher_agreement"] = rounded(100.0 * after["agree"] / n)
    m["teacher_agreement_before"] = rounded(100.0 * before["agree"] / n)
    if not before["has_labels"]:
        m["accuracy_reason"] = "data.eval has no labels (1-D class ids); see teacher_agreement"
        return m
    teacher = 100.0 * before["teacher_correct"] / n
    student = 100.0 * after["student_correct"] / n
    m["teacher_accuracy"] = rounded(teacher)
    m["student_accuracy_before"] = rounded(100.0 * before["student_correct"] / n)
    m["student_accuracy"] = rounded(student)
    m["eval_samples"] = n
    if teacher > 0:
        m["distillation_ratio"] = rounded(student / teacher, 4)
    else:
        m["accuracy_reason"] = "teacher accuracy is 0: distillation_ratio undefined"
    return m
