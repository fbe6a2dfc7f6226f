"""`python -m shared.cli` is `pulse`."""

from shared.cli.app import main

main()
