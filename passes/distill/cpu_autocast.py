"""`amp: auto` on the CPU: train under bf16 autocast only where it measurably pays.

torch's CPU autocast runs matmuls and convolutions in bf16 through oneDNN. On CPUs with native bf16
dot products (AVX512-BF16, AMX-BF16) that halves a transformer's training step: all-MiniLM-L6-v2,
batch 32 x 63 tokens, FFNs trained, 0.61 s in fp32 against 0.29 s under autocast (AMD EPYC family
26, Zen 5, 2 threads). Small models gain nothing from the casts, and CPUs without those instructions
emulate bf16 slowly, so the choice is measured: a few forward + backward passes of the run's own
student on one of its own batches in each mode, and bf16 only at MIN_SPEEDUP or more. The margin is
wide so that the choice, and with it the run's numerics, does not flip between runs of one setup;
`amp: true` / `false` fix it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

MIN_SPEEDUP = 1.3
NATIVE_BF16 = ("AVX512-BF16", "AMX-BF16")


def native_bf16() -> bool:
    from optimize.hardware import cpu_info

    return bool(set(cpu_info()["isa"]) & set(NATIVE_BF16))


def timed_steps(step: Callable[[bool], None], rounds: int = 2) -> tuple[float, float]:
    """(fp32 s, bf16 s): the fastest of `rounds` timed calls of `step(use_amp)` in each mode, after
    one untimed call each (first calls pay for allocation and kernel selection); modes alternate so
    that a change in the machine's load falls on both."""
    best = {False: float("inf"), True: float("inf")}
    for use_amp in (False, True):
        step(use_amp)
    for _ in range(rounds):
        for use_amp in (False, True):
            t0 = time.perf_counter()
            step(use_amp)
            best[use_amp] = min(best[use_amp], time.perf_counter() - t0)
    return best[False], best[True]


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


def decide(step: Callable[[bool], None], module: Any) -> tuple[bool, str]:
    """(use bf16 autocast, why) for training `module` on this CPU; `step(use_amp)` runs one
    forward + backward pass of a real batch."""
    if not native_bf16():
        return False, "fp32: this CPU has no native bf16 instructions (" + ", ".join(NATIVE_BF16) + ")"
    try:
        fp32, bf16 = untouched(module, lambda: timed_steps(lambda use_amp: _guarded(step, use_amp)))
    except _Bf16StepFailed as e:
        first = (str(e.__cause__).strip().splitlines() or [type(e.__cause__).__name__])[0][:160]
        return False, f"fp32: a training step under bf16 autocast failed on this model ({first})"
    ratio = fp32 / bf16 if bf16 > 0 else 0.0
    verdict = "used" if ratio >= MIN_SPEEDUP else f"not used (below {MIN_SPEEDUP}x)"
    return ratio >= MIN_SPEEDUP, (
        f"bf16 autocast {ratio:.2f}x the fp32 step on this CPU ({fp32 * 1e3:.0f} -> {bf16 * 1e3:.0f} ms "
        f"per batch): {verdict}"
    )
