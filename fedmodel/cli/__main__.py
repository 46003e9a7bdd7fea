"""``python -m fedmodel.cli``."""

from fedmodel.cli import main

main()
