"""``fedmodel simulate``: rehearse a federation on one machine through Flower's simulation engine."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedmodel.cli import options as opt
from fedmodel.cli.console import err, fail, out, print_json_document
from fedmodel.cli.resume import INTERRUPTED_EXIT, interrupted_message, interruptible, resume_config
from fedmodel.config import BUNDLED_DATASETS, RunConfig
from fedmodel.errors import ConfigError, FedModelError
from fedmodel.report.model import Metrics, Report
from fedmodel.runs import ProgressFn

if TYPE_CHECKING:
    from fedmodel.simulations.runner import LocalSuperLink


@opt.run_options("simulate")
def simulate(
    given: dict[str, Any],
    id_column: opt.IdColumn = None,
    resume: opt.Resume = None,
    config: opt.ConfigFile = None,
    output_format: opt.Format = "table",
) -> None:
    """Split a real data set across simulated owners and train with per-owner DP-SGD on Flower."""
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
            result = _check_and_run(run_config, show_progress=output_format == "table")
    except FedModelError as exc:
        fail(exc, exc.exit_code)
    except KeyboardInterrupt:
        fail(Exception(interrupted_message("simulate", run_config.out) if run_config else "interrupted"),
             INTERRUPTED_EXIT)
    if output_format == "json":
        print_json_document(result.report)
    else:
        print_summary(result.report, result.run_dir)


def resolve_config(config_file: Path | None, given: dict[str, Any]) -> RunConfig:
    """Defaults < config file < options given on the command line; a dataset path becomes ``file``."""
    values: dict[str, Any] = RunConfig.from_toml(config_file) if config_file is not None else {}
    values.update(given)
    if values.get("task", "tabular") != "tabular":  # a language model
        values.setdefault("lr", opt.TEXT_LR)  # AdamW on LoRA adapters; the tables' SGD default (2.0) would diverge
        if values.get("model-path"):
            values["model-path"] = str(Path(values["model-path"]).expanduser().absolute())
    name = values.get("dataset")
    if isinstance(name, str) and name not in BUNDLED_DATASETS and name != "file":
        path = Path(name).expanduser()
        if path.suffix.lower() in (".csv", ".parquet", ".npz", ".jsonl") or path.exists():
            values["dataset"], values["data-path"] = "file", str(path.absolute())
    if values.get("data-path"):
        values["data-path"] = str(Path(values["data-path"]).expanduser().absolute())
    if values.get("ledger"):
        values["ledger"] = str(Path(values["ledger"]).expanduser().absolute())
    if not values.get("out"):
        values["out"] = str(Path("runs") / time.strftime("%Y%m%d-%H%M%S"))
    values["out"] = str(Path(values["out"]).expanduser().absolute())
    return RunConfig.from_mapping(values, source=str(config_file) if config_file else "")


def check_inputs(config: RunConfig) -> None:
    """Fail before Flower starts: the data file, the label, the partition and the device must work.

    On a Ray cluster the device is the worker hosts', not this machine's; the cluster itself is
    checked when the simulation starts (:func:`fedmodel.simulations.runner.check_workers`).
    """
    from fedmodel.data import federated_split

    if not config.ray_address and config.device not in ("auto", "cpu"):  # these always resolve: no torch import
        from fedmodel.device import resolve_device

        resolve_device(config.device)
    if config.task != "tabular":  # the model folder, the texts (or the pip command) and every owner's share
        from fedmodel.llm.federated import check_text_run

        check_text_run(config, simulated=True)
        return
    split = federated_split(config)
    empty = split.empty_owners()
    if empty:
        raise FedModelError(
            f"partition {config.partition} leaves {len(empty)} of {config.clients} owners without training rows "
            f"(owners {', '.join(map(str, empty[:10]))}); use fewer owners or another partition"
        )
    if config.audit:  # enough features and classes for the canaries
        from fedmodel.privacy.canaries import run_canaries

        run_canaries(config, split)


def _check_and_run(config: RunConfig, *, show_progress: bool) -> Any:
    """Check the inputs while the run's SuperLink boots (seconds saved), then run; a bad input stops it unused."""
    with _superlink(config) as superlink:
        check_inputs(config)
        return _run(config, show_progress=show_progress, superlink=superlink)


def _superlink(config: RunConfig) -> AbstractContextManager[LocalSuperLink | None]:
    from fedmodel.simulations.runner import local_superlink

    return local_superlink(config)


def _run(config: RunConfig, *, show_progress: bool, superlink: LocalSuperLink | None = None) -> Any:
    from fedmodel.simulations.runner import run_simulation

    if not show_progress:
        return run_simulation(config, superlink=superlink)
    dp = f"epsilon {config.epsilon:g} per owner" if config.dp else "no DP"
    verb = "resuming" if config.resume else "run folder"
    err.print(f"fedmodel: {config.dataset_label}, {config.clients} owners, {config.rounds} rounds, {dp}, "
              f"{config.strategy}{_where(config)}; {verb} {config.out}", highlight=False)
    tip = cohort_tip(config)
    if tip:
        err.print(tip, highlight=False)
    return with_progress(config.rounds, "starting Flower's simulation engine (Ray)",
                         lambda on_event: run_simulation(config, on_event=on_event, superlink=superlink))


COHORT_TIP_OWNERS = 100
"""From this many owners, one Flower node per owner costs far more than the training: suggest --nodes."""


def cohort_tip(config: RunConfig) -> str | None:
    """A hint for a run with many owners and one Flower node each (none once --nodes is set)."""
    if config.clients < COHORT_TIP_OWNERS or config.nodes:
        return None
    try:
        config.replace(nodes=2)
    except ConfigError:  # a combination cohorts cannot serve yet (secure aggregation, central DP, text, ...)
        return None
    return (f"fedmodel: tip: {config.clients} owners each get a Flower node of their own; --nodes 2 (about one per "
            "CPU) hosts them in cohorts and trains the same owners with the same seeds much faster")


def _where(config: RunConfig) -> str:
    if not config.ray_address:
        return ""
    gpus = f", {config.gpus_per_worker:g} GPU" if config.gpus_per_worker else ""
    return f", on the Ray cluster at {config.ray_address} ({config.cpus_per_worker} CPU{gpus} per worker)"


def with_progress(rounds: int, first: str, run: Callable[[ProgressFn], Any]) -> Any:
    """Call ``run(on_event)`` under a progress bar over rounds fed by the run's progress events."""
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=err, transient=False) as progress:
        task = progress.add_task(first, total=rounds)

        def on_event(event: dict[str, Any]) -> None:
            if event["event"] == "round-start":
                progress.update(task, description=f"round {event['round']}: training")
            elif event["event"] == "round":
                eps = event.get("epsilon_max")
                eps_text = f", max epsilon {eps:.2f}" if isinstance(eps, (int, float)) else ""
                progress.update(task, completed=event["round"],
                                description=f"round {event['round']}: accuracy {event['accuracy']:.3f}{eps_text}")

        return run(on_event)


def print_summary(report: Report | dict[str, Any], run_dir: Path) -> None:
    """The end-of-run table: final metrics, privacy and where the files are."""
    r = report if isinstance(report, Report) else Report.from_dict(report)
    table = Table(title=f"fedmodel simulate: {r.dataset}, {r.num_clients} owners", show_header=False)
    table.add_column("what")
    table.add_column("value")
    final = r.final or Metrics()
    for key in ("accuracy", "precision", "recall", "f1"):
        value = getattr(final, key)
        table.add_row(f"final {key}", f"{value:.1%}" if isinstance(value, (int, float)) else "-")
    privacy = r.privacy
    if privacy.mode == "none":
        table.add_row("privacy", "none (--no-dp)")
    else:
        table.add_row("privacy", f"DP-SGD, {privacy.accountant} accountant, delta {privacy.delta:g}")
        eps = [o.epsilon for o in privacy.owners if o.epsilon is not None]
        if eps:
            table.add_row("epsilon per owner", f"max {max(eps):.3f}, min {min(eps):.3f} "
                                               f"(budget {privacy.budget_epsilon:g})")
    client_level = privacy.client_level
    if client_level:  # central DP (fedmodel.server.central_dp)
        table.add_row("client-level epsilon", f"{client_level['epsilon']:.3f} at delta {client_level['delta']:g} "
                                              f"(central DP, {client_level['rounds']} rounds, noise multiplier "
                                              f"{client_level['noise_multiplier']:g})")
    if privacy.audit:
        table.add_row("privacy audit", audit_line(privacy.audit))
    table.add_row("owner failures", str(r.failures))
    resources = r.resources
    if resources:
        where = resources.ray_address or "private local Ray"
        nodes = len(resources.ray_nodes)
        table.add_row("workers", f"{where}: {resources.cpus_per_worker} CPU, {resources.gpus_per_worker:g} GPU "
                                 f"each; owners trained on {nodes} Ray node{'s' if nodes != 1 else ''}")
    timing = r.timing
    table.add_row("time", f"{timing.total_seconds or 0:.1f} s (start-up {timing.startup_seconds or 0:.1f} s)")
    table.add_row("run folder", str(run_dir))
    table.add_row("report", str(run_dir / "report.html"))
    out.print(table)


def audit_line(audit: dict[str, Any]) -> str:
    """The audit's summary: the lower bound, the proven epsilon and the verdict."""
    bound = audit.get("lower_bound_epsilon")
    if bound is None:
        return str(audit.get("verdict"))
    proven = audit.get("proven_epsilon")
    beside = f" (proven {proven:.3f})" if isinstance(proven, (int, float)) else ""
    return (f"epsilon >= {bound:.3f}{beside} at {1 - audit['beta']:.0%} confidence, {audit['correct']} of "
            f"{audit['guesses']} guesses right on {audit['canaries']} canaries: {audit['verdict']}")
