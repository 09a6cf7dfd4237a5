"""The `optimize` command line (typer + rich). The only package that imports typer or rich.

Entry point: `cli.app:main` (the `optimize` console script); `python -m cli` runs the same.
"""
