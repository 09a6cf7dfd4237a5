"""optimize: prune -> quantize -> distill in one declarative pipeline, proven on the target hardware.

The library never imports typer or rich; `cli/` is the only user-interface layer.
"""

__version__ = "0.1.0"
