"""`amp: auto` on the CPU: train under bf16 autocast only where it measurably pays.

torch's CPU autocast runs matmuls and convolutions in bf16 through oneDNN. On CPUs with native bf16
dot products (AVX512-BF16, AMX-BF16) that halves a transformer's training step: all-MiniLM-L6-v2,
batch 32 x 63 tokens, FFNs trained, 0.61 s in fp32 against 0.29 s under autocast (AMD EPYC family
26, Zen 5, 2 threads). Small models gain nothing from the casts, and CPUs without those instructions
emulate bf16 slowly, so the choice is measured: a few forward + backward passes of the run's own
student on one of its own batches in each mode, and bf16 only at MIN_SPEEDUP or more. The margin is
wide so that the choice, and with it the run's numerics, does not flip between runs of one setup;
`amp: true` / `false` fix it.

How attention runs matters as much as autocast. transformers models default to PyTorch's
scaled_dot_product_attention, whose CPU kernels gain nothing from bf16 on an Intel Xeon with AMX
(all-MiniLM-L6-v2, batch 32 x 20 tokens: 179 ms fp32, 174 ms under autocast), while the same step
with transformers' eager attention (plain matmuls and softmax, which autocast sends to oneDNN) takes
93 ms. So where the models have an attention implementation to switch, the probe also times bf16
with eager attention and trains that way when it is the fastest; fp32 keeps the models' own
implementation (the two read the same in fp32 there: 177 against 179 ms). The switch lasts for
the training only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

MIN_SPEEDUP = 1.3
NATIVE_BF16 = ("AVX512-BF16", "AMX-BF16")


def native_bf16() -> bool:
    from optimize.hardware import cpu_info

    return bool(set(cpu_info()["isa"]) & set(NATIVE_BF16))


def timed_steps(step: Callable[[Any], None], modes: Sequence[Any] = (False, True), rounds: int = 2) -> tuple[float, ...]:
    """The fastest of `rounds` timed calls of `step(mode)` for each of `modes`, in their order, after
    one untimed call each (first calls pay for allocation and kernel selection); modes alternate so
    that a change in the machine's load falls on all."""
    best = [float("inf")] * len(modes)
    for mode in modes:
        step(mode)
    for _ in range(rounds):
        for k, mode in enumerate(modes):
            t0 = time.perf_counter()
            step(mode)
            best[k] = min(best[k], time.perf_counter() - t0)
    return tuple(best)


def attention_switch(*modules: Any) -> Callable[[bool], None] | None:
    """switch(eager): transformers models inside `modules` to eager attention (True) or back to the
    implementation each had (False); None when no model there has another implementation."""
    models = [m for module in modules for m in module.modules()
              if callable(getattr(m, "set_attn_implementation", None))
              and getattr(getattr(m, "config", None), "_attn_implementation", "eager") != "eager"]
    if not models:
        return None
    before = [m.config._attn_implementation for m in models]

    def switch(eager: bool) -> None:
        for m, implementation in zip(models, before, strict=True):
            m.set_attn_implementation("eager" if eager else implementation)

    return switch


def untouched(module: Any, run: Callable[[], Any]) -> Any:
    """run() with the module's buffers (batch-norm statistics), its gradients and torch's random
    state put back afterwards: the probe must not change what training then does."""
    import torch

    saved = [(m, key, b.detach().clone()) for m in module.modules() for key, b in m._buffers.items() if b is not None]
    rng = torch.get_rng_state()
    try:
        return run()
    finally:
        with torch.no_grad():
            for m, key, b in saved:
                now = m._buffers.get(key)
                if now is not None and now.shape == b.shape and now.dtype == b.dtype:
                    now.copy_(b)  # in place: whatever holds the buffer still sees it
                else:  # the forward replaced it (a cache grown to a new length)
                    m._buffers[key] = b
        for p in module.parameters():
            p.grad = None
        torch.set_rng_state(rng)


class _Bf16StepFailed(Exception):
    """The step failed under autocast only (an fp32 failure is the run's own error, raised as is)."""


def _guarded(step: Callable[[bool], None], use_amp: bool) -> None:
    if not use_amp:
        return step(False)
    try:
        step(True)
    except (RuntimeError, TypeError, ValueError) as e:  # ops that mix dtypes under autocast
        raise _Bf16StepFailed() from e


def decide(step: Callable[[bool], None], module: Any, switch: Callable[[bool], None] | None = None) -> tuple[bool, bool, str]:
    """(use bf16 autocast, with eager attention, why) for training `module` on this CPU;
    `step(use_amp)` runs one forward + backward pass of a real batch; `switch` (attention_switch)
    adds bf16 with eager attention to the modes timed, and is left off."""
    if not native_bf16():
        return False, False, "fp32: this CPU has no native bf16 instructions (" + ", ".join(NATIVE_BF16) + ")"
    modes = [(False, False), (True, False)] + ([(True, True)] if switch is not None else [])

    def run(mode: tuple[bool, bool]) -> None:
        if switch is not None:
            switch(mode[1])
        _guarded(step, mode[0])

    try:
        times = untouched(module, lambda: timed_steps(run, modes))
    except _Bf16StepFailed as e:
        first = (str(e.__cause__).strip().splitlines() or [type(e.__cause__).__name__])[0][:160]
        return False, False, f"fp32: a training step under bf16 autocast failed on this model ({first})"
    finally:
        if switch is not None:
            switch(False)
    fp32, best = times[0], min(range(1, len(times)), key=lambda k: times[k])
    ratio = fp32 / times[best] if times[best] > 0 else 0.0
    use = ratio >= MIN_SPEEDUP
    verdict = "used" if use else f"not used (below {MIN_SPEEDUP}x)"
    how = ""
    if switch is not None:
        how = (f", with eager attention; {times[1] * 1e3:.0f} ms with the models' own" if best == 2 else
               f", with the models' own attention; {times[2] * 1e3:.0f} ms with eager")
    return use, use and best == 2, (
        f"bf16 autocast {ratio:.2f}x the fp32 step on this CPU ({fp32 * 1e3:.0f} -> {times[best] * 1e3:.0f} ms "
        f"per batch{how}): {verdict}"
    )
