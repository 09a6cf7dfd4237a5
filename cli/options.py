"""What every command shares: help settings, a command class with clean usage lines, the
Examples epilog, and the `Annotated` option aliases declared once (`-q`, `--json`, ...).

Help is click's plain layout, not rich panels: it wraps at the terminal's width without cutting
descriptions short, and greps well.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import typer
from typer.core import TyperCommand

EXIT_CODES = (
    "Exit codes: 0 done · 1 a pass or the runtime failed · 2 usage, config or input rejected · "
    "3 a quality gate failed · 130 interrupted. stdout carries only results; progress, logs and "
    "errors go to stderr."
)

CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"]}


def epilog(*examples: tuple[str, str]) -> str:
    """An Examples section (`\\b` keeps click from rewrapping it) and the exit codes."""
    lines = ["Examples:", "", "\b"]
    for command, what in examples:
        lines += [f"  # {what}", f"  {command}"]
    return "\n".join(lines) + "\n\n" + EXIT_CODES


class Command(TyperCommand):
    """Arguments listed as their metavar alone (`MODEL`, not `MODEL <str>`) and a usage line like
    `optimize validate [OPTIONS] CONFIG...` (typer would print `{CONFIG...}...`)."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                name = argument_name(param)
                pieces.append(name if param.required else f"[{name}]")
        return pieces

    def format_options(self, ctx: Any, formatter: Any) -> None:
        args, opts = [], []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if param.param_type_name == "argument":
                args.append((argument_name(param), record[1]))
            else:
                opts.append(record)
        if args:
            with formatter.section("Arguments"):
                formatter.write_dl(args)
        if opts:
            with formatter.section("Options"):
                formatter.write_dl(opts)


def argument_name(param: Any) -> str:
    name = param.metavar or param.name.upper()
    return name if param.nargs == 1 or name.endswith("...") else name + "..."


def command(app: typer.Typer, fn: Any, name: str, short: str, examples: list[tuple[str, str]]) -> None:
    """Register `fn` on `app` with the shared class, `-h`, its one-line summary for the command
    list (`short`, whole at 80 columns) and its Examples."""
    app.command(name=name, cls=Command, context_settings=CONTEXT_SETTINGS, short_help=short, epilog=epilog(*examples))(fn)


# ---------------------------------------------------------------- shared options

Device = Literal["cpu", "cuda", "auto"]
ProgressChoice = Literal["auto", "rich", "plain", "none"]

Quiet = Annotated[bool, typer.Option("-q", "--quiet", help="No progress or logs; only errors.")]
Verbose = Annotated[bool, typer.Option("-v", "--verbose", help="Debug logs and full tracebacks on errors.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the result as one JSON document on stdout.")]
TrustModel = Annotated[
    bool, typer.Option("--trust-model", help="Allow loading pickled whole modules (runs code from the file).")
]
TrustCode = Annotated[
    bool,
    typer.Option("--trust-code", help="Allow configs to name `module:callable` code (data sources, student factories) that runs."),
]
InputShapes = Annotated[
    list[str] | None,
    typer.Option(
        "--input-shape", metavar="NAME=DIMS", show_default=False,
        help="An input's shape, e.g. images=1x3x640x640 (repeatable; fills symbolic dims; the first dim is the batch).",
    ),
]
Overrides = Annotated[
    list[str] | None,
    typer.Option("--set", metavar="KEY=VALUE", show_default=False,
                 help="Override a config field, e.g. passes[0].sparsity=0.5 (repeatable)."),
]
ProgressOption = Annotated[
    ProgressChoice,
    typer.Option("--progress", metavar="auto|rich|plain|none",
                 help="auto: bars on a terminal, plain lines elsewhere; rich; plain; none."),
]
