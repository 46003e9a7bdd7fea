"""The coordinator's Flower ServerApp: one federated run, written to the run folder.

Thin by design: parse the run config, build the strategy, evaluate the global model on the held-out
test split every round, and hand everything to the recorder; the work lives in ``fedmodel``.
"""

from __future__ import annotations

import logging
import platform
import time
from pathlib import Path

import numpy as np
import torch
from fedmodel.server.canaries import UpdateAudit, audit_run
from fedmodel.server.identity import IdentifiedGrid, NodeNames
from fedmodel.server.recorder import RunRecorder
from fedmodel.server.resume import handbacks, open_checkpoint, resume, save_round, train_config
from fedmodel.server.rounds import run_rounds
from fedmodel.server.stats import collect_feature_stats
from fedmodel.server.strategy import RunStrategy, build_strategy
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from fedmodel.config import RunConfig
from fedmodel.data import FederatedSplit, federated_split
from fedmodel.data.cleaning import CleaningSpec, FeatureStats
from fedmodel.data.prepare import (
    as_raw,
    cleaning_spec,
    coordinator_spec,
    prepare_shard,
    stats_from_config,
    stats_to_config,
)
from fedmodel.data.scaling import public_bounds
from fedmodel.models import build_model
from fedmodel.privacy.owner_ledger import AUDIT_LOG_NAME
from fedmodel.report.run_folder import RunFolder
from fedmodel.security.audit_log import AuditLog
from fedmodel.training import evaluate

app = ServerApp()
log = logging.getLogger("fedmodel.server")


def run_folder_path(config: RunConfig) -> Path:
    """The run folder: ``out`` if set (absolute), else ``runs/<timestamp>`` under the working dir."""
    if config.out:
        return Path(config.out)
    return Path.cwd() / "runs" / time.strftime("%Y%m%d-%H%M%S")


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run ``rounds`` rounds of the configured strategy over all owners."""
    torch.set_num_threads(1)
    config = RunConfig.from_mapping(dict(context.run_config), source="run_config")
    folder = RunFolder(run_folder_path(config))
    checkpoint = open_checkpoint(folder.path, config) if config.resume else None  # verified before any use
    if checkpoint is None:
        folder.create(config.to_mapping())
    folder.event("start", rounds=config.rounds, clients=config.clients)
    audit = AuditLog(folder.path / AUDIT_LOG_NAME)  # who ran what: the run's config, each round, its end
    audit.append("run-start", run_id=str(context.run_id), host=platform.node(), config=config.to_mapping())
    recorder = RunRecorder(config, folder, audit=audit)
    try:
        names = NodeNames.from_environment()  # a coordinator's registry: owners named by their admitted key
        if names is not None:
            grid = IdentifiedGrid(grid, names, recorder.identity_claim)  # type: ignore[assignment]  # IdentifiedGrid wraps the Grid and has its methods
            recorder.identity_source = f"the coordinator's node registry {names.path} (Flower node id of the reply)"
        if config.task != "tabular":  # a language model: only LoRA adapters travel (fedmodel.server.text)
            from fedmodel.server.text import run_text

            folder.write_report(run_text(grid, config, folder, recorder))
            audit.append("run-end", run_id=str(context.run_id), status="completed")
            folder.event("done", status="completed")
            return
        split = federated_split(config)
        spec = cleaning_spec(config)
        strategy = build_strategy(config, recorder)
        saved: dict[str, object] | None = None
        if checkpoint is None:
            stats, impute = scaling_statistics(grid, config, split, spec, strategy)
        else:  # the statistics the owners scale with are the checkpoint's: never asked (nor charged) twice
            saved = resume(checkpoint, strategy, recorder, folder)
            stats, impute = stats_from_config(saved)
        test = prepare_shard(as_raw(split.test(), "the coordinator's test split", split.schema), coordinator_spec(spec),
                             split.schema, name=config.dataset_label, stats=stats, impute=impute).data
        shared = saved if saved is not None else {**split.schema.to_config(), **stats_to_config(stats, impute)}
        model = build_model(config.model, test.num_features, test.num_classes, seed=config.seed)
        device = torch.device("cpu")

        def central_eval(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            model.load_state_dict(arrays.to_torch_state_dict())
            metrics = evaluate(model, test, device=device)
            recorder.central_evaluation(server_round, metrics)
            return MetricRecord(metrics)  # type: ignore[arg-type]  # dict is invariant: dict[str, float] is a valid MetricRecord

        if checkpoint is None:
            arrays, first, extra = ArrayRecord(model.state_dict()), 1, {}
            central_eval(0, arrays)
            save_round(folder, 0, arrays, strategy, recorder, shared, config)
        else:
            arrays, first = ArrayRecord(checkpoint.arrays), checkpoint.server_round + 1
            extra = handbacks(recorder, config, in_flight_round=first)
        if config.audit and not config.secure_aggregation:  # --audit also reads each owner's updates
            recorder.update_audit = UpdateAudit(config, split, num_features=test.num_features,
                                                num_classes=test.num_classes)
        final = run_rounds(
            strategy, grid, config, arrays=arrays, first_round=first, train_config=train_config(config, shared, extra),
            evaluate_config=ConfigRecord(shared), evaluate_fn=central_eval,  # type: ignore[arg-type]  # shared holds only ConfigRecord values
            after_round=lambda r, a: save_round(folder, r, a, strategy, recorder, shared, config),  # type: ignore[arg-type]  # after_round's return value is not used
        )
        if config.audit:  # --audit: the canaries scored with the final model (fedmodel.server.canaries)
            recorder.privacy_audit = audit_run(config, split, final.to_torch_state_dict(),
                                               num_features=test.num_features, num_classes=test.num_classes,
                                               owner_privacy=recorder.owner_privacy, updates=recorder.update_audit)
        folder.write_model(final.to_torch_state_dict())
        folder.write_report(recorder.report("completed"))
        audit.append("run-end", run_id=str(context.run_id), status="completed")
        folder.event("done", status="completed")
    except Exception as exc:  # the run failed: say why in the run folder, then fail the Flower run
        reason = f"{type(exc).__name__}: {exc}"
        log.error("run failed: %s", reason)
        folder.write_report(recorder.report("failed", reason))
        audit.append("run-end", run_id=str(context.run_id), status="failed", reason=reason)
        folder.event("done", status="failed", reason=reason)
        raise


def scaling_statistics(grid: Grid, config: RunConfig, split: FederatedSplit, spec: CleaningSpec,
                       strategy: RunStrategy) -> tuple[FeatureStats | None, np.ndarray | None]:
    """The statistics every party scales (and mean-imputes) with; (None, None) when each uses its own.

    Public bounds come from the coordinator's held-out rows. ``zscore`` asks the owners for DP sums
    (their epsilon is charged to each owner); ``minmax`` scales by the public bounds themselves,
    which costs no owner anything.
    """
    if spec.scaling == "none" or config.scaling_stats == "local":
        return None, None
    bounds = public_bounds(split.test().x.astype(np.float64))
    if spec.scaling == "minmax":
        return FeatureStats(count=0.0, mean=bounds.centre, std=bounds.half_width, minimum=bounds.lo,
                            maximum=bounds.hi), None
    fed = collect_feature_stats(grid, config, bounds, split.schema, strategy)
    stats = FeatureStats(count=float(np.mean(fed.count)), mean=fed.mean, std=fed.std, minimum=bounds.lo,
                         maximum=bounds.hi)
    return stats, (fed.mean if spec.missing == "mean" else None)
