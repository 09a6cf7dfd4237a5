"""`optimize passes`: the registered passes, or one pass's options."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from cli.errors import handle_errors
from cli.io import emit_json, stdout_console
from cli.options import AsJson, Verbose
from optimize.errors import UsageError

EXAMPLES = [
    ("optimize passes", "every pass, what it accepts, what it does"),
    ("optimize passes quantize", "one pass's options, types and defaults"),
]

Name = Annotated[str | None, typer.Argument(metavar="NAME", show_default=False, help="Show this pass's options.")]


@handle_errors
def passes_cmd(name: Name = None, as_json: AsJson = False, verbose: Verbose = False) -> None:
    """List the registered passes, or one pass's options."""
    from cli.render import pass_detail, passes_table
    from optimize import registry

    if name is None:
        rows = [pass_info(registry.get(n), options=False) for n in registry.names()]
        if as_json:
            emit_json(rows)
        else:
            stdout_console().print(passes_table(rows))
        return
    if name not in registry.names():
        import difflib

        hint = difflib.get_close_matches(name, registry.names(), n=1)
        extra = f" (did you mean '{hint[0]}'?)" if hint else ""
        raise UsageError(f"unknown pass '{name}'{extra}; known: {', '.join(registry.names())}")
    info = pass_info(registry.get(name), options=True)
    if as_json:
        emit_json(info)
    else:
        stdout_console().print(pass_detail(info))


def pass_info(cls: Any, options: bool) -> dict[str, Any]:
    info: dict[str, Any] = {
        "name": cls.name,
        "summary": cls.summary,
        "accepts": sorted(cls.accepts),
        "trains": bool(getattr(cls, "trains", False)),
    }
    if options:
        from cli.render import pass_options

        info["options"] = pass_options(cls.config_cls)
        info["schema"] = cls.config_cls.model_json_schema()
    return info
