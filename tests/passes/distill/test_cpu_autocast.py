"""distill `amp` on the CPU: bf16 autocast when asked, and with `auto` only where a timing probe of
the run's own step shows it pays; the probe leaves training exactly as it would have been."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import StopAfterEpochs, distill_ctx, torch_handle

from optimize.handle import TensorSpec
from passes.distill import DistillPass, cpu_autocast

SPEC = [TensorSpec("x", ("batch", 6))]


def models() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Linear(6, 32), torch.nn.Tanh(), torch.nn.Linear(32, 5)).eval()
    # batch norm statistics and dropout masks: what a careless probe would change
    student = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.BatchNorm1d(16), torch.nn.Tanh(),
                                  torch.nn.Dropout(0.2), torch.nn.Linear(16, 5))
    return teacher, student


def run(tmp_path: Path, amp: str, train_mode: bool = True):
    teacher, student = models()
    body = f"passes: [{{type: distill, epochs: 2, random_samples: 96, amp: {amp}, train_mode: {str(train_mode).lower()}}}]\n"
    ctx = distill_ctx(tmp_path, torch_handle(teacher, SPEC), body, base_dir=tmp_path)
    return DistillPass(ctx.config.passes[0]).run(torch_handle(student, SPEC), ctx)


def test_amp_true_trains_under_bf16_autocast_on_the_cpu(tmp_path: Path) -> None:
    m = run(tmp_path, "true").metrics
    assert m["amp"] == "bfloat16" and m["device"] == "cpu" and "amp_choice" not in m
    assert m["train_loss"] < m["train_loss_first_epoch"]


def test_amp_auto_stays_fp32_on_a_cpu_without_bf16_instructions(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(cpu_autocast, "native_bf16", lambda: False)
    m = run(tmp_path, "auto").metrics
    assert m["amp"] is None and m["amp_choice"].startswith("fp32: this CPU has no native bf16")


def test_amp_auto_uses_bf16_where_the_probe_measures_it_faster(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(cpu_autocast, "native_bf16", lambda: True)
    monkeypatch.setattr(cpu_autocast, "timed_steps", lambda step, modes: (0.2, 0.1))
    m = run(tmp_path, "auto").metrics
    assert m["amp"] == "bfloat16" and "2.00x" in m["amp_choice"] and m["amp_choice"].endswith("used")


@pytest.mark.parametrize("train_mode", [True, False])
def test_a_declined_probe_leaves_training_bit_identical_to_fp32(tmp_path: Path, monkeypatch, train_mode: bool) -> None:
    monkeypatch.setattr(cpu_autocast, "native_bf16", lambda: True)
    monkeypatch.setattr(cpu_autocast, "MIN_SPEEDUP", float("inf"))  # real probe steps, then fp32
    probed = run(tmp_path / "a", "auto", train_mode)
    plain = run(tmp_path / "b", "false", train_mode)
    assert probed.metrics["amp"] is None and "not used" in probed.metrics["amp_choice"]
    a, b = probed.model.module.state_dict(), plain.model.module.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # weights and BN statistics


def test_timed_steps_warms_each_mode_then_alternates_and_keeps_the_fastest(monkeypatch) -> None:
    calls: list[bool] = []
    durations = iter([3.0, 1.0, 2.0, 0.5])  # fp32, bf16, fp32, bf16 (timed rounds only)
    now = [0.0]

    def clock() -> float:
        return now[0]

    def step(use_amp: bool) -> None:
        calls.append(use_amp)
        if len(calls) > 2:  # the two warm-up calls are not timed
            now[0] += next(durations)

    monkeypatch.setattr(cpu_autocast.time, "perf_counter", clock)
    assert cpu_autocast.timed_steps(step, (False, True), rounds=2) == (2.0, 0.5)
    assert calls == [False, True, False, True, False, True]


class MasksInPlace(torch.nn.Module):
    """Writes a (bf16, under autocast) result into an fp32 tensor through a boolean mask: an index
    put that autocast breaks ("source and destination dtypes match")."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(6, 5)

    def forward(self, x):
        y = self.lin(x)
        out = torch.zeros(y.shape, dtype=torch.float32)
        out[torch.ones_like(out, dtype=torch.bool)] = y.flatten()
        return out


def test_a_model_that_fails_under_autocast_trains_in_fp32(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(cpu_autocast, "native_bf16", lambda: True)
    teacher, _ = models()
    body = "passes: [{type: distill, epochs: 1, random_samples: 64}]\n"
    ctx = distill_ctx(tmp_path, torch_handle(teacher, SPEC), body, base_dir=tmp_path)
    m = DistillPass(ctx.config.passes[0]).run(torch_handle(MasksInPlace(), SPEC), ctx).metrics
    assert m["amp"] is None and m["amp_choice"].startswith("fp32: a training step under bf16 autocast failed")


def test_a_student_with_its_own_forward_hooks_is_not_probed(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(cpu_autocast, "native_bf16", lambda: True)
    monkeypatch.setattr(cpu_autocast, "timed_steps", lambda step, modes: pytest.fail("probed"))
    teacher, student = models()
    seen: list[int] = []
    student[1].register_forward_pre_hook(lambda mod, args: seen.append(1))  # like QAT's observers
    body = "passes: [{type: distill, epochs: 1, random_samples: 64}]\n"
    ctx = distill_ctx(tmp_path, torch_handle(teacher, SPEC), body, base_dir=tmp_path)
    m = DistillPass(ctx.config.passes[0]).run(torch_handle(student, SPEC), ctx).metrics
    assert m["amp"] is None and "forward hooks of its own" in m["amp_choice"] and seen


def test_amp_true_on_a_cpu_without_bf16_instructions_says_it_is_emulated(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(cpu_autocast, "native_bf16", lambda: False)
    teacher, student = models()
    body = "passes: [{type: distill, epochs: 1, random_samples: 64, amp: true}]\n"
    ctx = distill_ctx(tmp_path, torch_handle(teacher, SPEC), body, base_dir=tmp_path)
    result = DistillPass(ctx.config.passes[0]).run(torch_handle(student, SPEC), ctx)
    assert result.metrics["amp"] == "bfloat16" and any("bf16 is emulated" in n for n in result.notes)


@pytest.mark.parametrize("native_on_resume", [True, False])
def test_a_resumed_run_keeps_the_autocast_choice_of_its_checkpoint(tmp_path: Path, monkeypatch, native_on_resume: bool) -> None:
    monkeypatch.setattr(cpu_autocast, "native_bf16", lambda: True)
    monkeypatch.setattr(cpu_autocast, "timed_steps", lambda step, modes: (0.2, 0.1))
    teacher, student = models()
    body = "passes: [{type: distill, epochs: 3, random_samples: 64, batch_size: 16, checkpoint_every: 3, checkpoint_dir: ck}]\n"
    with pytest.raises(KeyboardInterrupt):
        ctx = distill_ctx(tmp_path, torch_handle(teacher, SPEC), body, base_dir=tmp_path, progress=StopAfterEpochs(2))
        DistillPass(ctx.config.passes[0]).run(torch_handle(student, SPEC), ctx)
    monkeypatch.setattr(cpu_autocast, "timed_steps", lambda step, modes: (0.1, 0.2))  # would now say fp32
    monkeypatch.setattr(cpu_autocast, "native_bf16", lambda: native_on_resume)
    ctx = distill_ctx(tmp_path, torch_handle(teacher, SPEC), body, base_dir=tmp_path, resume=True)
    m = DistillPass(ctx.config.passes[0]).run(torch_handle(student, SPEC), ctx).metrics
    if native_on_resume:
        assert m["resumed_from"] and m["amp"] == "bfloat16" and m["amp_choice"] == "kept from the checkpoint resumed"
    else:  # resumed on a host without native bf16: decided again there
        assert m["resumed_from"] and m["amp"] is None and "no native bf16" in m["amp_choice"]


class Config:
    _attn_implementation = "sdpa"


class SwitchableAttention(torch.nn.Module):
    """Stands in for a transformers model: an attention implementation that can be switched, and a
    record of the one each forward ran with."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.config, self.seen = inner, Config(), []

    def set_attn_implementation(self, implementation: str) -> None:
        self.config._attn_implementation = implementation

    def forward(self, x):
        self.seen.append(self.config._attn_implementation)
        return self.inner(x)


def test_attention_switch_turns_eager_on_and_restores_each_models_own() -> None:
    a, b = SwitchableAttention(torch.nn.Linear(6, 5)), SwitchableAttention(torch.nn.Linear(6, 5))
    b.config._attn_implementation = "flex_attention"
    switch = cpu_autocast.attention_switch(torch.nn.Sequential(a), b)
    switch(True)
    assert (a.config._attn_implementation, b.config._attn_implementation) == ("eager", "eager")
    switch(False)
    assert (a.config._attn_implementation, b.config._attn_implementation) == ("sdpa", "flex_attention")
    assert cpu_autocast.attention_switch(torch.nn.Linear(6, 5)) is None  # nothing to switch
    a.config._attn_implementation = "eager"
    assert cpu_autocast.attention_switch(a) is None  # already eager


def test_attention_switch_on_a_transformers_model() -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                     vocab_size=50, attn_implementation="sdpa")
    model = transformers.BertModel(config)
    switch = cpu_autocast.attention_switch(model)
    switch(True)
    assert model.config._attn_implementation == "eager"
    switch(False)
    assert model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("times, eager", [((0.3, 0.25, 0.1), True), ((0.3, 0.1, 0.25), False), ((0.3, 0.28, 0.25), False)])
def test_decide_times_eager_attention_under_bf16_and_keeps_the_fastest(monkeypatch, times, eager) -> None:
    monkeypatch.setattr(cpu_autocast, "native_bf16", lambda: True)
    modes_timed: list = []
    monkeypatch.setattr(cpu_autocast, "timed_steps", lambda step, modes: modes_timed.append(list(modes)) or times)
    calls: list[bool] = []
    use, with_eager, why = cpu_autocast.decide(lambda use_amp: None, torch.nn.Linear(2, 2), calls.append)
    assert modes_timed == [[(False, False), (True, False), (True, True)]]
    assert use == (times[0] / min(times[1:]) >= cpu_autocast.MIN_SPEEDUP) and with_eager == eager
    assert ("with eager attention" in why) == (min(times[1:]) == times[2]) and calls[-1] is False  # left off


@pytest.mark.parametrize("times, amp, attention", [((0.3, 0.25, 0.1), "bfloat16", {"eager"}),
                                                  ((0.3, 0.28, 0.25), None, {"sdpa"})])
def test_training_runs_with_the_attention_the_probe_chose_and_restores_it(tmp_path: Path, monkeypatch, times, amp,
                                                                        attention) -> None:
    monkeypatch.setattr(cpu_autocast, "native_bf16", lambda: True)
    monkeypatch.setattr(cpu_autocast, "timed_steps", lambda step, modes: times)
    teacher, student = models()
    body = "passes: [{type: distill, epochs: 2, random_samples: 96}]\n"
    ctx = distill_ctx(tmp_path, torch_handle(teacher, SPEC), body, base_dir=tmp_path)
    result = DistillPass(ctx.config.passes[0]).run(torch_handle(SwitchableAttention(student), SPEC), ctx)
    m, wrapped = result.metrics, result.model.module
    assert m["amp"] == amp and ("not used" in m["amp_choice"]) == (amp is None)
    # every forward after the choice (the probe's are not in this record: its timing is replaced)
    assert set(wrapped.seen) == attention and wrapped.config._attn_implementation == "sdpa"  # put back


def test_a_resumed_run_keeps_eager_attention_from_its_checkpoint(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(cpu_autocast, "native_bf16", lambda: True)
    monkeypatch.setattr(cpu_autocast, "timed_steps", lambda step, modes: (0.3, 0.25, 0.1))
    teacher, student = models()
    body = "passes: [{type: distill, epochs: 3, random_samples: 64, batch_size: 16, checkpoint_every: 3, checkpoint_dir: ck}]\n"
    with pytest.raises(KeyboardInterrupt):
        ctx = distill_ctx(tmp_path, torch_handle(teacher, SPEC), body, base_dir=tmp_path, progress=StopAfterEpochs(2))
        DistillPass(ctx.config.passes[0]).run(torch_handle(SwitchableAttention(student), SPEC), ctx)
    monkeypatch.setattr(cpu_autocast, "timed_steps", lambda step, modes: pytest.fail("probed again"))
    ctx = distill_ctx(tmp_path, torch_handle(teacher, SPEC), body, base_dir=tmp_path, resume=True)
    result = DistillPass(ctx.config.passes[0]).run(torch_handle(SwitchableAttention(student), SPEC), ctx)
    m, wrapped = result.metrics, result.model.module
    assert m["resumed_from"] and m["amp"] == "bfloat16" and m["amp_choice"] == "kept from the checkpoint resumed"
    assert "eager" in wrapped.seen and wrapped.config._attn_implementation == "sdpa"
