"""`python -m cli ...` is `optimize ...`."""

from cli.app import main

main()
