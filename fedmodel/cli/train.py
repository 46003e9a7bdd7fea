"""``fedmodel train``: submit a training run to a deployed coordinator and follow it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from fedmodel.cli import options as opt
from fedmodel.cli.console import err, fail, print_json_document
from fedmodel.cli.resume import INTERRUPTED_EXIT, interrupted_message, interruptible, resume_config
from fedmodel.cli.simulate import print_summary, resolve_config, with_progress
from fedmodel.config import RunConfig
from fedmodel.errors import ConfigError, FedModelError


@opt.run_options("train")
def train(
    given: dict[str, Any],
    coordinator: Annotated[str, typer.Option(help="HOST:PORT of the coordinator's SuperLink")],
    ca: Annotated[Path | None, typer.Option(help="The coordinator's CA certificate (ca.crt)")] = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="Plain HTTP, for a coordinator started --insecure")] = False,
    id_column: opt.IdColumn = None,
    resume: opt.Resume = None,
    config: opt.ConfigFile = None,
    output_format: opt.Format = "table",
) -> None:
    """Train across deployed data-owner nodes; the coordinator evaluates on --dataset's test split.

    Each node trains on its own file with its own budget: --epsilon and --delta are what the run
    asks for, and a node spends at most its own budget.
    """
    values = given | opt.id_columns(id_column)
    run_config: RunConfig | None = None
    try:
        with interruptible():
            if output_format not in ("table", "json"):
                raise ConfigError([f"--format {output_format!r}: expected table | json"])
            if resume is not None:
                run_config = resume_config(resume, {**values, **({"config": str(config)} if config else {})})
            else:
                run_config = resolve_config(config, values)
            _check(run_config, coordinator, ca, insecure)
            result = _run(run_config, coordinator, ca, insecure, show_progress=output_format == "table")
    except FedModelError as exc:
        fail(exc, exc.exit_code)
    except KeyboardInterrupt:  # the run on the coordinator was stopped (fedmodel.deployment.train)
        fail(Exception(interrupted_message("train", run_config.out) if run_config else "interrupted"),
             INTERRUPTED_EXIT)
    if output_format == "json":
        print_json_document(result.report)
    else:
        print_summary(result.report, result.run_dir)


def _check(config: RunConfig, coordinator: str, ca: Path | None, insecure: bool) -> None:
    """Fail before submitting: the connection settings and the coordinator's evaluation data."""
    from fedmodel.data import load_dataset
    from fedmodel.deployment.train import connection

    if config.ledger:
        raise ConfigError([f"ledger = {config.ledger!r}: a simulation setting; each deployed node keeps its own "
                           "privacy ledger in its state folder"])
    if config.audit:
        raise ConfigError(["audit = true: the privacy audit runs in simulation only (fedmodel simulate --audit): "
                           "it needs every owner's secret canary bits, and a deployed owner does not train on "
                           "canaries a coordinator chose"])
    if config.nodes or config.owners_per_round:
        raise ConfigError([f"nodes = {config.nodes}, owners-per-round = {config.owners_per_round}: simulation "
                           "settings (cohorts of simulated owners per node); in a deployment each SuperNode is one "
                           "owner, so leave both 0"])
    connection(coordinator, ca, insecure=insecure)
    if config.task != "tabular":  # the coordinator's model folder and its held-out texts
        from fedmodel.llm.federated import check_text_run

        check_text_run(config, simulated=False)
    else:
        load_dataset(config)


def _run(config: RunConfig, coordinator: str, ca: Path | None, insecure: bool, *, show_progress: bool) -> Any:
    from fedmodel.deployment.train import run_training

    if not show_progress:
        return run_training(config, coordinator, ca, insecure=insecure)
    err.print(f"fedmodel train: {config.clients} nodes, {config.rounds} rounds, epsilon up to {config.epsilon:g} "
              f"per owner, {config.strategy}; coordinator {coordinator}; run folder {config.out}", highlight=False)
    return with_progress(config.rounds, f"waiting for {config.clients} nodes",
                         lambda on_event: run_training(config, coordinator, ca, insecure=insecure, on_event=on_event))
