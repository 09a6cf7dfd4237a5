"""passes.distill: a weakened student recovers accuracy from the teacher, masks and training-only
hooks survive training, the teacher is never changed, pure KD works without labels, regression uses
MSE, multi-input models get their inputs in order, and check() rejects impossible plans."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import digits_teacher, distill_ctx, torch_handle
from helpers import run_first_pass as distill
from torch.nn.utils import parametrize

from optimize import example, registry
from optimize.config import load_config_text
from optimize.context import PlanContext
from optimize.data import digits
from optimize.errors import ConfigError, PassError
from optimize.export import finalized_module
from optimize.handle import TensorSpec
from passes.distill import DistillConfig, DistillPass

DIGITS_SPEC = [TensorSpec("x", ("batch", 1, 8, 8))]
DIGITS_DATA = """data:
  train: {source: "builtin:digits", split: train}
  eval: {source: "builtin:digits", split: test}
"""


class RecordingProgress:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def start(self, key, description, total):
        self.calls.append(("start", key, total))

    def advance(self, key, steps=1, info=None):
        self.calls.append(("advance", key, steps, info))

    def finish(self, key, info=None):
        self.calls.append(("finish", key, info))


class Mask(torch.nn.Module):
    """A pruning mask as a parametrization: weight = original × mask."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask


def masked_copy(module: torch.nn.Module, fraction: float) -> torch.nn.Module:
    """The module with `fraction` of each layer's weights (smallest magnitude) masked to zero."""
    m = copy.deepcopy(module)
    for layer in (m.conv1, m.conv2, m.fc1, m.fc2):
        w = layer.weight.detach()
        k = int(w.numel() * fraction)
        threshold = w.abs().flatten().kthvalue(k).values
        parametrize.register_parametrization(layer, "weight", Mask((w.abs() > threshold).float()))
    return m


def test_registered_with_a_real_summary() -> None:
    cls = registry.get("distill")
    assert cls is DistillPass
    assert cls.trains is True
    assert cls.accepts == frozenset({"torch"})
    assert "TODO" not in cls.summary and len(cls.summary) > 40
    for name, field in DistillConfig.model_fields.items():
        assert field.description, name


def test_distill_recovers_a_masked_student_and_keeps_masks_hooks_and_the_teacher(
    tmp_path: Path, teacher_weights: Path
) -> None:
    teacher = digits_teacher(teacher_weights)
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = masked_copy(teacher, 0.85)
    zeros_before = {n: (getattr(student, n).weight == 0) for n in ("conv1", "conv2", "fc1", "fc2")}

    calls = []

    def pre_hook(module, args):
        calls.append(module.training)

    pre_hook.training_only = True
    student.fc1.register_forward_pre_hook(pre_hook)

    progress = RecordingProgress()
    ctx = distill_ctx(tmp_path, torch_handle(teacher, DIGITS_SPEC, ("logits",)), DIGITS_DATA + "passes: [{type: distill, epochs: 4, lr: 0.003}]\n", progress=progress)
    result = distill(ctx, torch_handle(student, DIGITS_SPEC, ("logits",)))
    m = result.metrics

    # accuracy: the masked student recovers most of the teacher's accuracy
    assert m["teacher_accuracy"] >= 95.0
    assert m["student_accuracy_before"] < 60.0
    assert m["student_accuracy"] >= m["student_accuracy_before"] + 25.0
    assert m["distillation_ratio"] == pytest.approx(m["student_accuracy"] / m["teacher_accuracy"], abs=1e-3)
    assert m["epochs"] == 4 and m["steps"] == 4 * -(-1437 // 64)
    assert m["samples_per_s"] > 0 and m["train_loss"] < m["train_loss_first_epoch"]
    assert m["eval_samples"] == 360

    # the student is a new, trained module on CPU in eval mode; the input handle's module is untouched
    out = result.model.module
    assert out is not student and not out.training
    assert all(p.device.type == "cpu" for p in out.parameters())

    # masks stay applied: the parametrization is still there and masked weights are still zero
    for name, was_zero in zeros_before.items():
        layer = getattr(out, name)
        assert parametrize.is_parametrized(layer, "weight")
        assert torch.all(layer.weight[was_zero] == 0)
    final = finalized_module(out)
    assert float((final.fc1.weight == 0).float().mean()) >= 0.85 - 1e-3

    # the training-only hook was kept and ran in training mode
    hooks = list(out.fc1._forward_pre_hooks.values())
    assert any(getattr(h, "training_only", False) for h in hooks)
    assert True in calls

    # the teacher is unchanged and still in eval mode
    assert not teacher.training
    assert all(torch.equal(teacher_state[k], v) for k, v in teacher.state_dict().items())

    # progress: one advance per epoch with loss, accuracy and samples/s
    assert progress.calls[0] == ("start", "distill", 4)
    advances = [c for c in progress.calls if c[0] == "advance"]
    assert len(advances) == 4
    assert all(re.fullmatch(r"loss \d+\.\d{3} acc \d+\.\d% \d+ samples/s", c[3]) for c in advances)
    assert progress.calls[-1][0] == "finish"


def test_pure_kd_on_unlabeled_data_lowers_the_kd_loss(tmp_path: Path, teacher_weights: Path) -> None:
    teacher = digits_teacher(teacher_weights)
    x, _ = digits("train")
    np.savez(tmp_path / "unlabeled.npz", x=x)  # real inputs, no labels
    torch.manual_seed(1)
    student = example.digits_cnn(width=4, hidden=16)  # a narrower fresh model
    ctx = distill_ctx(tmp_path, torch_handle(teacher, DIGITS_SPEC, ("logits",)), f"data: {{train: {{source: {str(tmp_path / 'unlabeled.npz')!r}}}}}\n"
        "passes: [{type: distill, epochs: 4, lr: 0.01, alpha: 0.5}]\n")
    m = distill(ctx, torch_handle(student, DIGITS_SPEC, ("logits",))).metrics
    assert m["kd_loss"] < 0.7 * m["kd_loss_first_epoch"]
    assert m["train_loss"] == pytest.approx(m["kd_loss"], rel=1e-3), "no labels: alpha is treated as 1"
    assert "cross_entropy" not in m["loss"]
    assert m["train_accuracy"] is None
    assert m["student_accuracy"] is None and m["distillation_ratio"] is None
    assert "data.eval" in m["accuracy_reason"]


def test_random_inputs_from_the_spec_when_there_is_no_training_data(tmp_path: Path) -> None:
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 5)).eval()
    student = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 5))
    spec = [TensorSpec("x", ("batch", 6))]
    t = torch_handle(teacher, spec, ("y",))
    ctx = distill_ctx(tmp_path, t, "passes: [{type: distill, epochs: 5, lr: 0.01, random_samples: 256}]\n")
    result = distill(ctx, torch_handle(student, spec, ("y",)))
    assert result.metrics["kd_loss"] < result.metrics["kd_loss_first_epoch"]
    assert "256 random inputs" in result.metrics["data"]
    assert any("random inputs" in n and "weak" in n for n in result.notes)


def test_regression_task_matches_teacher_outputs_with_mse(tmp_path: Path) -> None:
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Linear(4, 3)).eval()
    student = torch.nn.Sequential(torch.nn.Linear(4, 3))
    spec = [TensorSpec("x", ("batch", 4))]
    np.savez(tmp_path / "eval.npz", x=np.random.default_rng(0).uniform(-1, 1, (100, 4)).astype(np.float32))
    body = (
        f"model: {{task: regression}}\ndata: {{eval: {{source: {str(tmp_path / 'eval.npz')!r}}}}}\n"
        "passes: [{type: distill, epochs: 10, lr: 0.05, random_samples: 256}]\n"
    )
    ctx = distill_ctx(tmp_path, torch_handle(teacher, spec, ("y",)), body)
    m = distill(ctx, torch_handle(student, spec, ("y",))).metrics
    assert m["loss"] == "MSE(student, teacher)"
    assert m["train_loss"] < 0.1 * m["train_loss_first_epoch"]
    assert m["student_accuracy"] is None and "regression" in m["accuracy_reason"]
    assert m["eval_mse_vs_teacher"] < 0.1 * m["eval_mse_vs_teacher_before"]


class TwoInputs(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(3, 4)
        self.b = torch.nn.Linear(5, 4)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.a(a) - self.b(b)


def test_multi_input_models_get_positional_inputs_in_declared_order(tmp_path: Path) -> None:
    torch.manual_seed(0)
    teacher, student = TwoInputs().eval(), TwoInputs()
    spec = [TensorSpec("a", ("batch", 3)), TensorSpec("b", ("batch", 5))]
    ctx = distill_ctx(tmp_path, torch_handle(teacher, spec, ("y",)), "passes: [{type: distill, epochs: 2, random_samples: 64}]\n")
    result = distill(ctx, torch_handle(student, spec, ("y",)))  # shapes differ: a wrong order would raise
    assert result.metrics["steps"] == 2


def test_plain_zero_weights_stay_zero_and_runs_are_deterministic(tmp_path: Path) -> None:
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 5)).eval()
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        student[0].weight[:, :3] = 0.0  # pruned without a mask
    spec = [TensorSpec("x", ("batch", 6))]
    body = "passes: [{type: distill, epochs: 2, lr: 0.01, random_samples: 128}]\n"
    runs = [distill(distill_ctx(tmp_path, torch_handle(teacher, spec, ("y",)), body), torch_handle(student, spec, ("y",))) for _ in range(2)]
    out = runs[0].model.module
    assert torch.all(out[0].weight[:, :3] == 0)
    assert runs[0].metrics["frozen_zero_weights"] == 16 * 3
    a, b = (r.model.module.state_dict() for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_mismatched_student_outputs_are_a_pass_error(tmp_path: Path) -> None:
    teacher = torch.nn.Linear(4, 3).eval()
    spec = [TensorSpec("x", ("batch", 4))]
    ctx = distill_ctx(tmp_path, torch_handle(teacher, spec, ("y",)), "passes: [{type: distill, epochs: 1, random_samples: 8}]\n")
    with pytest.raises(PassError, match="differs from the teacher"):
        distill(ctx, torch_handle(torch.nn.Linear(4, 2), spec, ("y",)))


# ---------------------------------------------------------------- check()


def plan(body: str, *, input_form: str = "torch", has_input_spec: bool = True) -> PlanContext:
    cfg = load_config_text("schema_version: 1\n" + body)
    return PlanContext(config=cfg, input_form=input_form, has_input_spec=has_input_spec, index=0, form_at_pass="torch")


def test_check_rejects_an_onnx_input_model() -> None:
    p = plan(DIGITS_DATA + "passes: [{type: distill}]\n", input_form="onnx")
    with pytest.raises(ConfigError, match="teacher in torch form; the input model is ONNX") as info:
        DistillPass(p.config.passes[0]).check(p)
    assert info.value.key == "passes[0]"
    assert info.value.exit_code == 2


def test_check_rejects_no_training_data_and_no_input_spec() -> None:
    p = plan("passes: [{type: distill}]\n", has_input_spec=False)
    with pytest.raises(ConfigError, match=r"needs training data \(data.train\) or declared model.inputs"):
        DistillPass(p.config.passes[0]).check(p)


def test_check_accepts_an_input_spec_without_data_and_data_without_a_spec() -> None:
    p = plan("passes: [{type: distill}]\n", has_input_spec=True)
    DistillPass(p.config.passes[0]).check(p)
    p = plan(DIGITS_DATA + "passes: [{type: distill}]\n", has_input_spec=False)
    DistillPass(p.config.passes[0]).check(p)


@pytest.mark.parametrize(
    "option, message",
    [("alpha: 1.5", "alpha"), ("temperature: 0", "temperature"), ("optimizer: rmsprop", "optimizer"), ("epochs: 0", "epochs")],
)
def test_config_values_are_validated_at_load_time(option: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config_text(f"schema_version: 1\npasses: [{{type: distill, {option}}}]\n")


def test_a_student_with_the_teachers_weights_is_returned_untrained(tmp_path: Path) -> None:
    """`sparsity: auto` may choose 0: distilling the teacher's own copy only adds noise, so the pass skips."""
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 5)).eval()
    spec = [TensorSpec("x", ("batch", 6))]
    ctx = distill_ctx(tmp_path, torch_handle(teacher, spec), "passes: [{type: distill, epochs: 2, lr: 0.05}]\n")
    same = copy.deepcopy(teacher)
    result = distill(ctx, torch_handle(same, spec))
    assert "nothing to recover" in result.metrics["skipped"] and result.notes == [result.metrics["skipped"]]
    assert result.model.module is same
    assert all(torch.equal(a, b) for a, b in zip(same.state_dict().values(), teacher.state_dict().values(), strict=True))
    changed = copy.deepcopy(teacher)
    with torch.no_grad():
        changed[0].weight[0, 0] += 1.0  # one weight differs: trained as usual
    trained = distill(ctx, torch_handle(changed, spec))
    assert "skipped" not in trained.metrics and trained.metrics["epochs_run"] == 2


class ModeRecorder(torch.nn.Module):
    """A student that records whether each training forward ran in training mode."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 5))
        self.modes: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            self.modes.append(self.training)
        return self.body(x)


@pytest.mark.parametrize("train_mode", [True, False])
def test_train_mode_false_trains_the_student_in_inference_mode(tmp_path: Path, train_mode: bool) -> None:
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 5)).eval()
    spec = [TensorSpec("x", ("batch", 6))]
    ctx = distill_ctx(tmp_path, torch_handle(teacher, spec),
                      f"passes: [{{type: distill, epochs: 1, lr: 0.01, train_mode: {str(train_mode).lower()}}}]\n")
    before = ModeRecorder()
    student = distill(ctx, torch_handle(before, spec)).model.module  # the pass trains a copy
    assert student.modes and set(student.modes) == {train_mode}
    old = before.body.state_dict()
    assert any(not torch.equal(old[k], v) for k, v in student.body.state_dict().items()), "weights trained"


def test_frozen_parameters_keep_their_values_and_the_rest_train(tmp_path: Path) -> None:
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 5)).eval()
    spec = [TensorSpec("x", ("batch", 6))]
    start = copy.deepcopy(teacher)
    with torch.no_grad():
        for p in start.parameters():
            p.add_(0.1 * torch.randn_like(p))  # a student to recover
    before = {k: v.clone() for k, v in start.state_dict().items()}
    ctx = distill_ctx(tmp_path, torch_handle(teacher, spec), "passes: [{type: distill, epochs: 1, lr: 0.01, freeze: ['0.*']}]\n")
    result = distill(ctx, torch_handle(start, spec))
    after = result.model.module.state_dict()
    assert torch.equal(after["0.weight"], before["0.weight"]) and torch.equal(after["0.bias"], before["0.bias"])
    assert not torch.equal(after["2.weight"], before["2.weight"])
    assert result.metrics["frozen_params"] == 6 * 16 + 16
    assert all(p.requires_grad for p in result.model.module.parameters())  # restored after the run
    bad = distill_ctx(tmp_path / "b", torch_handle(teacher, spec), "passes: [{type: distill, epochs: 1, freeze: ['*.attention.*']}]\n")
    with pytest.raises(PassError, match=r"freeze: \*\.attention\.\* matches no parameter"):
        distill(bad, torch_handle(copy.deepcopy(start), spec))


def test_a_freeze_pattern_matching_no_parameter_is_refused_at_plan_time(cfg):
    # exit 2 before any pass runs, not exit 1 after the earlier passes did their work
    module = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    plan = PlanContext(config=cfg, input_form="torch", has_input_spec=True, index=1, form_at_pass="torch",
                       model=torch_handle(module, [TensorSpec("x", ("batch", 6))]))
    with pytest.raises(ConfigError, match=r"nomatch\* matches no parameter of the model") as err:
        DistillPass(DistillConfig(freeze=["0.*", "nomatch*"])).check(plan)
    assert err.value.key == "passes[1].freeze"
    DistillPass(DistillConfig(freeze=["0.*"])).check(plan)
    plan.earlier = [object()]  # after another pass the names may change (split attention, masks): run time judges
    DistillPass(DistillConfig(freeze=["*.q_proj.*"])).check(plan)
