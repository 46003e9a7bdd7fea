"""The owner's cross-run privacy account for one ClientApp message, built from Flower's Context.

Where the ledger and the audit log live, and which budget and policy hold, is the owner's business:

* deployed node: its state folder (``node_config`` ``state-dir``), its key file (``ledger-key``), its
  total budget (``budget-epsilon``) and policy; nothing in the run config changes them;
* simulated owner: the run's ``ledger`` folder if given (one ledger of every simulated owner, so
  budgets carry across simulations), the run's epsilon as its total budget, and a rehearsal policy.

The run is identified by fedmodel's run id (``run-id``, kept when a run is resumed; Flower's run id
when it is not set) and the coordinator: the address the node was started against (deployment) and
the run folder the coordinator writes.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from fedmodel.clients.masked_stage import secure_aggregation_in_effect
from flwr.app import ConfigRecord, Context, Message

from fedmodel.config import NodeSettings, RunConfig
from fedmodel.errors import ConfigError, PolicyViolation, PrivacyBudgetExceeded
from fedmodel.privacy.ledger import ledger_path
from fedmodel.privacy.owner_ledger import (
    AUDIT_LOG_NAME,
    DataFingerprint,
    OwnerAccount,
    RunIdentity,
    audit_log_for,
    check_ledger_against_log,
    open_ledger,
)
from fedmodel.privacy.policy import PrivacyPolicy
from fedmodel.protocol import AUDIT_HEAD_RECORD_KEY
from fedmodel.security.audit_log import AuditLogError

log = logging.getLogger("fedmodel.client")
RUN_STARTED_KEY = "fedmodel-run-audit"
"""``context.state`` record set once the run's start is in the owner's audit log."""


def owner_account(owner: str, config: RunConfig, context: Context) -> OwnerAccount:
    """This owner's account for the run; records the run's start once, then checks the run-level policy.

    Raises PolicyViolation when the run breaks the owner's policy (DP, secure aggregation).
    """
    account, settings = _account(owner, config, context)
    if RUN_STARTED_KEY not in context.state:
        account.start_run(_fingerprint(config, settings, context), dp=config.dp, epsilon=config.epsilon,
                          delta=config.delta, rounds=config.rounds, clients=config.clients, model=config.model,
                          local_epochs=config.local_epochs, batch_size=config.batch_size)
        context.state[RUN_STARTED_KEY] = ConfigRecord({"started": time.time()})
    account.check_run(dp=config.dp, secure_aggregation=secure_aggregation_in_effect(config))
    return account


LOCAL_STATISTICS_KEY = "fedmodel-local-statistics-audit"
"""``context.state`` record set once the run's use of local statistics is in the owner's audit log."""


def record_local_statistics(owner: str, config: RunConfig, context: Context, uses: tuple[str, ...]) -> None:
    """Append that the owner's own statistics clean its rows (its ``--allow-local-statistics``), once per run and use.

    Raises what the audit log raises: a node that cannot record its opt-in does not use it.
    """
    done = context.state.get(LOCAL_STATISTICS_KEY)
    recorded = [str(o) for o in done["options"]] if isinstance(done, ConfigRecord) else []  # type: ignore[union-attr]  # done is a ConfigRecord here; its options are a list
    if set(uses) <= set(recorded):
        return
    account = _account(owner, config, context)[0]
    if account.audit is not None:
        account.audit.append("local-statistics", owner=owner, run_id=account.run.run_id,
                             coordinator=account.run.coordinator, options=list(uses),
                             reason="allowed by the owner (--allow-local-statistics): outside DP-SGD's "
                                    "record-level guarantee")
    context.state[LOCAL_STATISTICS_KEY] = ConfigRecord({"options": sorted(set(recorded) | set(uses))})


def record_refusal(owner: str, context: Context, exc: BaseException) -> None:
    """Append a refusal (budget or policy) to the owner's audit log; never raises (the reply says why anyway)."""
    if not isinstance(exc, (PrivacyBudgetExceeded, PolicyViolation)):
        return
    try:
        try:
            config = RunConfig.from_mapping(dict(context.run_config), source="run_config")
        except ConfigError:  # a run refused for its keys (rule run-config): the run's identity is enough
            run = context.run_config
            config = RunConfig(run_id=str(run.get("run-id", "")), out=str(run.get("out", "")))
        _account(owner, config, context)[0].refused(exc)
    except Exception:  # the refusal reply must still go out
        log.exception("owner %s: cannot record the refusal in the audit log", owner)


def _account(owner: str, config: RunConfig, context: Context) -> tuple[OwnerAccount, NodeSettings | None]:
    settings = NodeSettings.from_node_config(context.node_config)
    if settings is None:  # a simulated owner
        folder = config.ledger
        key_file, budget, policy, where = "", config.epsilon, PrivacyPolicy.rehearsal(), "local simulation"
    else:
        folder = settings.state_dir
        key_file, budget, policy = settings.ledger_key, settings.budget_epsilon, settings.policy
        where = f"coordinator {settings.coordinator}" if settings.coordinator else "coordinator (address not given)"
    run = RunIdentity(config.run_id or str(context.run_id), f"{where}, run folder {config.out or '(not named)'}")
    audit_key = settings.audit_key if settings is not None else ""
    if settings is not None:  # a deleted or older ledger is refused, not taken as a fresh budget
        check_ledger_against_log(ledger_path(Path(folder)), Path(folder) / AUDIT_LOG_NAME, owner,
                                 open_ledger(folder, key_file) if ledger_path(Path(folder)).exists() else None)
    ledger = open_ledger(folder, key_file) if folder else None
    audit = audit_log_for(Path(folder), audit_key) if folder else None
    data = DataFingerprint.of_file(Path(settings.data_path)) if settings is not None else None  # once per process
    return OwnerAccount(owner, run, budget_epsilon=budget, policy=policy, ledger=ledger, audit=audit,
                        data=data), settings


def _fingerprint(config: RunConfig, settings: NodeSettings | None, context: Context) -> DataFingerprint:
    if settings is not None:
        return DataFingerprint.of_file(Path(settings.data_path))
    share = f"partition {context.node_config.get('partition-id')} of {config.clients} ({config.partition})"
    if config.dataset == "file":
        return DataFingerprint.of_file(Path(config.data_path), detail=share)
    return DataFingerprint(config.dataset, None, detail=f"bundled data set, {share}")


def attach_audit_head(reply: Message, context: Context) -> Message:
    """Add a deployed owner's audit-log head (entry count, tip) to its reply, for the coordinator to keep.

    The coordinator's copy is what a node's own writer cannot rewrite: a log later cut back below a
    count the coordinator recorded shows it. A simulated owner's reply is returned unchanged; a log whose
    end cannot be read is reported as ``count`` -1 (the reply still goes out).
    """
    settings = NodeSettings.from_node_config(context.node_config)
    if settings is None or not settings.state_dir:
        return reply
    try:
        head = audit_log_for(Path(settings.state_dir), settings.audit_key).head()
        record = {"count": head.count, "tip": head.tip, "keyed": head.keyed}
    except AuditLogError:
        log.exception("cannot read the audit log's head for the reply")
        record = {"count": -1, "tip": "", "keyed": False}
    reply.content[AUDIT_HEAD_RECORD_KEY] = ConfigRecord(record)  # type: ignore[arg-type]  # done is a ConfigRecord here; its options are a list
    return reply
