"""``fedmodel train``: submit a training run to a deployed coordinator and follow it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from fedmodel.cli import options as opt
from fedmodel.cli.console import err, fail, print_json_document
from fedmodel.cli.resume import INTERRUPTED_EXIT, interruptible, interrupted_message, resume_config
from fedmodel.cli.simulate import print_summary, resolve_config, with_progress
from fedmodel.config import RunConfig
from fedmodel.errors import ConfigError, FedModelError


def train(
    coordinator: Annotated[str, typer.Option(help="HOST:PORT of the coordinator's SuperLink")],
    ca: Annotated[Path | None, typer.Option(help="The coordinator's CA certificate (ca.crt)")] = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="Plain HTTP, for a coordinator started --insecure")] = False,
    dataset: opt.Dataset = None,
    label: opt.Label = None,
    clients: Annotated[int | None, typer.Option(help="Data-owner nodes that must take part [default: 10]")] = None,
    rounds: opt.Rounds = None,
    epsilon: opt.Epsilon = None,
    delta: opt.Delta = None,
    max_grad_norm: opt.MaxGradNorm = None,
    strategy: opt.Strategy = None,
    proximal_mu: opt.ProximalMu = None,
    server_lr: opt.ServerLr = None,
    model: opt.Model = None,
    local_epochs: opt.LocalEpochs = None,
    batch_size: opt.BatchSize = None,
    lr: opt.Lr = None,
    seed: opt.Seed = None,
    test_fraction: opt.TestFraction = None,
    missing: opt.Missing = None,
    duplicates: opt.Duplicates = None,
    outliers: opt.Outliers = None,
    outlier_k: opt.OutlierK = None,
    scaling: opt.Scaling = None,
    scaling_stats: opt.ScalingStats = None,
    scaling_noise: opt.ScalingNoise = None,
    id_column: opt.IdColumn = None,
    augment: opt.Augment = None,
    aggregation: opt.Aggregation = None,
    max_update_norm: opt.MaxUpdateNorm = None,
    task: opt.Task = None,
    model_path: opt.ModelPath = None,
    text_column: opt.TextColumn = None,
    max_length: opt.MaxLength = None,
    lora_rank: opt.LoraRank = None,
    lora_alpha: opt.LoraAlpha = None,
    lora_dropout: opt.LoraDropout = None,
    lora_targets: opt.LoraTargets = None,
    physical_batch_size: opt.PhysicalBatchSize = None,
    max_rows: opt.MaxRows = None,
    pooling: opt.Pooling = None,
    head_lr: opt.HeadLr = None,
    min_clients: opt.MinClients = None,
    round_timeout: opt.RoundTimeout = None,
    below_minimum: opt.BelowMinimum = None,
    central_dp: opt.CentralDp = None,
    central_noise: opt.CentralNoise = None,
    central_clip: opt.CentralClip = None,
    central_target_quantile: opt.CentralTargetQuantile = None,
    central_clip_lr: opt.CentralClipLr = None,
    central_count_stddev: opt.CentralCountStddev = None,
    secure_aggregation: opt.SecureAggregation = False,
    secagg_shares: opt.SecaggShares = None,
    secagg_threshold: opt.SecaggThreshold = None,
    resume: opt.Resume = None,
    config: opt.ConfigFile = None,
    out_dir: opt.OutDir = None,
    output_format: opt.Format = "table",
) -> None:
    """Train across deployed data-owner nodes; the coordinator evaluates on --dataset's test split.

    Each node trains on its own file with its own budget: --epsilon and --delta are what the run
    asks for, and a node spends at most its own budget.
    """
    text = opt.text_options(task=task, model_path=model_path, text_column=text_column, max_length=max_length,
                            lora_rank=lora_rank, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                            lora_targets=lora_targets, physical_batch_size=physical_batch_size, max_rows=max_rows,
                            pooling=pooling, head_lr=head_lr)
    central = opt.central_options(
        central_dp=central_dp, central_noise=central_noise, central_clip=central_clip,
        central_target_quantile=central_target_quantile, central_clip_lr=central_clip_lr,
        central_count_stddev=central_count_stddev) | opt.secure_options(
        secure_aggregation=secure_aggregation, secagg_shares=secagg_shares, secagg_threshold=secagg_threshold)
    values = text | central | opt.given(
        dataset=dataset, label=label, clients=clients, rounds=rounds, epsilon=epsilon, delta=delta,
        max_grad_norm=max_grad_norm, strategy=strategy, proximal_mu=proximal_mu, server_lr=server_lr,
        model=model, local_epochs=local_epochs, batch_size=batch_size, lr=lr, seed=seed,
        test_fraction=test_fraction, out=out_dir,
        missing=missing, duplicates=duplicates, outliers=outliers, outlier_k=outlier_k, scaling=scaling,
        scaling_stats=scaling_stats, scaling_noise=scaling_noise, id_columns=opt.id_columns(id_column),
        augment=augment, aggregation=aggregation, max_update_norm=max_update_norm,
        min_clients=min_clients, round_timeout=round_timeout, below_minimum=below_minimum,
    )
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
