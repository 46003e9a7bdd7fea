"""``fedmodel coordinator``: run the SuperLink and decide which sites may join."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.markup import escape
from rich.table import Table

from fedmodel.cli.console import err, fail, out
from fedmodel.deployment.coordinator import (
    NodeEntry,
    allow_node,
    join_address,
    list_nodes,
    read_nodes,
    revoke_node,
    split_address,
    superlink_command,
    superlink_env,
    write_connection,
)
from fedmodel.deployment.process import run_foreground
from fedmodel.errors import FedModelError
from fedmodel.security.certs import subject_alt_names

coordinator_app = typer.Typer(
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="The coordinator: its SuperLink (TLS, node authentication) and the sites it admits.",
)

StateDir = Annotated[Path, typer.Option("--state-dir", help="The coordinator's state folder "
                                        "(SuperLink database, flwr connection, node registry, log)")]
_WILDCARD = {"0.0.0.0": "127.0.0.1", "::": "::1"}


@coordinator_app.command("start")
def start(
    state_dir: StateDir,
    certs: Annotated[Path | None, typer.Option(
        "--certs", help="Folder of ca.crt, server.pem and server.key (fedmodel certs init)")] = None,
    address: Annotated[str, typer.Option(help="HOST:PORT the SuperLink listens on")] = "127.0.0.1:9091",
    insecure: Annotated[bool, typer.Option(
        "--insecure", help="No TLS and no node authentication: any node may join (tests only)")] = False,
) -> None:
    """Run the coordinator's SuperLink in the foreground until Ctrl-C."""
    try:
        host, port = split_address(address)
        cmd = superlink_command(certs, state_dir, host, port, insecure=insecure)
        ca = None if insecure or certs is None else certs.absolute() / "ca.crt"
        sans = [] if ca is None else subject_alt_names(ca.parent / "server.pem")
        connection = join_address(_local_host(host, sans), port)
        state = state_dir.expanduser().absolute()
        state.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_connection(state, connection, ca)
    except FedModelError as exc:
        _fail(exc)
    except OSError as exc:
        _fail(FedModelError(f"cannot create {state_dir}: {exc.strerror or exc}"), code=2)
    if insecure:
        _warn_insecure()
    _print_start(state, address, connection, ca, sans)
    env = superlink_env(state, insecure=insecure)  # its ServerApps name owners by the node registry
    result = run_foreground(cmd, env=env, cwd=state, log_path=state / "superlink.log")
    if result.interrupted:
        out.print(f"coordinator stopped (flower-superlink exit code {result.code})", highlight=False)
    elif result.code != 0:
        err.print(f"[bold red]error:[/] flower-superlink exited with code {result.code}; see "
                  f"{escape(str(state / 'superlink.log'))}", highlight=False, soft_wrap=True)
    raise typer.Exit(result.code)


@coordinator_app.command("allow-node")
def allow(
    public_key_file: Annotated[Path, typer.Argument(help="The site's public key NAME.pub (fedmodel node keygen)")],
    state_dir: StateDir,
    name: Annotated[str | None, typer.Option(help="The site's name (default: the key file's stem)")] = None,
) -> None:
    """Admit a site: register its public key with the running SuperLink."""
    try:
        entry = allow_node(state_dir, public_key_file, name)
    except FedModelError as exc:
        _fail(exc)
    out.print(f"allowed      {escape(entry.name)}  (node {entry.node_id})", highlight=False, soft_wrap=True)
    out.print(f"fingerprint  SHA256 {entry.fingerprint}  [dim](compare it with the one the site's keygen "
              "printed)[/]", highlight=False, soft_wrap=True)
    out.print(f"next: the site runs [bold]fedmodel node start --coordinator HOST:PORT --ca ca.crt --key "
              f"{escape(entry.name)}.key --data FILE[/]", highlight=False, soft_wrap=True)


@coordinator_app.command("nodes")
def nodes(
    state_dir: StateDir,
    output_format: Annotated[str, typer.Option("--format", help="table | json")] = "table",
) -> None:
    """List the admitted and revoked sites with their live status."""
    if output_format not in ("table", "json"):
        _fail(FedModelError(f"--format {output_format!r}: expected table | json"), code=2)
    try:
        entries = list_nodes(state_dir)
    except FedModelError as exc:
        entries = _registry_only(state_dir, exc)
    if output_format == "json":
        print(json.dumps({"nodes": [{**e.to_record(), "live_status": e.live_status} for e in entries]}, indent=2))
        return
    _print_table(entries)


@coordinator_app.command("revoke")
def revoke(
    name: Annotated[str, typer.Argument(help="The site's name (see fedmodel coordinator nodes)")],
    state_dir: StateDir,
) -> None:
    """Unregister a site: its running SuperNode is disconnected at once."""
    try:
        entry = revoke_node(state_dir, name)
    except FedModelError as exc:
        _fail(exc)
    out.print(f"revoked  {escape(entry.name)}  (node {entry.node_id}); its running SuperNode stops within "
              "seconds", highlight=False, soft_wrap=True)
    out.print("[yellow]this key can never be registered again:[/] to admit the site again, it makes a new key "
              "pair with [bold]fedmodel node keygen[/] and you run [bold]fedmodel coordinator allow-node[/] on "
              "the new .pub", highlight=False, soft_wrap=True)


def _local_host(host: str, sans: list[str]) -> str:
    """The host the coordinator's own flwr CLI connects to: a loopback name of the certificate if bound to all."""
    if host not in _WILDCARD:
        return host
    return next((name for name in (_WILDCARD[host], "localhost") if name in sans), _WILDCARD[host])


def _warn_insecure() -> None:
    err.print("[bold red]WARNING: --insecure: traffic to this coordinator is NOT encrypted and ANY node that "
              "reaches it may join and receive the model. Use it only for tests on a trusted network.[/]",
              highlight=False, soft_wrap=True)


def _print_start(state: Path, address: str, connection: str, ca: Path | None, sans: list[str]) -> None:
    scheme = "http" if ca is None else "https"
    out.print(f"coordinator  {scheme}://{escape(address)}  [dim](flower-superlink; log "
              f"{escape(str(state / 'superlink.log'))})[/]", highlight=False, soft_wrap=True)
    if ca is not None:
        out.print(f"CA for sites {escape(str(ca))}  [dim](give this file to every site; never ca.key)[/]",
                  highlight=False, soft_wrap=True)
        host = split_address(connection)[0]
        if host not in sans:
            err.print(f"[yellow]warning:[/] the server certificate names {escape(', '.join(sans))}, not "
                      f"{escape(host)}: connections to {escape(connection)} will fail the TLS check",
                      highlight=False, soft_wrap=True)
    if split_address(address)[0] in ("127.0.0.1", "localhost", "::1"):
        out.print("[dim]listening on loopback only: sites on other machines need --address 0.0.0.0:PORT[/]")
    out.print(f"state        {escape(str(state))}", highlight=False, soft_wrap=True)
    if ca is None:
        out.print("next:  sites run [bold]fedmodel node start --insecure --coordinator HOST:PORT --data FILE[/] "
                  "(no admission: any node may join), then [bold]fedmodel train[/]", highlight=False, soft_wrap=True)
        return
    out.print("next:  [bold]fedmodel coordinator allow-node SITE.pub --state-dir "
              f"{escape(str(state))}[/] for each site, then [bold]fedmodel train[/] once "
              f"[bold]fedmodel coordinator nodes --state-dir {escape(str(state))}[/] shows them online",
              highlight=False, soft_wrap=True)


def _registry_only(state_dir: Path, problem: FedModelError) -> list[NodeEntry]:
    try:
        entries = read_nodes(state_dir)
    except FedModelError as exc:
        _fail(exc)
    err.print(f"[yellow]warning:[/] live status unavailable: {escape(str(problem))}", highlight=False,
              soft_wrap=True)
    return entries


def _print_table(entries: list[NodeEntry]) -> None:
    if not entries:
        out.print("no sites yet: fedmodel coordinator allow-node SITE.pub --state-dir DIR")
        return
    table = Table("name", "node id", "status", "live", "fingerprint (SHA256)")
    for e in entries:
        table.add_row(escape(e.name), str(e.node_id), e.status, e.live_status or "?", e.fingerprint[:16])
    out.print(table)


def _fail(exc: FedModelError, code: int | None = None) -> NoReturn:
    fail(exc, exc.exit_code if code is None else code)
