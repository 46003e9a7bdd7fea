"""``fedmodel audit-log verify`` and ``show``: check and read a hash-chained audit trail."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from fedmodel.cli import options as opt
from fedmodel.cli.console import err, fail, out
from fedmodel.errors import ConfigError, FedModelError
from fedmodel.security.audit_log import anchor_path, default_key_path, load_key, read_entries
from fedmodel.security.audit_log import verify as verify_log

EXIT_INTACT, EXIT_TAMPERED = 0, 1

audit_log_app = typer.Typer(
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="Check and read an audit log (append-only, hash-chained JSON lines).",
)

LogFile = Annotated[Path, typer.Argument(help="The audit log (JSON lines; its head file <FILE>.head beside it)")]


def _check_format(output_format: str) -> None:
    if output_format not in ("table", "json"):
        raise ConfigError([f"--format {output_format!r}: expected table | json"])


@audit_log_app.command("verify")
def verify(
    path: LogFile,
    key_file: Annotated[Path | None, typer.Option(
        "--key-file", help="HMAC key of a keyed log (the file's bytes, exactly)",
        show_default="the node's <state-dir>.audit-key beside the log's folder, when it exists")] = None,
    require_head: Annotated[bool, typer.Option(
        "--require-head", help="Fail when the head file is missing (by default only a warning)")] = False,
    output_format: opt.Format = "table",
) -> None:
    """Check every entry, the chain and the head file: exit 0 intact, 1 tampered, 2 unreadable."""
    try:
        _check_format(output_format)
        if key_file is None and default_key_path(path.absolute().parent).is_file():
            key_file = default_key_path(path.absolute().parent)  # a node's log: its own key, beside the state folder
        key = load_key(key_file) if key_file is not None else None
        anchor = anchor_path(key_file) if key_file is not None and anchor_path(key_file).is_file() else None
        result = verify_log(path, key=key, require_head=require_head, anchor=anchor)
    except FedModelError as exc:
        fail(exc, exc.exit_code)
    if output_format == "json":
        typer.echo(json.dumps(result.to_dict(), indent=2))
    else:
        for warning in result.warnings:
            err.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
        if result.ok:
            out.print(f"{escape(str(path))}: {result.entries} entries, chain intact", highlight=False, soft_wrap=True)
        else:
            first, more = result.problems[0], len(result.problems) - 1
            out.print(f"[bold red]tampered:[/] {escape(str(path))}: {escape(str(first))}"
                      + (f" (and {more} more problem{'s' * (more > 1)})" if more else ""),
                      highlight=False, soft_wrap=True)
            for problem in result.problems[1:]:
                out.print(f"  {escape(str(problem))}", highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_INTACT if result.ok else EXIT_TAMPERED)


@audit_log_app.command("show")
def show(
    path: LogFile,
    last: Annotated[int | None, typer.Option("--last", min=1, help="Only the last N entries")] = None,
    output_format: opt.Format = "table",
) -> None:
    """Print the entries as written (nothing is checked: run verify for that)."""
    try:
        _check_format(output_format)
        entries, skipped = read_entries(path)
    except FedModelError as exc:
        fail(exc, exc.exit_code)
    for problem in skipped:
        err.print(f"[yellow]warning:[/] {escape(str(problem))} (skipped)", highlight=False, soft_wrap=True)
    if last is not None:
        entries = entries[-last:]
    if output_format == "json":
        typer.echo(json.dumps([entry.to_dict() for entry in entries], indent=2))
        return
    table = Table(title=f"audit log {escape(str(path))}", caption="time: UTC, to the second (--format json: all)")
    for head in ("seq", "time", "event", "fields", "hash"):
        table.add_column(head, justify="right" if head == "seq" else "left", no_wrap=head != "fields",
                         overflow="fold" if head == "fields" else "ellipsis")
    for entry in entries:
        table.add_row(str(entry.seq), escape(entry.time[:19].replace("T", " ")), escape(entry.event),
                      escape(json.dumps(dict(entry.fields), sort_keys=True, separators=(",", ":"))), entry.hash[:8])
    out.print(table)
