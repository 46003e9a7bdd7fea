"""The terminal of every fedmodel command: results on stdout, progress and errors on stderr."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

err = Console(stderr=True)
out = Console()


def print_json_document(document: object) -> None:
    """A report as indented JSON on stdout, written as is: rich's ``print_json`` re-parses and lays out
    every token (5 s for the 1.6 MB report of 1000 owners), and a pipe wants plain JSON anyway."""
    import json
    import sys

    sys.stdout.write(json.dumps(document, indent=2) + "\n")
    sys.stdout.flush()


def print_error(text: str) -> None:
    """One ``error:`` line; the text is escaped, so data such as ``[/x]`` is never read as markup."""
    err.print(f"[bold red]error:[/] {escape(text)}", highlight=False, soft_wrap=True)


def fail(exc: Exception, exit_code: int) -> NoReturn:
    """Print the error the user caused and leave with its exit code, never a traceback."""
    print_error(str(exc))
    raise typer.Exit(exit_code) from None
