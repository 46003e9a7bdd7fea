"""``fedmodel simulate``: rehearse a federation on one machine through Flower's simulation engine."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedmodel.config import BUNDLED_DATASETS, RunConfig
from fedmodel.errors import ConfigError, FedModelError

err = Console(stderr=True)
out = Console()


def simulate(
    dataset: Annotated[str | None, typer.Option(help=f"{' | '.join(BUNDLED_DATASETS)} or a .csv/.npz file")] = None,
    label: Annotated[str | None, typer.Option(help="Label column of a CSV file (label array key of an NPZ)")] = None,
    clients: Annotated[int | None, typer.Option(help="Number of simulated data owners [default: 10]")] = None,
    rounds: Annotated[int | None, typer.Option(help="Federated rounds [default: 10]")] = None,
    partition: Annotated[str | None, typer.Option(help="iid | dirichlet:ALPHA | pathological:K [default: iid]")] = None,
    epsilon: Annotated[float | None, typer.Option(help="Each owner's DP budget for the whole run [default: 3]")] = None,
    delta: Annotated[float | None, typer.Option(help="DP delta [default: 1e-5]")] = None,
    no_dp: Annotated[bool, typer.Option("--no-dp", help="Train without differential privacy (ablation)")] = False,
    max_grad_norm: Annotated[float | None, typer.Option(help="DP-SGD per-example clipping norm [default: 1]")] = None,
    strategy: Annotated[str | None, typer.Option(help="fedavg | fedprox | fedadam [default: fedavg]")] = None,
    proximal_mu: Annotated[float | None, typer.Option(help="FedProx proximal weight [default: 0.01]")] = None,
    server_lr: Annotated[float | None, typer.Option(help="FedAdam server learning rate [default: 0.1]")] = None,
    model: Annotated[str | None, typer.Option(help="logreg | mlp [default: logreg]")] = None,
    local_epochs: Annotated[int | None, typer.Option(help="Local epochs per round [default: 1]")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Expected batch size (Poisson sampling) [default: 32]")] = None,
    lr: Annotated[float | None, typer.Option(help="Local SGD learning rate [default: 2.0]")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the split, partition, sampling and noise [default: 42]")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda | cuda:N [default: auto]")] = None,
    test_fraction: Annotated[float | None, typer.Option(help="Held-out test share [default: 0.2]")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="TOML file of the same keys (CLI wins)")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Run folder [default: runs/<timestamp>]")] = None,
    output_format: Annotated[str, typer.Option("--format", help="table | json")] = "table",
    inject_failure_owners: Annotated[str | None, typer.Option(hidden=True, help="Testing aid: owners that fail")] = None,
) -> None:
    """Split a real data set across simulated owners and train with per-owner DP-SGD on Flower."""
    given = {
        "dataset": dataset, "label": label, "clients": clients, "rounds": rounds, "partition": partition,
        "epsilon": epsilon, "delta": delta, "dp": False if no_dp else None, "max-grad-norm": max_grad_norm,
        "strategy": strategy, "proximal-mu": proximal_mu, "server-lr": server_lr, "model": model,
        "local-epochs": local_epochs, "batch-size": batch_size, "lr": lr, "seed": seed, "device": device,
        "test-fraction": test_fraction, "out": str(out_dir) if out_dir is not None else None,
        "inject-failure-owners": inject_failure_owners,
    }
    try:
        if output_format not in ("table", "json"):
            raise ConfigError([f"--format {output_format!r}: expected table | json"])
        run_config = resolve_config(config, {k: v for k, v in given.items() if v is not None})
        check_inputs(run_config)
        result = _run(run_config, show_progress=output_format == "table")
    except FedModelError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
    if output_format == "json":
        out.print_json(json.dumps(result.report))
    else:
        print_summary(result.report, result.run_dir)


def resolve_config(config_file: Path | None, given: dict[str, Any]) -> RunConfig:
    """Defaults < config file < options given on the command line; a dataset path becomes ``file``."""
    values: dict[str, Any] = RunConfig.from_toml(config_file) if config_file is not None else {}
    values.update(given)
    name = values.get("dataset")
    if isinstance(name, str) and name not in BUNDLED_DATASETS and name != "file":
        path = Path(name).expanduser()
        if path.suffix.lower() in (".csv", ".npz") or path.exists():
            values["dataset"], values["data-path"] = "file", str(path.absolute())
    if values.get("data-path"):
        values["data-path"] = str(Path(values["data-path"]).expanduser().absolute())
    if not values.get("out"):
        values["out"] = str(Path("runs") / time.strftime("%Y%m%d-%H%M%S"))
    values["out"] = str(Path(values["out"]).expanduser().absolute())
    return RunConfig.from_mapping(values, source=str(config_file) if config_file else "")


def check_inputs(config: RunConfig) -> None:
    """Fail before Flower starts: the data file, the label, the partition and the device must work."""
    from fedmodel.data import federated_split
    from fedmodel.device import resolve_device

    resolve_device(config.device)
    split = federated_split(config)
    empty = [i for i, rows in enumerate(split.owner_rows) if len(rows) == 0]
    if empty:
        raise FedModelError(
            f"partition {config.partition} leaves {len(empty)} of {config.clients} owners without training rows "
            f"(owners {', '.join(map(str, empty[:10]))}); use fewer owners or another partition"
        )


def _run(config: RunConfig, *, show_progress: bool) -> Any:
    from simulations.runner import run_simulation

    if not show_progress:
        return run_simulation(config)
    dp = f"epsilon {config.epsilon:g} per owner" if config.dp else "no DP"
    err.print(f"fedmodel: {config.dataset_label}, {config.clients} owners, {config.rounds} rounds, {dp}, "
              f"{config.strategy}; run folder {config.out}", highlight=False)
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=err, transient=False) as progress:
        task = progress.add_task("starting Flower's simulation engine (Ray)", total=config.rounds)

        def on_event(event: dict[str, Any]) -> None:
            if event["event"] == "round-start":
                progress.update(task, description=f"round {event['round']}: training")
            elif event["event"] == "round":
                eps = event.get("epsilon_max")
                eps_text = f", max epsilon {eps:.2f}" if isinstance(eps, (int, float)) else ""
                progress.update(task, completed=event["round"],
                                description=f"round {event['round']}: accuracy {event['accuracy']:.3f}{eps_text}")

        return run_simulation(config, on_event=on_event)


def print_summary(report: dict[str, Any], run_dir: Path) -> None:
    """The end-of-run table: final metrics, privacy and where the files are."""
    table = Table(title=f"fedmodel simulate: {report['dataset']}, {report['num_clients']} owners", show_header=False)
    table.add_column("what")
    table.add_column("value")
    final = report.get("final") or {}
    for key in ("accuracy", "precision", "recall", "f1"):
        value = final.get(key)
        table.add_row(f"final {key}", f"{value:.1%}" if isinstance(value, (int, float)) else "-")
    privacy = report["privacy"]
    if privacy["mode"] == "none":
        table.add_row("privacy", "none (--no-dp)")
    else:
        table.add_row("privacy", f"DP-SGD, {privacy['accountant']} accountant, delta {privacy['delta']:g}")
        eps = [o["epsilon"] for o in privacy["owners"]]
        if eps:
            table.add_row("epsilon per owner", f"max {max(eps):.3f}, min {min(eps):.3f} "
                                               f"(budget {privacy['budget_epsilon']:g})")
    failures = sum(r["num_failures"] for r in report["rounds"])
    table.add_row("owner failures", str(failures))
    timing = report.get("timing", {})
    table.add_row("time", f"{timing.get('total_seconds', 0):.1f} s (start-up {timing.get('startup_seconds') or 0:.1f} s)")
    table.add_row("run folder", str(run_dir))
    table.add_row("report", str(run_dir / "report.html"))
    out.print(table)
