"""``fedmodel node``: make a site's SuperNode authentication key pair."""

from __future__ import annotations

from collections import deque
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from fedmodel.cli.console import err, fail, out
from fedmodel.config.node import node_default, node_help
from fedmodel.deployment.coordinator import flwr_env
from fedmodel.deployment.guard import guarded_env
from fedmodel.deployment.node import exit_hint, open_node_ledger, privacy_policy, supernode_command
from fedmodel.deployment.process import run_foreground
from fedmodel.errors import ConfigError, FedModelError
from fedmodel.security.audit_log import default_key_path
from fedmodel.security.certs import fingerprint, generate_node_keys


class EvaluationMode(str, Enum):  # noqa: UP042  # StrEnum would change str(mode), which typer shows
    """What a site's node answers to the coordinator's evaluate messages (node key ``evaluation``)."""

    dp = "dp"
    exact = "exact"
    off = "off"


node_app = typer.Typer(
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="A data site's SuperNode: its authentication keys, and running it.",
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
        fail(exc, exc.exit_code)
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


@node_app.command("start")
def start(
    # Each option that is a node setting takes its help and default from NodeSettings' declaration
    # (fedmodel.config.node); the others (the connection, the key, the port) are the command's own.
    coordinator: Annotated[str, typer.Option(help=node_help("coordinator"))],
    data: Annotated[Path, typer.Option(help=node_help("data-path"))],
    ca: Annotated[Path | None, typer.Option("--ca", help="The coordinator's CA certificate ca.crt")] = None,
    key: Annotated[Path | None, typer.Option("--key", help="This node's private key NAME.key (keygen)")] = None,
    label: Annotated[str, typer.Option(help=node_help("label"))] = node_default("label"),
    name: Annotated[str | None, typer.Option(help="Data owner's name (default: the key file's stem)")] = None,
    budget_epsilon: Annotated[float, typer.Option(help=node_help("budget-epsilon"))] = node_default("budget-epsilon"),
    delta: Annotated[float, typer.Option(help=node_help("delta"))] = node_default("delta"),
    device: Annotated[str, typer.Option(help=node_help("device"))] = node_default("device"),
    # NodeSettings has no default state folder (the node config must name one); the command offers this one.
    state_dir: Annotated[Path, typer.Option(help=node_help("state-dir"))] = Path("~/.fedmodel/node"),
    port: Annotated[int | None, typer.Option(help="Local Runtime API port (default: a free one)")] = None,
    id_column: Annotated[list[str] | None, typer.Option("--id-column", help=node_help("id-columns"))] = None,
    insecure: Annotated[bool, typer.Option(
        "--insecure", help="No TLS, no authentication (a coordinator started with --insecure). Gives up: the traffic's "
                            "secrecy and who may join; for tests on one machine")] = False,
    ledger_key: Annotated[Path | None, typer.Option("--ledger-key", help=node_help("ledger-key"))] = None,
    allow_no_dp: Annotated[bool, typer.Option("--allow-no-dp", help=node_help("allow-no-dp"))] = False,
    min_noise_multiplier: Annotated[float, typer.Option(
        help=node_help("min-noise-multiplier"))] = node_default("min-noise-multiplier"),
    max_epsilon_per_run: Annotated[float | None, typer.Option(
        help=node_help("max-epsilon-per-run"))] = node_default("max-epsilon-per-run"),
    require_secure_aggregation: Annotated[bool, typer.Option(
        "--require-secure-aggregation", help=node_help("require-secure-aggregation"))] = False,
    model_path: Annotated[Path | None, typer.Option("--model-path", help=node_help("model-path"))] = None,
    allow_local_statistics: Annotated[bool, typer.Option(
        "--allow-local-statistics", help=node_help("allow-local-statistics"))] = False,
    evaluation: Annotated[EvaluationMode, typer.Option(help=node_help("evaluation"))] = EvaluationMode(
        node_default("evaluation")),
    evaluation_noise: Annotated[float, typer.Option(
        help=node_help("evaluation-noise"))] = node_default("evaluation-noise"),
    exact_replies: Annotated[bool, typer.Option("--exact-replies", help=node_help("exact-replies"))] = False,
    audit_key: Annotated[Path | None, typer.Option("--audit-key", help=node_help("audit-key"))] = None,
) -> None:
    """Run this site's SuperNode in the foreground until Ctrl-C or until the coordinator revokes it."""
    owner = name if name is not None else (key.stem if key is not None else "node")
    try:
        policy = privacy_policy(allow_no_dp=allow_no_dp, min_noise_multiplier=min_noise_multiplier,
                                max_epsilon_per_run=max_epsilon_per_run,
                                require_secure_aggregation=require_secure_aggregation,
                                allow_local_statistics=allow_local_statistics)
        cmd = supernode_command(
            coordinator=coordinator, ca_cert=ca, key=key, data=data, label=label, name=owner,
            budget_epsilon=budget_epsilon, delta=delta, device=device, state_dir=state_dir, port=port,
            insecure=insecure, id_columns=tuple(id_column or ()), model_path=model_path, policy=policy,
            ledger_key=ledger_key, evaluation=evaluation.value, evaluation_noise=evaluation_noise,
            exact_replies=exact_replies, audit_key=_audit_key(state_dir, audit_key),
        )
        state = state_dir.expanduser().absolute()
        state.mkdir(mode=0o700, parents=True, exist_ok=True)
        ledger, encrypted = open_node_ledger(state, ledger_key, owner=owner,
                                             audit_key=_audit_key(state_dir, audit_key))
    except FedModelError as exc:
        fail(exc, exc.exit_code)
    except OSError as exc:
        err.print(f"[bold red]error:[/] cannot create {escape(str(state_dir))}: {escape(str(exc))}",
                  highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    if insecure:
        err.print("[bold red]WARNING: --insecure: traffic to the coordinator is NOT encrypted and the "
                  "coordinator is not authenticated. Use it only for tests on a trusted network.[/]",
                  highlight=False, soft_wrap=True)
    _print_node(owner, coordinator, ca, data, budget_epsilon, delta, device, state, cmd)
    if model_path is not None:
        out.print(f"{'model':<8} {escape(str(model_path.expanduser().absolute()))}", highlight=False, soft_wrap=True)
    out.print(f"{'policy':<8} {escape(policy.describe())}", highlight=False, soft_wrap=True)
    out.print(f"{'replies':<8} evaluation {evaluation.value}"
              f"{f' (noise multiplier {evaluation_noise:g})' if evaluation.value == 'dp' else ''}; train-loss and "
              f"quality counts {'exact' if exact_replies else 'withheld / coarsened'}", highlight=False, soft_wrap=True)
    out.print(f"{'ledger':<8} {escape(str(ledger))}{' (encrypted)' if encrypted else ''}; audit log "
              f"{escape(str(state / 'audit.log'))} (key {escape(str(_audit_key(state_dir, audit_key)))})",
              highlight=False, soft_wrap=True)
    lines: deque[str] = deque(maxlen=400)
    result = run_foreground(cmd, env=guarded_env(flwr_env(state), state), cwd=state, log_path=state / "supernode.log",
                            on_line=lines.append)
    if result.interrupted:
        out.print(f"node stopped (flower-supernode exit code {result.code})", highlight=False)
    elif result.code != 0:
        hint = exit_hint("\n".join(lines), ca_cert=ca.absolute() if ca else None, coordinator=coordinator)
        err.print(f"[bold red]error:[/] flower-supernode exited with code {result.code}"
                  f"{': ' + escape(hint) if hint else ''}", highlight=False, soft_wrap=True)
    else:
        out.print("node stopped: the SuperNode ended by itself (the coordinator may have revoked this node)",
                  highlight=False)
    raise typer.Exit(result.code)


def _audit_key(state_dir: Path, audit_key: Path | None) -> Path:
    """The audit key file: the one given, else ``<state-dir>.audit-key``; never inside the state folder."""
    state = state_dir.expanduser().absolute()
    key = audit_key.expanduser().absolute() if audit_key is not None else default_key_path(state)
    if key.is_relative_to(state):
        raise ConfigError([f"--audit-key {key}: inside the state folder {state}; keep it outside (whoever rewrites "
                           "the folder must not hold the key)"])
    return key


def _print_node(owner: str, coordinator: str, ca: Path | None, data: Path, budget_epsilon: float,
                delta: float, device: str, state: Path, cmd: list[str]) -> None:
    trust = f"TLS, CA {ca.absolute()}" if ca is not None else "INSECURE"
    port = cmd[cmd.index("--port") + 1]
    rows = [
        ("node", f"{owner} -> coordinator {coordinator} ({trust})"),
        ("data", str(data.expanduser().absolute())),
        ("privacy", f"total budget epsilon {budget_epsilon:g} across runs, delta {delta:g}"),
        ("device", device),
        ("state", f"{state} (log {state / 'supernode.log'}, local port {port})"),
    ]
    for label, value in rows:
        out.print(f"{label:<8} {escape(value)}", highlight=False, soft_wrap=True)
