"""`optimize bench`: latency of a model (or two, interleaved) over a batch × thread sweep."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.errors import handle_errors
from cli.io import check_verbosity, emit_json, quiet_warnings, stdout_console, stdout_to_stderr
from cli.options import AsJson, Device, InputShapes, ProgressOption, Quiet, TrustModel, Verbose

EXAMPLES = [
    ("optimize bench model.opt.onnx --vs model.onnx", "is the optimized model faster? (> 1x: yes)"),
    ("optimize bench model.onnx --threads 1,4 --batch 1,8", "a batch × thread sweep"),
    ("optimize bench model.onnx --input-shape images=1x3x640x640", "a model with symbolic dims"),
]

Model = Annotated[str, typer.Argument(metavar="MODEL", help="Model to measure.")]
Vs = Annotated[str | None, typer.Option("--vs", metavar="BASELINE", show_default=False,
                                        help="A baseline model timed interleaved with MODEL; the ratio is BASELINE "
                                        "latency / MODEL latency (> 1: MODEL is faster), as `run`'s speedup.")]
DeviceOpt = Annotated[Device, typer.Option("--device", metavar="cpu|cuda|auto", help="Where to run.")]
Threads = Annotated[str | None, typer.Option("--threads", metavar="N[,N...]", show_default=False,
                                             help="Thread counts to measure, e.g. 1,4 (default: 1, 2, 4, … all cores).")]
Batch = Annotated[str | None, typer.Option("--batch", metavar="N[,N...]", show_default=False,
                                           help="Batch sizes to measure, e.g. 1,8 (default: the first dim of --input-shape, else 1).")]
Warmup = Annotated[int, typer.Option("--warmup", min=0, metavar="N", help="Untimed runs first.")]
Repeat = Annotated[int, typer.Option("--repeat", min=3, metavar="N", help="Timed runs per model and setting.")]


def parse_counts(value: str, flag: str) -> list[int]:
    what = "thread counts" if flag == "--threads" else "batch sizes"
    try:
        counts = [int(x) for x in value.replace(" ", "").split(",") if x]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated {what} like 1,4; got {value!r}", param_hint=f"'{flag}'") from None
    if not counts or any(t < 1 for t in counts):
        raise typer.BadParameter(f"{what} must be positive integers; got {value!r}", param_hint=f"'{flag}'")
    return sorted(set(counts))


def shape_batches(flags: list[str] | None) -> list[int]:
    """bench without --batch: the batch of --input-shape (the first dim), else 1."""
    from optimize.shapes import shapes_from_flags

    firsts = sorted({dims[0] for dims in shapes_from_flags(flags).values() if dims})
    return firsts[:1] or [1]


@handle_errors
def bench(
    model: Model,
    vs: Vs = None,
    device: DeviceOpt = "cpu",
    threads: Threads = None,
    batch: Batch = None,
    input_shape: InputShapes = None,
    warmup: Warmup = 5,
    repeat: Repeat = 30,
    as_json: AsJson = False,
    trust_model: TrustModel = False,
    progress: ProgressOption = "auto",
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Measure MODEL (optionally against a BASELINE, interleaved) over a batch × thread sweep:
    p50/p90/p99, throughput, outliers, parallel speedup, memory."""
    from cli.progress import make_progress, setup_logging

    check_verbosity(quiet, verbose)
    setup_logging(quiet=quiet, verbose=verbose)
    thread_list = parse_counts(threads, "--threads") if threads is not None else None  # None: the library's default
    batch_list = parse_counts(batch, "--batch") if batch is not None else shape_batches(input_shape)
    with quiet_warnings(quiet):
        from optimize.benchmark import bench_models

        display = make_progress(progress, quiet=quiet)
        with display, stdout_to_stderr():
            result = bench_models(
                model, vs, threads=thread_list, batch=batch_list, warmup=warmup, repeat=repeat, device=device,
                progress=display, trust_model=trust_model, **({"input_shapes": list(input_shape)} if input_shape else {}),
            )
    if as_json:
        emit_json(result)
        return
    from cli.render import bench_renderable

    stdout_console().print(bench_renderable(result))
