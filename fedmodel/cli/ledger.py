"""``fedmodel ledger show``: what the owner's privacy ledger says was spent, per owner and per run."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from fedmodel.cli import options as opt
from fedmodel.cli.console import fail, out
from fedmodel.errors import ConfigError, FedModelError, LedgerError
from fedmodel.privacy.ledger import LEDGER_FILENAME, LedgerEntry, OwnerSummary, PrivacyLedger, ledger_path, read_key

__all__ = ["LEDGER_FILENAME", "ledger_app"]

ledger_app = typer.Typer(
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="The owner's persistent privacy ledger: every run that spent its privacy budget.",
)


@ledger_app.command("show")
def show(
    state_dir: Annotated[Path, typer.Option("--state-dir", help=f"State folder holding {LEDGER_FILENAME}")],
    owner: Annotated[str | None, typer.Option(help="Show this owner only, with each of its entries")] = None,
    key_file: Annotated[Path | None, typer.Option("--key-file", help="Key of an encrypted ledger (32 bytes)")] = None,
    output_format: opt.Format = "table",
) -> None:
    """Per owner: epsilon spent (all entries, reserved ones included), its delta, entries and runs."""
    try:
        if output_format not in ("table", "json"):
            raise ConfigError([f"--format {output_format!r}: expected table | json"])
        summaries, entries, encrypted = _read(state_dir, owner, key_file)
    except FedModelError as exc:
        fail(exc, exc.exit_code)
    path = ledger_path(state_dir)
    if output_format == "json":
        data = {"ledger": str(path), "encrypted": encrypted, "owners": [s.to_dict() for s in summaries]}
        if owner is not None:
            data["entries"] = [_entry_dict(e) for e in entries]
        typer.echo(json.dumps(data, indent=2))
        return
    out.print(_owners_table(path, summaries, encrypted))
    if owner is not None:
        out.print(_entries_table(owner, entries))


def _read(state_dir: Path, owner: str | None,
          key_file: Path | None) -> tuple[list[OwnerSummary], list[LedgerEntry], bool]:
    if not state_dir.is_dir():
        raise LedgerError(f"no state folder at {state_dir}")
    path = ledger_path(state_dir)
    if not path.is_file():
        raise LedgerError(f"no privacy ledger in {state_dir} (expected {path})")
    key = read_key(key_file) if key_file is not None else None
    with PrivacyLedger(path, key=key, create=False) as ledger:
        summaries = ledger.summary(owner)
        if owner is not None and not summaries:
            raise LedgerError(f"owner {owner!r} has no entry in the privacy ledger at {path}")
        entries = ledger.entries(owner) if owner is not None else []
        return summaries, entries, ledger.encrypted


def _entry_dict(entry: LedgerEntry) -> dict[str, object]:
    data = dict(entry.__dict__)
    data["created"] = _when(entry.created)
    return data


def _when(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, tz=dt.UTC).isoformat(timespec="seconds")


def _owners_table(path: Path, summaries: list[OwnerSummary], encrypted: bool) -> Table:
    caption = "epsilon: total over every entry (reserved ones count as spent), at the owner's delta" + (
        "; encrypted at rest" if encrypted else "")
    table = Table(title=f"privacy ledger: {escape(str(path))}", caption=caption)
    for head in ("owner", "epsilon", "delta", "reserved", "committed", "runs"):
        table.add_column(head, justify="left" if head == "owner" else "right")
    for s in summaries:
        table.add_row(escape(s.owner), f"{s.epsilon:.4f}", f"{s.delta:g}", str(s.reserved), str(s.committed),
                      str(len(s.runs)))
    return table


def _entries_table(owner: str, entries: list[LedgerEntry]) -> Table:
    table = Table(title=f"entries of owner {escape(owner)}",
                  caption="noise: noise multiplier; q: sample rate; created: UTC date; data: SHA-256 of the data "
                          "file spent on (first 12 hex digits; --format json: all)")
    for head in ("run", "coordinator", "noise", "q", "steps", "delta", "status", "created", "data"):
        folds = head in ("run", "coordinator")
        table.add_column(head, justify="left" if folds or head in ("status", "created") else "right",
                         overflow="fold" if folds else "ellipsis", no_wrap=not folds)
    for e in entries:
        table.add_row(escape(e.run_id), escape(e.coordinator), f"{e.noise_multiplier:.4g}", f"{e.sample_rate:.4g}",
                      str(e.steps), f"{e.delta:g}", e.status, _when(e.created)[:10], e.data[:12] or "-")
    return table
