"""``fedmodel node``: make a site's SuperNode authentication key pair."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from fedmodel.errors import FedModelError
from fedmodel.security.certs import fingerprint, generate_node_keys

err = Console(stderr=True)
out = Console()

node_app = typer.Typer(
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="A data site's SuperNode: its authentication keys.",
)


@node_app.command("keygen")
def keygen(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder of NAME.key and NAME.pub")],
    name: Annotated[str, typer.Option(help="File name stem: letters, digits, '-', '_' (1 to 64)")] = "node",
) -> None:
    """Make this site's authentication key pair (EC P-384, OpenSSH formats)."""
    try:
        paths = generate_node_keys(out_dir, name)
        digest = fingerprint(paths.public.read_bytes())
    except FedModelError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
    except OSError as exc:
        err.print(f"[bold red]error:[/] cannot read {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    public = paths.public.absolute()
    out.print(f"private key  {escape(str(paths.private.absolute()))}  "
              "[dim](secret: flower-supernode --auth-supernode-private-key)[/]", highlight=False, soft_wrap=True)
    out.print(f"public key   {escape(str(public))}", highlight=False, soft_wrap=True)
    out.print(f"fingerprint  SHA256 {digest}", highlight=False, soft_wrap=True)
    out.print(f"next: send {escape(public.name)} to the coordinator, who runs "
              f"[bold]fedmodel coordinator allow-node {escape(public.name)}[/] (compare the fingerprint)",
              highlight=False, soft_wrap=True)
