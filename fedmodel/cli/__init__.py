"""The ``fedmodel`` command: typer + rich, one module per command, thin over library functions."""

from __future__ import annotations

import sys

import typer

from fedmodel.cli.audit_log import audit_log_app
from fedmodel.cli.certs import certs_app
from fedmodel.cli.coordinator import coordinator_app
from fedmodel.cli.data import data_app
from fedmodel.cli.ledger import ledger_app
from fedmodel.cli.node import node_app
from fedmodel.cli.simulate import simulate
from fedmodel.cli.train import train

app = typer.Typer(
    name="fedmodel", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="Federated, privacy-preserving model training on Flower with Opacus DP-SGD.",
)
app.command(name="simulate")(simulate)
app.command(name="train")(train)
app.add_typer(certs_app, name="certs")
app.add_typer(node_app, name="node")
app.add_typer(coordinator_app, name="coordinator")
app.add_typer(data_app, name="data")
app.add_typer(ledger_app, name="ledger")
app.add_typer(audit_log_app, name="audit-log")


@app.callback()
def _root() -> None:
    """Federated, privacy-preserving model training on Flower with Opacus DP-SGD."""


def main() -> None:
    """Console-script entry point."""
    sys.exit(app())
