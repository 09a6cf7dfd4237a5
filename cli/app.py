"""The `optimize` command line: a thin layer over `optimize.api` / `optimize.pipeline`.

Contract (an API for CI users; see README):
  exit 0 done, every gate passed · 1 a pass or the runtime failed · 2 usage, config or input
  rejected before any work · 3 a quality gate failed · 130 interrupted.
  stdout carries only results (with --json exactly one JSON document); progress, logs and errors
  go to stderr.

One module per command (cli/commands/), shared options in cli/options.py, the error → exit-code
map in cli/errors.py. Heavy modules (torch, onnx, the pipeline) are imported inside the commands
so `optimize --help` is instant.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from cli.commands import (
    batch,
    bench,
    generate,
    inspect,
    pass_list,
    prune_scan,
    run,
    schema,
    validate,
)
from cli.errors import CLICK_EXCEPTION, one_line, print_error
from cli.io import err, out, std_streams_open
from cli.options import CONTEXT_SETTINGS, EXIT_CODES, command
from optimize import __version__

__all__ = ["app", "main", "print_error"]

app = typer.Typer(
    name="optimize",
    help="Prune → quantize → distill a model from one YAML pipeline; write a verified ONNX file and "
    "a report of measured facts.",
    epilog="Run 'optimize COMMAND -h' for a command's options and examples. " + EXIT_CODES,
    context_settings=CONTEXT_SETTINGS,
    rich_markup_mode=None,  # click's plain help: wraps at any width, never cuts a description
    add_completion=True,  # typer's own: --install-completion, --show-completion
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _version_callback(value: bool) -> None:
    if value:
        out(f"optimize {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", help="Print the version and exit.", callback=_version_callback, is_eager=True)
    ] = False,
) -> None:
    """Prune → quantize → distill a model from one YAML pipeline; write a verified ONNX file and a
    report of measured facts."""


command(app, run.run, "run", "Optimize a model; write ONNX and a report.", run.EXAMPLES)
command(app, validate.validate, "validate", "Check pipeline YAML files.", validate.EXAMPLES)
command(app, pass_list.passes_cmd, "passes", "List the passes, or one pass's options.", pass_list.EXAMPLES)
command(app, schema.schema, "schema", "JSON Schema of pipeline files or the report.", schema.EXAMPLES)
command(app, inspect.inspect_cmd, "inspect", "Shapes, opset, ops and weights of a model.", inspect.EXAMPLES)
command(app, bench.bench, "bench", "Latency of a model, or of two compared.", bench.EXAMPLES)
command(app, batch.batch, "batch", "Run many jobs from a manifest.", batch.EXAMPLES)
command(app, prune_scan.prune_scan_cmd, "prune-scan", "Per-layer pruning sensitivity.", prune_scan.EXAMPLES)
command(app, generate.generate_cmd, "generate", "Stream text from an exported decoder LLM.", generate.EXAMPLES)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (`optimize = "cli.app:main"`); exits with the contract's code.

    Commands map their own errors (`handle_errors`); click maps usage errors to 2. This catches
    what escapes both (an interrupt during option parsing, a bug in a callback).
    """
    std_streams_open()
    try:
        code = app(args=argv, prog_name="optimize", standalone_mode=False)
    except SystemExit:
        raise
    except CLICK_EXCEPTION as exc:  # a usage error (unknown flag, bad value): one line, exit 2
        sys.exit(_usage_error(exc))
    except BaseException as exc:  # noqa: BLE001 - the last line of defence
        if type(exc).__name__ == "Abort":  # click's Abort (e.g. EOF at a prompt)
            err("aborted")
            sys.exit(1)
        verbose = any(a in ("-v", "--verbose") for a in (argv if argv is not None else sys.argv[1:]))
        sys.exit(print_error(exc, verbose))
    sys.exit(code if isinstance(code, int) else 0)


def _usage_error(exc: Any) -> int:
    """Print click's usage error as `error: MESSAGE (see 'optimize CMD --help')`, one line (CI logs,
    grep), and return its exit code. `optimize` with no arguments still prints the help."""
    if type(exc).__name__ == "NoArgsIsHelpError":
        exc.show()
        return int(exc.exit_code)
    ctx = getattr(exc, "ctx", None)
    where = f" (see '{ctx.command_path} --help')" if ctx is not None and getattr(ctx, "command_path", None) else ""
    err(f"error: {one_line(exc.format_message())}{where}")
    return int(getattr(exc, "exit_code", 2))


if __name__ == "__main__":
    main()
