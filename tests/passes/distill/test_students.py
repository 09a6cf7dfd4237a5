"""passes.distill students and losses: a half-width student derived from the teacher (Torch-Pruning,
initialized from the teacher's weights), a shallower one (blocks dropped), a factory student,
feature distillation with learned projections, cosine output loss, and the plan/run-time errors
for bad options (exit 2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import child_pythonpath, digits_teacher, distill_ctx, torch_handle
from helpers import run_first_pass as distill

from optimize.config import load_config_text
from optimize.context import PlanContext
from optimize.errors import ConfigError
from optimize.handle import TensorSpec
from passes.distill import DistillPass

DIGITS_SPEC = [TensorSpec("x", ("batch", 1, 8, 8))]
DIGITS_DATA = """data:
  train: {source: "builtin:digits", split: train}
  eval: {source: "builtin:digits", split: test}
"""


class Block(torch.nn.Module):
    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc(x))


class Deep(torch.nn.Module):
    """in → 4 identical blocks (a ModuleList) → out."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = torch.nn.Linear(6, 16)
        self.blocks = torch.nn.ModuleList(Block() for _ in range(4))
        self.out = torch.nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for b in self.blocks:
            h = b(h)
        return self.out(h)


MLP_SPEC = [TensorSpec("x", ("batch", 6))]


# ---------------------------------------------------------------- students


def test_half_width_student_is_derived_from_the_teacher_and_keeps_its_accuracy(tmp_path: Path, teacher_weights: Path) -> None:
    teacher = digits_teacher(teacher_weights)
    body = DIGITS_DATA + "passes: [{type: distill, epochs: 3, lr: 0.005, student: {width: 0.5}}]\n"
    ctx = distill_ctx(tmp_path, torch_handle(teacher, DIGITS_SPEC, ("logits",)), body, base_dir=tmp_path)
    result = distill(ctx, torch_handle(teacher, DIGITS_SPEC, ("logits",)))
    m, s = result.metrics, result.model.module
    assert m["student"] == "width 0.5"
    # the channels really shrank (conv1 16 → 8, conv2 32 → 16, fc1 64 → 32); the output layer kept its 10 classes
    assert (s.conv1.out_channels, s.conv2.out_channels, s.fc1.out_features, s.fc2.out_features) == (8, 16, 32, 10)
    assert m["student_params"] < 0.3 * m["teacher_params"]
    assert m["student_params"] == sum(p.numel() for p in s.parameters())
    # initialized from the teacher's weights: accuracy before training is far above chance (10%)
    assert m["student_accuracy_before"] > 30.0
    assert m["distillation_ratio"] >= 0.95
    assert s is not teacher and teacher.conv1.out_channels == 16


def test_depth_student_keeps_evenly_spaced_blocks_with_the_teachers_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    teacher = Deep().eval()
    body = "passes: [{type: distill, epochs: 3, lr: 0.01, random_samples: 256, student: {depth: 0.5}}]\n"
    ctx = distill_ctx(tmp_path, torch_handle(teacher, MLP_SPEC, ("y",)), body, base_dir=tmp_path)
    result = distill(ctx, torch_handle(teacher, MLP_SPEC, ("y",)))
    s = result.model.module
    assert len(s.blocks) == 2 and len(teacher.blocks) == 4
    assert result.metrics["student_blocks"] == [0, 3]
    assert result.metrics["kd_loss"] < result.metrics["kd_loss_first_epoch"]
    # untouched layers start from the teacher; dropped blocks are gone from the parameter count
    assert result.metrics["student_params"] == result.metrics["teacher_params"] - 2 * (16 * 16 + 16)


def test_depth_student_on_a_named_sequential_and_its_errors(tmp_path: Path) -> None:
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Sequential(*[Block() for _ in range(6)]), torch.nn.Linear(16, 5)).eval()
    t = torch_handle(teacher, MLP_SPEC, ("y",))
    ctx = distill_ctx(tmp_path, t, "passes: [{type: distill, epochs: 1, random_samples: 64, student: {depth: 0.34, depth_module: '1'}}]\n", base_dir=tmp_path)
    result = distill(ctx, t)
    assert result.metrics["student_blocks"] == [0, 5]  # round(0.34 × 6) = 2 blocks: the first and the last
    assert len(result.model.module[1]) == 2 and len(teacher[1]) == 6

    from passes.distill.students import drop_blocks

    src = Deep()
    last = src.blocks[3].fc.weight.detach().clone()
    out, kept = drop_blocks(src, 0.5, None, MLP_SPEC, ctx, "k")  # the kept blocks are the teacher's own
    assert kept == [0, 3] and torch.equal(out.blocks[1].fc.weight, last)
    assert drop_blocks(Deep(), 0.75, None, MLP_SPEC, ctx, "k")[1] == [0, 2, 3]

    ctx = distill_ctx(tmp_path, t, "passes: [{type: distill, epochs: 1, random_samples: 64, student: {depth: 0.5, depth_module: 'nope'}}]\n", base_dir=tmp_path)
    with pytest.raises(ConfigError, match="no submodule 'nope'") as info:
        distill(ctx, t)
    assert info.value.exit_code == 2
    flat = torch.nn.Linear(6, 5)
    ctx = distill_ctx(tmp_path, torch_handle(flat, MLP_SPEC, ("y",)), "passes: [{type: distill, epochs: 1, random_samples: 64, student: {depth: 0.5}}]\n", base_dir=tmp_path)
    with pytest.raises(ConfigError, match="no nn.ModuleList / nn.Sequential of repeated blocks"):
        distill(ctx, torch_handle(flat, MLP_SPEC, ("y",)))


FACTORY = '''
import torch

def small():
    torch.manual_seed(3)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 5))

def not_a_module():
    return 42
'''


def test_factory_student_with_weights(tmp_path: Path) -> None:
    (tmp_path / "my_students.py").write_text(FACTORY)
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Linear(6, 32), torch.nn.Tanh(), torch.nn.Linear(32, 5)).eval()
    init = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 5))
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in init.state_dict().items()}, str(tmp_path / "init.safetensors"))
    t = torch_handle(teacher, MLP_SPEC, ("y",))
    body = "passes: [{type: distill, epochs: 4, lr: 0.01, random_samples: 256, student: {factory: 'my_students:small', weights: init.safetensors}}]\n"
    result = distill(distill_ctx(tmp_path, t, body, base_dir=tmp_path), t)
    s = result.model.module
    assert s[0].out_features == 8
    assert result.metrics["student"] == "factory my_students:small + init.safetensors"
    assert result.metrics["student_params"] == 6 * 8 + 8 + 8 * 5 + 5
    assert result.metrics["kd_loss"] < result.metrics["kd_loss_first_epoch"]

    body = "passes: [{type: distill, epochs: 1, random_samples: 8, student: {factory: 'my_students:not_a_module'}}]\n"
    with pytest.raises(ConfigError, match="returned int, not a torch.nn.Module"):
        distill(distill_ctx(tmp_path, t, body, base_dir=tmp_path), t)


@pytest.mark.parametrize(
    "student, message",
    [
        ("{}", "give width, depth or factory"),
        ("{width: 1.0}", "width"),
        ("{factory: 'a:b', width: 0.5}", "cannot be combined"),
        ("{weights: w.safetensors, width: 0.5}", "weights needs factory"),
        ("{factory: 'no colon'}", "factory"),
    ],
)
def test_student_options_are_validated_at_load_time(student: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config_text(f"schema_version: 1\npasses: [{{type: distill, student: {student}}}]\n")


# ---------------------------------------------------------------- losses


def test_feature_distillation_with_a_learned_projection(tmp_path: Path, teacher_weights: Path) -> None:
    teacher = digits_teacher(teacher_weights)
    body = DIGITS_DATA + (
        "passes: [{type: distill, epochs: 2, lr: 0.005, student: {width: 0.5}, "
        "features: [{teacher: conv2, student: conv2}, {teacher: fc1, student: fc1, weight: 0.5}]}]\n"
    )
    result = distill(distill_ctx(tmp_path, torch_handle(teacher, DIGITS_SPEC, ("logits",)), body, base_dir=tmp_path), torch_handle(teacher, DIGITS_SPEC, ("logits",)))
    m = result.metrics
    # widths differ (16 vs 32 channels, 32 vs 64 neurons): a 1x1 conv and a linear projection
    assert m["feature_projections"] == ["Conv2d", "Linear"]
    assert m["feature_pairs"] == ["conv2 <- conv2", "fc1 <- fc1"]
    assert m["feature_loss"] < m["feature_loss_first_epoch"]
    # the total loss includes the feature part; the projections are not part of the student
    assert m["train_loss"] > m["kd_loss"] * 0.7 - 1e-6
    assert not any("projection" in k for k in result.model.module.state_dict())
    assert m["distillation_ratio"] >= 0.9


def test_feature_pairs_of_equal_width_and_cosine_feature_loss(tmp_path: Path) -> None:
    torch.manual_seed(0)
    teacher = Deep().eval()
    student = Deep()
    t = torch_handle(teacher, MLP_SPEC, ("y",))
    body = "passes: [{type: distill, epochs: 3, lr: 0.01, random_samples: 128, feature_loss: cosine, features: [{teacher: blocks.1, student: blocks.1}]}]\n"
    m = distill(distill_ctx(tmp_path, t, body, base_dir=tmp_path), torch_handle(student, MLP_SPEC, ("y",))).metrics
    assert m["feature_projections"] == ["Identity"]
    assert 0 <= m["feature_loss"] < m["feature_loss_first_epoch"]


@pytest.mark.parametrize("kind", ["cosine", "mse"])
def test_token_features_are_averaged_over_real_tokens_only(kind: str) -> None:
    """A text batch is padded to its longest line: what the student computes at padding positions
    must not weigh in the feature loss."""
    from passes.distill.config import FeaturePairConfig
    from passes.distill.features import feature_loss

    gen = torch.Generator().manual_seed(7)
    t = torch.randn(2, 5, 8, generator=gen)
    s = t + 0.1 * torch.randn(2, 5, 8, generator=gen)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    noisy = s.clone()
    noisy[1, 2:] = 100 * torch.randn(3, 8, generator=gen)  # garbage where the second line has no tokens
    pairs = [FeaturePairConfig(teacher="x", student="x")]
    clean = feature_loss(pairs, [s], [t], kind, mask)
    assert feature_loss(pairs, [noisy], [t], kind, mask) == pytest.approx(float(clean), rel=1e-5)
    assert float(feature_loss(pairs, [noisy], [t], kind)) > 2 * float(clean)  # without the mask it counts
    keep = mask.bool()
    per = (1 - torch.nn.functional.cosine_similarity(s, t, dim=-1))[keep] if kind == "cosine" else ((s - t) ** 2)[keep]
    assert float(clean) == pytest.approx(float(per.mean()), rel=1e-5)


def test_a_feature_pair_naming_a_missing_layer_is_a_config_error(tmp_path: Path, teacher_weights: Path) -> None:
    teacher = digits_teacher(teacher_weights)
    # at plan time, when the model is known
    cfg = load_config_text("schema_version: 1\n" + DIGITS_DATA + "passes: [{type: distill, features: [{teacher: conv9, student: conv2}]}]\n")
    pc = PlanContext(config=cfg, input_form="torch", has_input_spec=True, index=0, form_at_pass="torch", model=torch_handle(teacher, DIGITS_SPEC, ("logits",)))
    with pytest.raises(ConfigError, match=r"no layer 'conv9' in the teacher \(did you mean 'conv2'\?\)") as info:
        DistillPass(cfg.passes[0]).check(pc)
    assert info.value.key == "passes[0].features[0].teacher" and info.value.exit_code == 2
    # at run time, before training, for a student whose names are only known then
    torch.manual_seed(0)
    deep = Deep().eval()
    body = "passes: [{type: distill, epochs: 1, random_samples: 32, student: {depth: 0.5}, features: [{teacher: blocks.3, student: blocks.3}]}]\n"
    with pytest.raises(ConfigError, match=r"no layer 'blocks.3' in the student"):
        distill(distill_ctx(tmp_path, torch_handle(deep, MLP_SPEC, ("y",)), body, base_dir=tmp_path), torch_handle(deep, MLP_SPEC, ("y",)))


def test_embedding_task_with_cosine_output_loss(tmp_path: Path) -> None:
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Linear(6, 24), torch.nn.Tanh(), torch.nn.Linear(24, 8)).eval()
    student = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 8))
    np.savez(tmp_path / "eval.npz", x=np.random.default_rng(1).uniform(-1, 1, (64, 6)).astype(np.float32))
    body = (
        f"model: {{task: embedding}}\ndata: {{eval: {{source: {str(tmp_path / 'eval.npz')!r}}}}}\n"
        "passes: [{type: distill, epochs: 6, lr: 0.02, random_samples: 256, output_loss: cosine}]\n"
    )
    m = distill(distill_ctx(tmp_path, torch_handle(teacher, MLP_SPEC, ("y",)), body, base_dir=tmp_path), torch_handle(student, MLP_SPEC, ("y",))).metrics
    assert m["loss"] == "1 - cosine(student, teacher)"
    assert m["train_loss"] < 0.5 * m["train_loss_first_epoch"]
    assert m["eval_cosine_vs_teacher"] > m["eval_cosine_vs_teacher_before"]
    assert m["eval_cosine_vs_teacher"] > 0.9


# ---------------------------------------------------------------- plan-time checks


def plan_ctx(body: str, earlier=(), has_eval: bool = True) -> PlanContext:
    data = DIGITS_DATA if has_eval else 'data: {train: {source: "builtin:digits", split: train}}\n'
    cfg = load_config_text("schema_version: 1\n" + data + body)
    return PlanContext(config=cfg, input_form="torch", has_input_spec=True, index=1, form_at_pass="torch", earlier=list(earlier))


def test_check_rejects_a_derived_student_after_other_passes_and_selection_without_eval() -> None:
    from passes.prune import PruneConfig, PrunePass

    pc = plan_ctx("passes: [{type: distill, student: {width: 0.5}}]\n", earlier=[PrunePass(PruneConfig())])
    with pytest.raises(ConfigError, match="what prune did before distill would be discarded") as info:
        DistillPass(pc.config.passes[0]).check(pc)
    assert info.value.key == "passes[1].student"
    pc = plan_ctx("passes: [{type: distill, keep_best: true}]\n", has_eval=False)
    with pytest.raises(ConfigError, match="keep_best selects on the eval metric: declare data.eval"):
        DistillPass(pc.config.passes[0]).check(pc)
    pc = plan_ctx("passes: [{type: distill, student: {factory: 'surely_missing_module_x:f'}}]\n")
    with pytest.raises(ConfigError, match="cannot find module 'surely_missing_module_x'"):
        DistillPass(pc.config.passes[0]).check(pc)


def test_cli_exits_2_before_any_work_for_a_missing_feature_layer_or_no_data_and_no_inputs(tmp_path: Path) -> None:
    import subprocess
    import sys

    def run(config: str, model: str) -> subprocess.CompletedProcess:
        (tmp_path / "p.yaml").write_text("schema_version: 1\n" + config)
        return subprocess.run(
            [sys.executable, "-m", "cli", "run", model, "-c", "p.yaml", "-o", "out.onnx"],
            cwd=tmp_path, capture_output=True, text=True, timeout=120, env={**__import__("os").environ, "PYTHONPATH": child_pythonpath()},
        )

    r = run(DIGITS_DATA + "passes: [{type: distill, features: [{teacher: conv9, student: conv2}]}]\n", "optimize.example:digits_cnn")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == (
        "error: p.yaml: passes[0].features[0].teacher: no layer 'conv9' in the teacher (did you mean 'conv2'?)"
    )
    (tmp_path / "nospec.py").write_text("import torch\n\ndef net():\n    return torch.nn.Linear(4, 2)\n")
    r = run("passes: [{type: distill}]\n", "nospec:net")
    assert r.returncode == 2
    assert "distill needs training data (data.train) or declared model.inputs" in r.stderr
    assert not list(tmp_path.glob("out*"))
