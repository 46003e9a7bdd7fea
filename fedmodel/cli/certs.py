"""``fedmodel certs``: make the coordinator's CA and TLS server certificate."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from fedmodel.cli.console import fail, out
from fedmodel.errors import FedModelError
from fedmodel.security.certs import MAX_DAYS, default_ca_dir, init_certs, rotate_server_cert, subject_alt_names

certs_app = typer.Typer(
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="TLS certificates of the coordinator (a private CA and the SuperLink's server certificate).",
)


@certs_app.command("init")
def init(
    out_dir: Annotated[Path, typer.Option("--out", help="The coordinator's folder: ca.crt, server.pem, server.key")],
    hosts: Annotated[list[str] | None, typer.Option(
        "--host", metavar="NAME_OR_IP",
        help="Name or IP address the sites use to reach the coordinator; repeat for each (the first is the CN)",
    )] = None,
    days: Annotated[int, typer.Option(help=f"Validity of the certificates in days (1 to {MAX_DAYS})")] = 365,
    force: Annotated[bool, typer.Option("--force", help="Replace existing files in --out")] = False,
    ca_dir: Annotated[Path | None, typer.Option(
        "--ca-dir", help="Folder of the CA key ca.key (and a copy of ca.crt), apart from --out: the coordinator "
                         "never needs it; keep it offline (default: <out>-ca beside --out)")] = None,
) -> None:
    """Make a private CA and a server certificate for the coordinator, signed by it; the CA key goes apart."""
    try:
        paths = init_certs(out_dir, hosts or [], days=days, overwrite=force, ca_dir=ca_dir)
        sans = subject_alt_names(paths.server_cert)
    except FedModelError as exc:
        fail(exc, exc.exit_code)
    rows = [
        ("CA certificate", paths.ca_cert, "give to every site; flwr root-certificates"),
        ("CA private key", paths.ca_key, "secret: not needed by coordinator start; keep offline (certs rotate)"),
        ("server certificate", paths.server_cert, "flower-superlink --ssl-certfile"),
        ("server private key", paths.server_key, "secret: flower-superlink --ssl-keyfile"),
    ]
    for label, path, note in rows:
        out.print(f"{label:<19} {escape(str(path.absolute()))}  [dim]({escape(note)})[/]", highlight=False,
                  soft_wrap=True)
    out.print(f"{'names (SAN)':<19} {escape(', '.join(sans))}", highlight=False, soft_wrap=True)


@certs_app.command("rotate")
def rotate(
    out_dir: Annotated[Path, typer.Option("--out", help="The coordinator's folder: ca.crt, server.pem, server.key")],
    ca_dir: Annotated[Path | None, typer.Option(
        "--ca-dir", help="Folder of ca.key and ca.crt (default: <out>-ca beside --out)")] = None,
    hosts: Annotated[list[str] | None, typer.Option(
        "--host", metavar="NAME_OR_IP", help="Names of the new certificate (default: those of the current one)")] = None,
    days: Annotated[int, typer.Option(help=f"Validity of the new certificate in days (1 to {MAX_DAYS})")] = 365,
) -> None:
    """Replace the server key and certificate with new ones signed by the CA key (restart the coordinator after)."""
    try:
        paths = rotate_server_cert(out_dir, ca_dir=ca_dir, hosts=hosts or None, days=days)
        sans = subject_alt_names(paths.server_cert)
    except FedModelError as exc:
        fail(exc, exc.exit_code)
    out.print(f"new server key and certificate in {escape(str(out_dir.absolute()))}, signed by "
              f"{escape(str((ca_dir or default_ca_dir(out_dir)) / 'ca.key'))}; names {escape(', '.join(sans))}. "
              "Restart the coordinator to use them; the sites' ca.crt is unchanged.", highlight=False, soft_wrap=True)
