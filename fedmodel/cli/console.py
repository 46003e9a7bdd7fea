"""The terminal of every fedmodel command: results on stdout, progress and errors on stderr."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

err = Console(stderr=True)
out = Console()


def print_error(text: str) -> None:
    """One ``error:`` line; the text is escaped, so data such as ``[/x]`` is never read as markup."""
    err.print(f"[bold red]error:[/] {escape(text)}", highlight=False, soft_wrap=True)


def fail(exc: Exception, exit_code: int) -> NoReturn:
    """Print the error the user caused and leave with its exit code, never a traceback."""
    print_error(str(exc))
    raise typer.Exit(exit_code) from None
