"""`optimize inspect`: a model's form, inputs and outputs, opset, producer, ops, weights, sparsity."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.errors import handle_errors
from cli.io import check_verbosity, emit_json, quiet_warnings, stdout_console, stdout_to_stderr
from cli.options import AsJson, InputShapes, Quiet, TrustModel, Verbose

EXAMPLES = [
    ("optimize inspect model.onnx", "shapes, opset, producer, op counts, weights"),
    ("optimize inspect optimize.example:digits_cnn --json", "a factory's facts as JSON (raw numbers)"),
    ("optimize inspect model.onnx --input-shape images=1x3x640x640", "check a shape against the inputs"),
]

Model = Annotated[str, typer.Argument(metavar="MODEL", help="Model file or factory `package.module:callable`.")]


@handle_errors
def inspect_cmd(
    model: Model,
    as_json: AsJson = False,
    trust_model: TrustModel = False,
    input_shape: InputShapes = None,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Show a model's form, inputs, outputs, opset, producer, op counts, weights and sparsity."""
    from cli.progress import setup_logging

    check_verbosity(quiet, verbose)
    setup_logging(quiet=quiet, verbose=verbose)
    with quiet_warnings(quiet):
        from optimize.api import inspect_model

        with stdout_to_stderr():
            shapes = {"input_shapes": list(input_shape)} if input_shape else {}
            facts = inspect_model(model, trust_model=trust_model, **shapes)
    if as_json:
        emit_json(facts)
        return
    from cli.inspect_view import inspect_renderable

    stdout_console().print(inspect_renderable(facts, title=model))
