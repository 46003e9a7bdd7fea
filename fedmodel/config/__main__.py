"""``python -m fedmodel.config --markdown | --pyproject``: text generated from the settings' declaration."""

from __future__ import annotations

import sys

from fedmodel.config.reference import markdown, pyproject_table


def main(argv: list[str]) -> int:
    """Print the options reference (``--markdown``) or the app's pyproject defaults (``--pyproject``)."""
    if argv == ["--markdown"]:
        sys.stdout.write(markdown())
        return 0
    if argv == ["--pyproject"]:
        sys.stdout.write(pyproject_table())
        return 0
    sys.stderr.write("usage: python -m fedmodel.config --markdown | --pyproject\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
