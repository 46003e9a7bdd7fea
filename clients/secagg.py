"""The owner's side of secure aggregation: Flower's SecAgg+ mod around fedmodel's train function.

Flower's :func:`~flwr.client.mod.secaggplus_mod` runs the four SecAgg+ stages at the owner (setup:
key pairs; share keys: Shamir shares of its mask seed and key to its neighbours, encrypted for
each; collect masked vectors: train, then quantise the update and add a private mask and pairwise
masks; unmask: hand the coordinator the shares it needs to remove the masks of the sum). It speaks
the legacy ``FitIns``/``FitRes`` layout; :func:`secure_aggregation_mod` translates between it and
fedmodel's train message (``arrays`` + ``config``), so the same train function serves both.

What leaves the node in a secure round: the masked, quantised update (the mod clears every array
of the reply), the metrics (``num-examples``, ``train-loss``, the owner's epsilon: not hidden by
SecAgg+) and the owner's privacy state record. The update masked is ``new - global`` (the delta),
which keeps it inside SecAgg+'s clipping range of +-8 per coordinate.

The owner's policy learns that a round is secure from the protocol itself: fedmodel's train
function sees :func:`~fedmodel.clients.masked_stage.masked_stage_active` only while Flower's mod, on this
node, has run the setup and share-keys stages and is about to mask the reply. Nothing in a message
can set it.

One masked update per (run, round) at a deployed node. The unmasked sum hides an owner's update
only once: a coordinator that re-runs a round without one owner and subtracts the two sums gets that
owner's update (exactly, when the other owners' updates repeat). So at the collect-masked-vectors
stage, before training, a deployed node records (run, ``server-round``) in
``<state-dir>/secagg-masked-rounds.json`` (written durably, owner-only) and refuses a round already
recorded there (:data:`RULE_SECURE_AGGREGATION_REPLAY`, in the owner's audit log). The run is
fedmodel's ``run-id`` (``flower-<Flower run id>`` without one), the run under which the node's
privacy state recognises a repeated round (:mod:`fedmodel.clients.run_privacy`); a new run id is a new run, whose
training the ledger charges again. A training attempt that fails (an error reply, no update
released) gives its round back. Simulation (one trusted process tree) keeps no such record.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from fedmodel.clients.masked_stage import masked_stage, masked_stage_active
from fedmodel.clients.privacy_account import record_refusal
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, RecordDict
from flwr.app.message.message import make_message
from flwr.app.message_type import MessageType
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.constant import ErrorCode
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, RECORD_KEY_STATE, Key, Stage
from flwr.compat.common import recorddict_compat as compat

from fedmodel.config import NodeSettings, RunConfig
from fedmodel.errors import FedModelError, PolicyViolation
from fedmodel.fsio import atomic_write
from fedmodel.privacy.policy import RULE_SECURE_AGGREGATION
from fedmodel.protocol import SECAGG_NAMES_KEY

log = logging.getLogger("fedmodel.client")
MIN_OTHER_NEIGHBOURS = 2
"""The fewest other owners whose pairwise masks must cover this owner's update before it is sent."""
RULE_SECURE_AGGREGATION_REPLAY = "secure-aggregation-replay"
"""The rule a second masked update of a (run, round) breaks (a node masks at most one per round)."""
MASKED_ROUNDS_FILE = "secagg-masked-rounds.json"
"""A deployed node's record of the (run, round) pairs it masked an update for, in its state folder."""
_MASKED_FORMAT = "fedmodel-secagg-masked-rounds"


class _OwnerFailed(Exception):
    """fedmodel's train function replied with an error: pass it on instead of a masked vector."""

    def __init__(self, error: Error) -> None:
        super().__init__(error.reason)
        self.error = error


def require_masked_train(owner: str, config: RunConfig) -> None:
    """Refuse a train message outside SecAgg+ in a run that declares secure aggregation (PolicyViolation)."""
    if config.secure_aggregation and not masked_stage_active():
        raise PolicyViolation(owner, RULE_SECURE_AGGREGATION,
                              "the run declares secure aggregation but this train request did not come through "
                              "Flower's SecAgg+ protocol; an unmasked update is never sent")


def secure_aggregation_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Run a SecAgg+ stage with Flower's mod; a plain train message (no SecAgg+ record) goes straight through."""
    if msg.metadata.message_type != MessageType.TRAIN or RECORD_KEY_CONFIGS not in msg.content.config_records:
        return call_next(msg, context)
    _check_stage(msg, context)

    def masked_train(legacy: Message, ctxt: Context) -> Message:
        plain, reference = _fedmodel_message(legacy)
        claim = _claim_masked_round(plain, ctxt)  # a deployed node: recorded on disk before training
        with masked_stage():
            reply = call_next(plain, ctxt)
        if reply.has_error():
            if claim is not None:  # nothing was released: the round may be tried again
                claim.give_back()
            raise _OwnerFailed(reply.error)
        equal = ctxt.run_config.get("central-dp", "none") != "none"  # central DP averages with equal weights
        return _legacy_reply(reply, plain, reference, 1.0 if equal else _max_weight(ctxt))

    try:
        return secaggplus_mod(msg, context, masked_train)
    except _OwnerFailed as failed:  # the owner's own failure (budget, policy, data): its reason goes back
        return Message(failed.error, reply_to=msg)


class _MaskedRound:
    """A (run, round) this node recorded as masked in its state folder (see the module docstring)."""

    def __init__(self, folder: Path, run: str, server_round: int) -> None:
        self.folder, self.run, self.server_round = folder, run, server_round

    def give_back(self) -> None:
        """Remove the record: the attempt failed before any update left the node (if this fails, it stays)."""
        try:
            with _locked(self.folder):
                pairs = read_masked_rounds(self.folder)
                pairs.discard((self.run, self.server_round))
                _write_masked_rounds(self.folder, pairs)
        except (OSError, FedModelError) as exc:  # kept as masked: the safe side, the reply says why it failed
            log.warning("SecAgg+: run %r round %d stays recorded as masked: %s", self.run, self.server_round, exc)


def _claim_masked_round(msg: Message, context: Context) -> _MaskedRound | None:
    """Record this train message's (run, round) as masked, durably, before training; None in simulation.

    Raises
    ------
    _OwnerFailed
        The round was masked before (its refusal is in the owner's audit log), or it cannot be recorded.
    """
    settings = NodeSettings.from_node_config(context.node_config)
    if settings is None:  # simulation: one trusted process tree
        return None
    folder = Path(settings.state_dir)
    run = masked_run_id(context)
    try:
        server_round = int(msg.content["config"]["server-round"])  # type: ignore[arg-type]  # Flower types record values as a union; this one is a number or a list
        with _locked(folder):
            pairs = read_masked_rounds(folder)
            if (run, server_round) in pairs:
                raise PolicyViolation(settings.owner_name, RULE_SECURE_AGGREGATION_REPLAY,
                                      f"run {run!r} round {server_round} was masked and sent already; a second "
                                      "masked update of the same round would let the coordinator subtract two sums "
                                      "and recover one owner's update")
            pairs.add((run, server_round))
            _write_masked_rounds(folder, pairs)  # durable before the update exists, let alone leaves
    except PolicyViolation as exc:
        record_refusal(settings.owner_name, context, exc)
        raise _OwnerFailed(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=str(exc))) from None
    except (KeyError, TypeError, ValueError, OSError, FedModelError) as exc:  # no update without the record
        reason = f"owner {settings.owner_name}: SecAgg+: cannot record the masked round, nothing is sent: {exc}"
        raise _OwnerFailed(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason)) from None
    return _MaskedRound(folder, run, server_round)


def masked_run_id(context: Context) -> str:
    """The run a masked round belongs to: fedmodel's ``run-id``, else ``flower-<Flower run id>`` (as fedmodel.clients.run_privacy)."""
    return str(context.run_config.get("run-id") or "") or f"flower-{context.run_id}"


def read_masked_rounds(folder: Path) -> set[tuple[str, int]]:
    """The (run, round) pairs a node's state folder records as masked (none when there is no record yet).

    Raises FedModelError when the record exists but cannot be read: no update is masked without it.
    """
    path = folder / MASKED_ROUNDS_FILE
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return set()
    except (OSError, ValueError) as exc:
        raise FedModelError(f"the record of masked rounds {path} is unreadable: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != _MASKED_FORMAT or not isinstance(data.get("masked"), list):
        raise FedModelError(f"the record of masked rounds {path} is not a {_MASKED_FORMAT} file")
    try:
        return {(str(run), int(rnd)) for run, rnd in data["masked"]}
    except (TypeError, ValueError) as exc:
        raise FedModelError(f"the record of masked rounds {path} has a malformed entry: {exc}") from exc


def _write_masked_rounds(folder: Path, pairs: set[tuple[str, int]]) -> None:
    data = {"format": _MASKED_FORMAT, "version": 1, "masked": [list(p) for p in sorted(pairs)]}
    atomic_write(folder / MASKED_ROUNDS_FILE, json.dumps(data, indent=1).encode(), mode=0o600)


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold the masked-rounds lock of ``folder`` (between processes: two ClientApps may run at once)."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(folder / f".{MASKED_ROUNDS_FILE}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _check_stage(msg: Message, context: Context) -> None:
    """Checks Flower's mod leaves out: enough other owners mask the update; no owner is both alive and dead."""
    configs = msg.content.config_records[RECORD_KEY_CONFIGS]
    stage = configs.get(Key.STAGE)
    if stage == Stage.COLLECT_MASKED_VECTORS:
        state = context.state.config_records.get(RECORD_KEY_STATE, ConfigRecord())
        others = len(state.get("public_keys_dict:K", [])) - 1  # type: ignore[arg-type]  # Flower types record values as a union; this one is a number or a list
        if int(state.get("threshold", 0)) < 2 or others < MIN_OTHER_NEIGHBOURS:  # type: ignore[arg-type]  # Flower types record values as a union; this one is a number or a list
            raise ValueError(f"SecAgg+: refusing to send an update masked by {others} other owners with reconstruction "
                             f"threshold {state.get('threshold')}: it needs >= {MIN_OTHER_NEIGHBOURS} others and "  # type: ignore[str-bytes-safe]  # threshold is an int in SecAgg+'s state
                             "threshold >= 2")
    elif stage == Stage.UNMASK:
        alive = set(configs.get(Key.ACTIVE_NODE_ID_LIST, []))  # type: ignore[arg-type]  # Flower types record values as a union; this one is a number or a list
        dead = set(configs.get(Key.DEAD_NODE_ID_LIST, []))  # type: ignore[arg-type]  # Flower types record values as a union; this one is a number or a list
        if alive & dead:
            raise ValueError(f"SecAgg+: nodes {sorted(alive & dead)} are listed both as active and as dropped; "  # type: ignore[type-var]  # node ids are ints
                             "revealing both shares would unmask their update")


def _fedmodel_message(legacy: Message) -> tuple[Message, dict[str, np.ndarray]]:
    """The legacy FitIns as fedmodel's train message (named ``arrays`` + ``config``), and the global arrays."""
    # read the records as they are: compat.recorddict_to_fitins refuses list values (the names, the schema)
    config = dict(legacy.content.config_records["fitins.config"])
    names = config.pop(SECAGG_NAMES_KEY, None)
    parameters = compat.arrayrecord_to_parameters(legacy.content.array_records["fitins.parameters"], keep_input=True)
    arrays = parameters_to_ndarrays(parameters)
    if not isinstance(names, list) or len(names) != len(arrays):
        raise ValueError(f"SecAgg+ train message: {SECAGG_NAMES_KEY!r} must name each of the {len(arrays)} arrays")
    reference = {str(n): a for n, a in zip(names, arrays, strict=True)}
    content = RecordDict({"arrays": ArrayRecord(array_dict={n: Array(a) for n, a in reference.items()}),
                          "config": ConfigRecord(config)})
    return make_message(metadata=legacy.metadata, content=content), reference


def _legacy_reply(reply: Message, plain: Message, reference: dict[str, np.ndarray], max_weight: float) -> Message:
    """fedmodel's train reply in the FitRes layout the mod masks: the delta, weighted by the example count.

    Every other record (metrics, owner, privacy state) rides along unmasked. An owner with more
    examples than the round's ``max_weight`` counts as ``max_weight`` (SecAgg+ would overflow); with
    central DP ``max_weight`` is 1, so every owner weighs the same (the noise is calibrated to that).
    """
    new = reply.content["arrays"]
    deltas = [new[name].numpy().astype(np.float64) - ref.astype(np.float64) for name, ref in reference.items()]  # type: ignore[union-attr]  # the train reply's "arrays" is an ArrayRecord
    metrics = next(iter(reply.content.metric_records.values()))
    examples = float(metrics["num-examples"])  # type: ignore[arg-type]  # Flower types record values as a union; this one is a number or a list
    weight = int(min(round(examples), max_weight))
    if weight < examples and max_weight > 1:
        log.warning("SecAgg+: %g examples counted as %d, the round's largest weight", examples, weight)
    fitres = FitRes(status=Status(Code.OK, ""), parameters=ndarrays_to_parameters(deltas), num_examples=weight,
                    metrics={})
    content = compat.fitres_to_recorddict(fitres, keep_input=False)
    for name, record in reply.content.items():
        if not isinstance(record, ArrayRecord):
            content[name] = record
    return Message(content=content, reply_to=plain)


def _max_weight(context: Context) -> float:
    state = context.state.config_records.get(RECORD_KEY_STATE, ConfigRecord())
    return float(state.get("max_weight", 0.0)) or float("inf")  # type: ignore[arg-type]  # Flower types record values as a union; this one is a number or a list
