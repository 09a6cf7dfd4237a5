"""passes.distill training loop: warm-up + schedule, gradient clipping, early stopping, best-weights
selection, safetensors checkpoints and resume (bit-identical to an uninterrupted run), data-loader
workers, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import StopAfterEpochs, distill_ctx, torch_handle

from optimize.config import load_config_text
from optimize.context import RunContext
from optimize.errors import ConfigError
from optimize.handle import ModelHandle, TensorSpec
from passes.distill import DistillConfig, DistillPass, lr_at

SPEC = [TensorSpec("x", ("batch", 6))]


def models(seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(seed)
    teacher = torch.nn.Sequential(torch.nn.Linear(6, 32), torch.nn.Tanh(), torch.nn.Linear(32, 5)).eval()
    student = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 5))
    return teacher, student


def labelled_data(tmp_path: Path, teacher: torch.nn.Module) -> str:
    """Train/eval .npz files labelled by the teacher itself (so accuracy is meaningful)."""
    rng = np.random.default_rng(0)
    for name, n in (("train", 256), ("eval", 128)):
        x = rng.uniform(-1, 1, (n, 6)).astype(np.float32)
        with torch.no_grad():
            y = teacher(torch.from_numpy(x)).argmax(-1).numpy().astype(np.int64)
        np.savez(tmp_path / f"{name}.npz", x=x, y=y)
    return f"data: {{train: {{source: {str(tmp_path / 'train.npz')!r}}}, eval: {{source: {str(tmp_path / 'eval.npz')!r}}}, batch_size: 32}}\n"


def distill(ctx: RunContext, student):
    return DistillPass(ctx.config.passes[0]).run(torch_handle(student, SPEC), ctx)


def test_learning_rate_warms_up_then_follows_the_schedule() -> None:
    cfg = DistillConfig(lr=0.1, warmup_steps=4, lr_schedule="cosine")
    lrs = [lr_at(cfg, s, 20) for s in range(20)]
    assert lrs[:4] == pytest.approx([0.025, 0.05, 0.075, 0.1])
    assert lrs[4] == pytest.approx(0.1) and lrs[12] == pytest.approx(0.05)
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:], strict=False)) and lrs[-1] < 0.002
    lin = DistillConfig(lr=0.1, lr_schedule="linear")
    assert [lr_at(lin, s, 10) for s in (0, 5)] == pytest.approx([0.1, 0.05])
    const = DistillConfig(lr=0.1, lr_schedule="constant", warmup_steps=2)
    assert [lr_at(const, s, 10) for s in (0, 1, 2, 9)] == pytest.approx([0.05, 0.1, 0.1, 0.1])


@pytest.mark.parametrize("optimizer, fused", [("adamw", True), ("adam", True), ("sgd", None)])
def test_adam_updates_cpu_parameters_with_the_fused_kernel(optimizer: str, fused) -> None:
    from passes.distill.optim import fusable, make_optimizer

    net = torch.nn.Linear(3, 2)
    opt = make_optimizer(DistillConfig(type="distill", optimizer=optimizer), list(net.parameters()))
    assert opt.defaults.get("fused") is fused
    assert not fusable([]) and not fusable([torch.zeros(2, dtype=torch.int64)])
    before = net.weight.detach().clone()
    net(torch.ones(1, 3)).sum().backward()
    opt.step()
    assert not torch.equal(before, net.weight)


def test_gradient_clipping_is_applied_and_counted(tmp_path: Path) -> None:
    teacher, student = models()
    body = "passes: [{type: distill, epochs: 2, random_samples: 64, grad_clip: 0.001}]\n"
    m = distill(distill_ctx(tmp_path, torch_handle(teacher, SPEC), body, base_dir=tmp_path), student).metrics
    assert m["clipped_steps"] == m["steps"] == 2  # every step's norm was above 0.001


def test_early_stopping_ends_training_when_the_eval_metric_stalls(tmp_path: Path) -> None:
    teacher, student = models()
    body = labelled_data(tmp_path, teacher) + (
        "passes: [{type: distill, epochs: 10, lr: 1.0e-9, lr_schedule: constant, early_stopping_patience: 2, min_delta: 0.5}]\n"
    )
    m = distill(distill_ctx(tmp_path, torch_handle(teacher, SPEC), body, base_dir=tmp_path), student).metrics
    # lr ~0: the metric cannot improve by 0.5 points, so epochs 2 and 3 count as stalled
    assert m["stopped_early"] is True and m["epochs_run"] == 3 and m["best_epoch"] == 1
    assert len(m["eval_metric_per_epoch"]) == 3 and m["steps"] == 3 * 8
    assert m["eval_metric"] == "top-1 accuracy (%) on data.eval"


def test_keep_best_returns_the_best_epochs_weights(tmp_path: Path) -> None:
    teacher, student = models()
    body = labelled_data(tmp_path, teacher) + (
        "passes: [{type: distill, epochs: 6, lr: 0.3, optimizer: sgd, lr_schedule: constant, keep_best: true}]\n"
    )
    result = distill(distill_ctx(tmp_path, torch_handle(teacher, SPEC), body, base_dir=tmp_path), student)
    m = result.metrics
    scores = m["eval_metric_per_epoch"]
    assert len(scores) == 6 and m["best_epoch"] == 1 + int(np.argmax(scores))
    assert m["student_accuracy"] == pytest.approx(max(scores), abs=1e-3)  # the returned weights score the best
    assert any("keep_best" in n and "optimistic" in n for n in result.notes)


def test_resume_after_an_interrupted_run_matches_an_uninterrupted_one(tmp_path: Path) -> None:
    teacher, student = models()
    body = "passes: [{type: distill, epochs: 3, lr: 0.01, batch_size: 32, random_samples: 256, checkpoint_every: 5, checkpoint_dir: ck}]\n"
    full = distill(distill_ctx(tmp_path / "a", torch_handle(teacher, SPEC), body, base_dir=tmp_path / "a"), student)

    # interrupted after epoch 2 (step 16); the last checkpoint is step 15, in the middle of epoch 2
    ctx = distill_ctx(tmp_path / "b", torch_handle(teacher, SPEC), body, base_dir=tmp_path / "b", progress=StopAfterEpochs(2))
    with pytest.raises(KeyboardInterrupt):
        distill(ctx, student)
    files = sorted(p.name for p in (tmp_path / "b" / "ck").iterdir())
    assert files == ["step-00000010.safetensors", "step-00000015.safetensors"]  # the newest two

    resumed = distill(distill_ctx(tmp_path / "b", torch_handle(teacher, SPEC), body, base_dir=tmp_path / "b", resume=True), student)
    assert resumed.metrics["resumed_from"].endswith("step-00000015.safetensors")
    assert resumed.metrics["steps"] == full.metrics["steps"] == 24
    a, b = full.model.module.state_dict(), resumed.model.module.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    assert resumed.metrics["loss_per_epoch"] == full.metrics["loss_per_epoch"]

    # a checkpoint from another configuration is refused (exit 2), not silently mixed in
    other = body.replace("lr: 0.01", "lr: 0.02")
    with pytest.raises(ConfigError, match="different run configuration") as info:
        distill(distill_ctx(tmp_path / "b", torch_handle(teacher, SPEC), other, base_dir=tmp_path / "b", resume=True), student)
    assert info.value.exit_code == 2
    # --resume without any checkpoint trains from the start, and says so
    fresh = distill(distill_ctx(tmp_path / "c", torch_handle(teacher, SPEC), body, base_dir=tmp_path / "c", resume=True), student)
    assert any("no checkpoint" in n for n in fresh.notes)


def test_loader_workers_give_the_same_result_as_loading_in_process(tmp_path: Path) -> None:
    teacher, student = models()
    runs = []
    for workers in (0, 2):
        body = f"passes: [{{type: distill, epochs: 2, lr: 0.01, random_samples: 128, num_workers: {workers}}}]\n"
        runs.append(distill(distill_ctx(tmp_path, torch_handle(teacher, SPEC), body, base_dir=tmp_path), student).model.module.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


class ViewNet(torch.nn.Module):
    """A CNN whose forward uses .view() on an activation: fails on channels-last activations."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        return self.fc(h.view(h.shape[0], -1))


class FlatNet(ViewNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.conv(x), 1))


@pytest.mark.parametrize("net, mode, expected", [(FlatNet, "auto", True), (ViewNet, "auto", False), (FlatNet, "off", False), (FlatNet, "true", True)])
def test_channels_last_auto_is_used_only_where_the_model_runs_with_it(tmp_path: Path, net, mode: str, expected: bool) -> None:
    torch.manual_seed(0)
    teacher, student = net().eval(), net()
    spec = [TensorSpec("x", ("batch", 3, 4, 4))]
    h = ModelHandle(form="torch", inputs=spec, outputs=["y"], module=teacher)
    cfg = load_config_text(f"schema_version: 1\npasses: [{{type: distill, epochs: 1, random_samples: 32, channels_last: {mode}}}]\n")
    ctx = RunContext(config=cfg, work_dir=tmp_path, input_model=h, threads=1, base_dir=tmp_path)
    ctx.inputs = spec
    m = DistillPass(cfg.passes[0]).run(h.replace(module=student), ctx).metrics
    assert m["channels_last"] is expected and m["steps"] == 1


def test_keep_best_hands_back_the_starting_weights_when_no_epoch_beats_them(tmp_path: Path) -> None:
    """A student that already matches its teacher, trained at an lr that only moves it away (seen on
    a lightly pruned MiniLM: mean cosine 0.9916 before one epoch, 0.9837 after): keep_best returns it
    unchanged, and says so."""
    import copy

    teacher, _ = models()
    student = copy.deepcopy(teacher)
    with torch.no_grad():  # close to the teacher, not equal (an equal student is skipped)
        next(student.parameters()).add_(1e-3)
    start = {k: v.clone() for k, v in student.state_dict().items()}
    body = labelled_data(tmp_path, teacher) + (
        "passes: [{type: distill, epochs: 2, lr: 5.0, optimizer: sgd, lr_schedule: constant, keep_best: true}]\n"
    )
    result = distill(distill_ctx(tmp_path, torch_handle(teacher, SPEC), body, base_dir=tmp_path), student)
    m = result.metrics
    assert m["best_epoch"] == 0 and max(m["eval_metric_per_epoch"]) < m["eval_metric_start"], m
    assert all(torch.equal(v, start[k]) for k, v in result.model.module.state_dict().items())
    assert any("no epoch beat the starting weights" in n for n in result.notes)


def test_batch_size_one_trains_a_step_per_sample(tmp_path: Path) -> None:
    teacher, student = models()
    body = "passes: [{type: distill, epochs: 1, random_samples: 8, batch_size: 1}]\n"
    m = distill(distill_ctx(tmp_path, torch_handle(teacher, SPEC), body, base_dir=tmp_path), student).metrics
    assert m["steps"] == 8 and m["batch_size"] == 1 and m["train_loss"] is not None
