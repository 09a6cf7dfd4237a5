"""Running under torchrun: process-group setup, who writes, and one outcome for every rank.

`torchrun --nproc_per_node=N -m cli run MODEL -c PIPELINE.yaml` starts N copies of the command.
Each copy sees torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT); here:

- `setup(device)` initializes torch.distributed once (nccl when training on CUDA, each rank on
  the GPU `LOCAL_RANK`; gloo on the CPU). Without torchrun's variables (WORLD_SIZE ≤ 1) nothing
  happens and the run is an ordinary single process.
- Every rank plans and runs the passes up to the last training pass (distill trains under
  DistributedDataParallel with a DistributedSampler and needs them all); then the other ranks
  stop and wait, idle, while rank 0 alone exports, verifies, measures (so its timings are not
  disturbed by the other ranks) and writes the model and the report.
- Rank 0 then broadcasts its outcome (exit code, message, report); every rank returns the same
  report or raises the same error, so every rank exits with the same code. A rank that fails
  earlier (during the passes) exits non-zero, and torchrun's elastic agent stops the others.

torchrun, not a home-made launcher, starts and supervises the processes; this module only adds
what the pipeline needs on top of torch.distributed.
"""

from __future__ import annotations

import datetime
import logging
import os
from typing import Any

log = logging.getLogger("optimize")

_STARTED_HERE = False
_STORE: Any = None  # a client of torchrun's rendezvous store, for the exit handshake
_RECEIVED = False
_OUTCOME: int | None = None  # the exit code rank 0 announced
_EXIT_KEY = "optimize/rank0-exited"


def world_size() -> int:
    """Processes in the job, from torchrun's environment (1 when not launched by torchrun)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def rank() -> int:
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def is_main() -> bool:
    """True on the process that writes files and prints results (always, without torchrun)."""
    return world_size() <= 1 or rank() == 0


def active() -> bool:
    """torch.distributed is initialized with more than one process."""
    if world_size() <= 1:
        return False
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def setup(device: str) -> bool:
    """Initialize the process group when launched by torchrun; True when running distributed."""
    global _STARTED_HERE
    if world_size() <= 1:
        return False
    import torch
    import torch.distributed as dist

    if not dist.is_available():
        from optimize.errors import UsageError

        raise UsageError("launched with WORLD_SIZE > 1, but this torch build has no torch.distributed")
    if dist.is_initialized():
        return dist.get_world_size() > 1
    backend = "gloo"
    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "nccl"
    timeout = datetime.timedelta(seconds=float(os.environ.get("OPTIMIZE_DIST_TIMEOUT_S", "3600")))
    dist.init_process_group(backend=backend, timeout=timeout)
    _STARTED_HERE = True
    _exit_handshake(timeout)
    if not is_main():
        log.setLevel(logging.WARNING)  # one rank tells the story
    log.info("distributed: %s, %d processes", backend, dist.get_world_size())
    return True


def _exit_handshake(timeout: datetime.timedelta) -> None:
    """torchrun stops every worker as soon as one exits non-zero. So that rank 0 can finish
    writing and printing before the others exit with its (non-zero) code, rank 0 marks its own exit
    in torchrun's store and the other ranks, once they have its outcome, wait for that mark."""
    global _STORE
    import atexit

    import torch.distributed as dist

    try:
        _STORE = dist.TCPStore(
            os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False, timeout=timeout
        )
    except Exception:  # no reachable store: workers may then be stopped early by torchrun
        log.debug("no rendezvous store for the exit handshake", exc_info=True)
        return
    atexit.register(_mark_exit if is_main() else _await_main_exit)


def _flush() -> None:
    import sys

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass


def _mark_exit() -> None:
    _flush()
    try:
        _STORE.set(_EXIT_KEY, "1")
    except Exception:
        log.debug("could not mark rank 0's exit", exc_info=True)
        return
    if _OUTCOME is not None:
        # exit now, with the code the other ranks were given: a slow interpreter shutdown here
        # would let torchrun stop this process (SIGTERM) once they exit non-zero
        os._exit(_OUTCOME)


def _await_main_exit() -> None:
    if not _RECEIVED:  # failed before rank 0's outcome: exit now, torchrun stops the job
        return
    try:
        _STORE.wait([_EXIT_KEY], datetime.timedelta(seconds=float(os.environ.get("OPTIMIZE_DIST_EXIT_WAIT_S", "120"))))
    except Exception:
        log.debug("rank 0 did not mark its exit in time", exc_info=True)
        return
    if _OUTCOME is not None:  # exit together with rank 0, before torchrun reacts to either exit
        _flush()
        os._exit(_OUTCOME)


def teardown() -> None:
    global _STARTED_HERE
    if not _STARTED_HERE:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    _STARTED_HERE = False


def publish(code: int, message: str | None, report: Any) -> None:
    """Rank 0: send its outcome to the other ranks (a collective: they wait in `receive`)."""
    global _OUTCOME
    if not active():
        return
    _OUTCOME = int(code)
    import torch.distributed as dist

    payload = {"code": int(code), "message": message, "report": report.model_dump(mode="json") if report is not None else None}
    dist.broadcast_object_list([payload], src=0)


def receive() -> Any:
    """Other ranks: wait for rank 0's outcome; return its report, or raise the same error."""
    import torch.distributed as dist

    from optimize.errors import GateFailed, OptimizeError
    from optimize.report import Report

    global _RECEIVED
    box: list[Any] = [None]
    dist.broadcast_object_list(box, src=0)
    _RECEIVED = True
    payload = box[0] or {"code": 1, "message": "rank 0 sent no outcome", "report": None}
    code = payload["code"]
    global _OUTCOME
    _OUTCOME = int(code)
    report = Report.model_validate(payload["report"]) if payload.get("report") else None
    if code == 0:
        return report
    if code == 3:
        err: OptimizeError = GateFailed([payload.get("message") or "see rank 0's report"])
    else:
        err = OptimizeError(f"rank 0 failed: {payload.get('message')}")
        err.exit_code = code
    raise err


def conclude(passes_done: bool, exc: BaseException | None = None, report: Any = None) -> None:
    """Rank 0, once the passes are done: tell the waiting ranks how the run ended (no-op otherwise).

    Before the passes are done the other ranks are not waiting (they are training, or already
    failed), so nothing is sent: torchrun stops the job when a rank exits non-zero.
    """
    if not passes_done or not is_main() or not active():
        return
    from optimize.errors import GateFailed

    if exc is None:
        publish(0, None, report)
        return
    code = 130 if isinstance(exc, KeyboardInterrupt) else int(getattr(exc, "exit_code", 1))
    message = "; ".join(exc.failed) if isinstance(exc, GateFailed) else str(exc)
    try:
        publish(code, message, getattr(exc, "report", None))
    except Exception:  # the other ranks may be gone already; the original error matters more
        log.debug("could not send the outcome to the other ranks", exc_info=True)
