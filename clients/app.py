"""The data owner's Flower ClientApp: train privately on the owner's shard, reply with the update.

Thin by design: find out which owner this node is and load its shard, call ``fedmodel.owner``,
pack the reply. The same code serves both runtimes:

* simulation: ``node_config`` holds ``partition-id``; the shard is that partition of the run's data set;
* deployment: ``node_config`` holds the owner's own settings (``data-path``, ``budget-epsilon``, ...,
  see :class:`~fedmodel.config.NodeSettings`), which nothing the coordinator sends can override.

A failure becomes an error reply that names the owner, so the coordinator reports it and the
federation goes on with the others.
"""

from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from fedmodel.clients.central_dp import central_dp_mod
from fedmodel.clients.cohort import CellCache, PerMessage, is_cohort_message, serve_cohort
from fedmodel.clients.masked_stage import secure_aggregation_in_effect
from fedmodel.clients.privacy_account import attach_audit_head, owner_account, record_local_statistics
from fedmodel.clients.replies import error_reply, owner_label, reply, run_config
from fedmodel.clients.run_privacy import REPLY_KEY, current_privacy, keep_privacy, privacy_record, restore_privacy
from fedmodel.clients.secagg import require_masked_train, secure_aggregation_mod
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType
from flwr.clientapp import ClientApp

from fedmodel.config import NodeSettings, RunConfig
from fedmodel.data import Dataset, FederatedSplit, federated_split
from fedmodel.data.cleaning import CleaningSpec, RawTable
from fedmodel.data.prepare import (
    PreparedShard,
    as_raw,
    bounds_from_config,
    cleaning_spec,
    local_statistics,
    prepare_shard,
    read_owner_file,
    stats_from_config,
)
from fedmodel.data.scaling import feature_sums, noisy_feature_sums
from fedmodel.data.schema import Schema
from fedmodel.device import resolve_device
from fedmodel.errors import FedModelError, PolicyViolation, PrivacyBudgetExceeded
from fedmodel.owner import evaluate_owner, evaluate_owner_sums, train_owner_round
from fedmodel.privacy import OwnerPrivacyState
from fedmodel.privacy.accounting import epsilon_spent, gaussian_sum_epsilon
from fedmodel.privacy.canaries import shard_with_canaries
from fedmodel.privacy.randomness import gaussian_source, owner_seed
from fedmodel.privacy.release import (
    EVALUATION_EPSILON,
    EVALUATION_FLAG,
    EXACT_REPLIES_FLAG,
    coarse_quality,
    coarse_train_metrics,
    release_evaluation,
)
from fedmodel.protocol import FEATURE_SUMS_QUERY
from fedmodel.protocol import PLACEMENT_RECORD_KEY as PLACEMENT_RECORD_KEY  # where a reply names its Ray node

app = ClientApp()
MAX_CACHED_CELLS = 20_000_000
"""Cells of owners' rows each cache keeps in a worker (raw and prepared): all of a cohort's shards, mostly."""


@dataclass(frozen=True)
class Owner:
    """Who this node trains for: the run config as this owner applies it, its raw rows and how to clean them."""

    name: str
    seed_id: int
    simulated: bool
    config: RunConfig
    raw: RawTable
    schema: Schema
    spec: CleaningSpec
    local_statistics: tuple[str, ...] = ()  # cleaning with its own statistics, under the owner's opt-in

    def prepared(self, message_config: ConfigRecord) -> PreparedShard:
        """The shard to train or evaluate on, cleaned and scaled with the statistics the message carries."""
        stats, impute = stats_from_config(message_config)
        key = (self.name, id(self.raw), self.spec, _digest(stats), _digest(impute))
        cached = _PREPARED.get(key)
        if cached is not None and cached[0] is self.raw:  # the entry keeps its raw alive: no id is reused
            return cached[1]
        prepared = prepare_shard(self.raw, self.spec, self.schema, name=self.config.dataset_label,
                                 stats=stats, impute=impute)
        _PREPARED.put(key, (self.raw, prepared), prepared.data.x.size + self.raw.x.size)
        return prepared


    def unscaled(self) -> np.ndarray:
        """The rows the owner trains on, cleaned but not yet scaled: what the scaling statistics describe.

        With ``missing = mean`` the gaps are filled with the owner's own means here (the federated
        means replace them for training).
        """
        spec = dataclasses.replace(self.spec, scaling="none")
        return prepare_shard(self.raw, spec, self.schema, name=self.name).data.x.astype(np.float64)


_PREPARED: CellCache[tuple[RawTable, PreparedShard]] = CellCache(MAX_CACHED_CELLS)


def _digest(value: object) -> bytes:
    if value is None:
        return b""
    if isinstance(value, np.ndarray):
        return value.tobytes()
    return b"".join(np.asarray(getattr(value, f), np.float64).tobytes() for f in ("mean", "std", "minimum", "maximum"))


def resolve_owner(msg: Message, context: Context) -> Owner:
    """This node's owner: a simulated partition, or a deployed owner with its own settings and file."""
    config = run_config(context)
    settings = NodeSettings.from_node_config(context.node_config)
    if settings is None:
        pid = int(context.node_config["partition-id"])
        partitions = int(context.node_config["num-partitions"])
        if partitions != config.clients:
            raise FedModelError(f"owner {pid}: the simulation has {partitions} nodes, the run expects {config.clients}")
        split = federated_split(config)
        raw = _partition(split, pid, config.dataset_label)
        return Owner(str(pid), pid, True, config, raw, split.schema, cleaning_spec(config))
    settings.policy.check_run(settings.owner_name, dp=config.dp,  # before touching data
                              secure_aggregation=secure_aggregation_in_effect(config))
    schema = Schema.from_config(dict(msg.content["config"]))
    if schema is None:
        raise FedModelError(f"owner {settings.owner_name}: the run declared no data schema; refusing to guess it")
    spec = cleaning_spec(config, extra_id_columns=settings.id_columns)
    query = msg.metadata.message_type == MessageType.QUERY  # the feature sums are taken unscaled
    stats, impute = (None, None) if query else stats_from_config(msg.content["config"])
    local = local_statistics(spec, stats=stats, impute=impute, scaled=not query)
    settings.policy.check_local_statistics(settings.owner_name, local)  # before touching data
    if local:  # the owner allowed it: its audit log says so (and its train replies, Owner.local_statistics)
        record_local_statistics(settings.owner_name, settings.apply(config), context, local)
    raw = read_owner_file(Path(settings.data_path), settings.label, schema, spec)
    seed_id = zlib.crc32(settings.owner_name.encode())
    return Owner(settings.owner_name, seed_id, False, settings.apply(config), raw, schema, spec, local)


def global_weights(msg: Message) -> dict[str, torch.Tensor]:
    """The message's global model as tensors, converted once per message (a cohort's owners all load it)."""
    return _GLOBAL.get(msg, None, msg.content["arrays"].to_torch_state_dict)  # type: ignore[union-attr]  # a train message's "arrays" is an ArrayRecord


_GLOBAL: PerMessage[dict[str, torch.Tensor]] = PerMessage()


def _partition(split: FederatedSplit, pid: int, name: str) -> RawTable:
    """A simulated owner's raw rows, kept while the cache holds them (a cohort node serves many owners)."""
    key = (split, pid, name)  # the split itself (hashed by identity): kept alive while its owners are cached
    raw = _RAW.get(key)
    if raw is None:
        raw = as_raw(split.owner(pid), f"{name} (owner {pid}'s rows)", split.schema)
        _RAW.put(key, raw, raw.x.size)
    return raw


_RAW: CellCache[RawTable] = CellCache(MAX_CACHED_CELLS)


def load_privacy(context: Context) -> OwnerPrivacyState:
    """This owner's privacy state within the run (kept in ``context.state`` between rounds)."""
    return current_privacy(context)


@app.train(mods=[secure_aggregation_mod, central_dp_mod])  # SecAgg+ masks what central DP clipped (fedmodel.clients.secagg)
def train(msg: Message, context: Context) -> Message:
    """Train the received global model on this owner's shard with DP-SGD (or without, if --no-dp)."""
    if context.run_config.get("task", "tabular") != "tabular":  # a language model: LoRA adapters (fedmodel.clients.text)
        from fedmodel.clients import text

        return text.train(msg, context)
    torch.set_num_threads(1)
    if is_cohort_message(msg):  # a simulated node hosting many owners: each in turn (fedmodel.clients.cohort)
        return serve_cohort(msg, context, train_owner)
    return train_owner(msg, context)


def train_owner(msg: Message, context: Context) -> Message:
    """One owner's train step: the reply with its update, or an error reply naming it."""
    try:
        require_masked_train(owner_label(context).removeprefix("owner "), run_config(context))
        owner = resolve_owner(msg, context)
        config = owner.config
        privacy = restore_privacy(msg, context, owner) if config.dp else None  # charged before the first step
        train_config = msg.content["config"]
        prepared = owner.prepared(train_config)  # type: ignore[arg-type]  # a train message's "config" is a ConfigRecord
        shard = shard_with_canaries(config, owner.seed_id, owner.simulated, prepared.data)  # --audit's canaries
        account = owner_account(owner.name, config, context)
        reservation = None
        if privacy is not None:  # calibrated on what remains across runs, checked, reserved before training
            account.plan(privacy, num_examples=len(shard), batch_size=config.batch_size,
                         local_epochs=config.local_epochs, rounds=config.rounds, epsilon=config.epsilon,
                         delta=config.delta, max_grad_norm=config.max_grad_norm,
                         later=planned_evaluations(context, config))
            reservation = account.reserve_round(privacy, int(train_config["server-round"]))  # type: ignore[arg-type]  # Flower types record values as a union; this one is a number or a list
        try:
            update = train_owner_round(
                config, owner.seed_id, shard, global_weights(msg), privacy=privacy,
                server_round=int(train_config["server-round"]),  # type: ignore[arg-type]  # Flower types record values as a union; this one is a number or a list
                proximal_mu=float(train_config.get("proximal-mu", 0.0)),  # type: ignore[arg-type]  # Flower types record values as a union; this one is a number or a list
                device=resolve_device(config.device), simulated=owner.simulated,  # deployed: noise from the OS
            )
        finally:
            if privacy is not None:  # reserved steps count even if training failed part-way
                keep_privacy(context, privacy)
        update.metrics.update(account.commit(reservation, epsilon_run=update.metrics.get("epsilon")))
    except Exception as exc:  # reported to the coordinator as this owner's failure
        return error_reply(msg, context, exc)
    metrics, quality = released_train_numbers(context, update.metrics, prepared.summary)
    out = reply(msg, owner, metrics, ArrayRecord(update.weights), quality=quality)
    if privacy is not None:  # checkpointed by the coordinator, handed back if a simulation is resumed
        out.content[REPLY_KEY] = privacy_record(privacy)
    return attach_audit_head(out, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the global model on this owner's shard; only aggregate numbers leave."""
    if context.run_config.get("task", "tabular") != "tabular":  # a language model (fedmodel.clients.text)
        from fedmodel.clients import text

        refusal = evaluation_refusal(context, tabular=False)
        return error_reply(msg, context, refusal) if refusal is not None else text.evaluate(msg, context)
    torch.set_num_threads(1)
    if is_cohort_message(msg):
        return serve_cohort(msg, context, evaluate_owner_message)
    return evaluate_owner_message(msg, context)


def evaluate_owner_message(msg: Message, context: Context) -> Message:
    """One owner's evaluation: its aggregate metrics, or an error reply naming it.

    A deployed node answers as its owner's ``evaluation`` setting says: ``dp`` (default) a Gaussian
    release charged before it is made (:func:`private_evaluation`), ``exact`` exact metrics, ``off`` a
    refusal before any data is read. A simulated owner answers exactly, as always.
    """
    try:
        settings = NodeSettings.from_node_config(context.node_config)
        refusal = evaluation_refusal(context, tabular=True)
        if refusal is not None:  # before resolve_owner reads the file
            raise refusal
        owner = resolve_owner(msg, context)
        owner_account(owner.name, owner.config, context)  # the owner's policy holds for every message
        shard = owner.prepared(msg.content["config"]).data  # type: ignore[arg-type]  # an evaluate message's "config" is a ConfigRecord
        device = resolve_device(owner.config.device)
        if settings is not None and settings.evaluation == "dp":
            metrics = private_evaluation(owner, settings, shard, msg, context, device)
        else:
            metrics = evaluate_owner(owner.config, shard, global_weights(msg), device=device)
            if settings is not None:  # one metric layout for every deployed reply (the coordinator requires it)
                metrics.update({EVALUATION_FLAG: 0.0, EVALUATION_EPSILON: 0.0})
    except Exception as exc:
        return error_reply(msg, context, exc)
    return attach_audit_head(reply(msg, owner, metrics), context)


def evaluation_refusal(context: Context, *, tabular: bool) -> PolicyViolation | None:
    """The refusal a deployed node's ``evaluation`` setting gives this evaluate message, None to answer it.

    ``off`` refuses every evaluation; language models have no DP release, so only ``exact`` answers them.
    """
    settings = NodeSettings.from_node_config(context.node_config)
    if settings is None or settings.evaluation == "exact" or (tabular and settings.evaluation == "dp"):
        return None
    if settings.evaluation == "off":
        detail = "this node does not evaluate the coordinator's models (node option --evaluation off)"
    else:
        detail = ("a language model's evaluation has no DP release; the owner may allow exact evaluation "
                  "(node option --evaluation exact)")
    return PolicyViolation(settings.owner_name, "evaluation", f"{detail}; nothing was read or released")


def private_evaluation(owner: Owner, settings: NodeSettings, shard: Dataset, msg: Message, context: Context,
                       device: torch.device) -> dict[str, float]:
    """Evaluate under DP: check and charge the release, then compute, noise and release three sums.

    The release (examples, correct predictions, per-row losses clipped to [0, C]; see
    :func:`fedmodel.privacy.release.release_evaluation`) is one Gaussian-mechanism entry
    ``(evaluation-noise, 1.0, 1)``. It is refused (PrivacyBudgetExceeded, nothing computed or released)
    when the run's releases with it and the rest of the planned DP-SGD steps would pass the run's
    epsilon, or when the owner's ledger total would pass its budget. Otherwise it is reserved in the
    ledger and kept in the run's privacy state before the model runs on the rows, and committed after.
    """
    config = owner.config
    sigma = settings.evaluation_noise
    privacy = load_privacy(context)
    entry = (sigma, 1.0, 1)
    spent = privacy.epsilon(config.delta)
    plan = privacy.plan
    still_planned = [] if plan is None else [(plan.noise_multiplier, plan.sample_rate,
                                              max(plan.total_steps - privacy.steps, 0))]
    projected = epsilon_spent(privacy.everything + [entry] + still_planned, config.delta)
    if projected > config.epsilon:
        raise PrivacyBudgetExceeded(
            owner.name, spent, projected, config.epsilon,
            message=f"owner {owner.name}: releasing this evaluation would spend epsilon {projected:.4f} in the run "
                    f"(with the DP-SGD steps still planned), above the budget {config.epsilon:.4f} (spent so far "
                    f"{spent:.4f}); nothing was evaluated or released")
    account = owner_account(owner.name, config, context)
    reservation = account.reserve_release("evaluation", sigma, config.delta)  # the ledger's total budget
    privacy.charge_gaussian(sigma)  # charged before the release
    keep_privacy(context, privacy)
    sums = evaluate_owner_sums(config, shard, global_weights(msg), device=device)
    metrics = release_evaluation(sums, sigma).metrics()  # noise from the OS's CSPRNG, never the run's seed
    metrics[EVALUATION_EPSILON] = gaussian_sum_epsilon(sigma, config.delta)
    account.commit(reservation, epsilon_run=privacy.epsilon(config.delta))
    return metrics


def planned_evaluations(context: Context, config: RunConfig) -> tuple[tuple[float, float, int], ...]:
    """The DP evaluations a deployed node with ``evaluation = dp`` plans for: one per round (none otherwise)."""
    settings = NodeSettings.from_node_config(context.node_config)
    if settings is None or settings.evaluation != "dp":
        return ()
    return ((settings.evaluation_noise, 1.0, config.rounds),)


def released_train_numbers(context: Context, metrics: dict[str, float],
                           quality: dict[str, int]) -> tuple[dict[str, float], dict[str, int]]:
    """A train reply's metrics and quality counts as the node releases them.

    Simulation: exact, unchanged. A deployed node: ``train-loss`` withheld (NaN) and the counts
    coarsened (:mod:`fedmodel.privacy.release`) unless its owner set ``exact-replies``; the metric
    ``exact-replies`` says which.
    """
    settings = NodeSettings.from_node_config(context.node_config)
    if settings is None:
        return metrics, quality
    if settings.exact_replies:
        return {**metrics, EXACT_REPLIES_FLAG: 1.0}, quality
    return coarse_train_metrics(metrics), coarse_quality(quality)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Answer the coordinator's feature-sums query with DP sums, charged to the owner before release."""
    try:
        owner = resolve_owner(msg, context)
        record = msg.content["config"]
        if record.get("query") != FEATURE_SUMS_QUERY:
            raise FedModelError(f"owner {owner.name}: unknown query {record.get('query')!r}")
        bounds = bounds_from_config(record)
        noise = float(record["scaling-noise"])  # type: ignore[arg-type]  # Flower types record values as a union; this one is a number or a list
        config = owner.config
        if config.dp:
            privacy = load_privacy(context)
            cost = gaussian_sum_epsilon(noise, config.delta)
            after = OwnerPrivacyState(other=privacy.other + [(noise, 1.0, 1)])
            if after.epsilon(config.delta) >= config.epsilon:
                raise PrivacyBudgetExceeded(owner.name, privacy.epsilon(config.delta), after.epsilon(config.delta),
                                            config.epsilon)
            account = owner_account(owner.name, config, context)
            reservation = account.reserve_release("scaling statistics", noise, config.delta)
            privacy.charge_gaussian(noise)  # charged before the release
            keep_privacy(context, privacy)
            rng = gaussian_source(owner_seed(config.seed, owner.seed_id, 0, simulated=owner.simulated))
            sums = noisy_feature_sums(owner.unscaled(), bounds, noise, rng)
            account.commit(reservation, epsilon_run=after.epsilon(config.delta))
        else:
            cost, sums = 0.0, feature_sums(owner.unscaled(), bounds)
    except Exception as exc:
        return error_reply(msg, context, exc)
    return reply(msg, owner, {"sums": [float(v) for v in sums.ravel()], "epsilon-stats": cost})  # type: ignore[dict-item]  # MetricRecord takes lists of floats too; reply() is typed narrower
