"""The strategy wrapper every run aggregates through: it screens replies and reports them, Flower aggregates.

:class:`ScreenedStrategy` holds any of Flower's Message-API strategies (FedAvg and the ones built on
it) and delegates to it, as Flower's own ``DifferentialPrivacy*`` wrappers do. Around the strategy's
calls it adds what fedmodel needs in every run:

* **node choice**: each round samples the nodes :meth:`ScreenedStrategy.connected_nodes` chose
  (see :mod:`fedmodel.server.strategy` for the waiting rules), so Flower's own sampling never waits for a
  node that died;
* **screening**: every train reply is checked against the arrays sent that round
  (:func:`fedmodel.server.validation.validate_update`, then any extra ``checks``); a rejected reply becomes
  an error reply saying why, so it never reaches the global model and the recorder reports it as
  that owner's failure;
* **recording**: the round's replies go to the :class:`~fedmodel.server.recorder.RunRecorder`; a round with
  fewer than ``min_replies`` valid replies raises :class:`~fedmodel.errors.BelowMinimumError` before
  anything is aggregated; the valid replies reach the strategy in owner order, so the aggregate
  never depends on the order they arrived in.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast

import torch
from fedmodel.server.recorder import RunRecorder, owner_of, records
from fedmodel.server.validation import validate_update
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord
from flwr.app.message.message import make_message
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Strategy

from fedmodel.errors import BelowMinimumError

log = logging.getLogger("fedmodel.server")

DEFAULT_MAX_EXAMPLES = 2**53
"""The example-count bound when none is given: only non-finite, non-positive or absurd counts are rejected."""

Reference = dict[str, torch.Tensor]
ReplyCheck = Callable[[Message, Reference, ConfigRecord], "str | None"]
"""An extra screening rule for a train reply that passed the standard ones.

Called with the reply, the global model sent that round and the train config sent with it; returns
why the reply must not be aggregated, or None.
"""
_MetricLayout = tuple[str, frozenset[str]]


class ScreenedStrategy(Strategy):
    """Screens every round's train replies, reports them to a :class:`RunRecorder`, then lets ``strategy`` aggregate.

    Parameters
    ----------
    strategy : FedAvg
        The Flower strategy that samples, configures and aggregates (FedAvg or one built on it).
    recorder : RunRecorder
        Where every round's replies, failures and rejections are reported.
    owner_order : Callable[[int | str], Any]
        Sort key of an owner id: the valid replies reach ``strategy`` in this order.
    max_update_norm : float or None
        Reject an update farther than this (L2) from the global model; None: no bound.
    max_examples : int
        The largest example count a reply may claim.
    expected_nodes : int
        Every owner's node: the run's first query waits for all of them.
    min_connected : int
        The fewest connected nodes a later round goes ahead with.
    min_replies : int
        The fewest valid replies a round aggregates.
    round_timeout : float or None
        Seconds the first query waits for every node; None: no limit.
    checks : Sequence[ReplyCheck]
        Extra screening rules, applied in order after the standard ones.
    """

    def __init__(self, strategy: FedAvg, *, recorder: RunRecorder, owner_order: Callable[[int | str], Any],
                 max_update_norm: float | None = None, max_examples: int = DEFAULT_MAX_EXAMPLES,
                 expected_nodes: int = 1, min_connected: int = 1, min_replies: int = 1,
                 round_timeout: float | None = None, checks: Sequence[ReplyCheck] = ()) -> None:
        if max_update_norm is not None and not max_update_norm > 0:
            raise ValueError(f"max_update_norm = {max_update_norm!r}: expected a number > 0 or None")
        if max_examples < 1:
            raise ValueError(f"max_examples = {max_examples!r}: expected an integer >= 1")
        if min(expected_nodes, min_connected, min_replies) < 1:
            raise ValueError(f"expected_nodes, min_connected, min_replies = {expected_nodes}, {min_connected}, "
                             f"{min_replies}: each must be >= 1")
        self.strategy = strategy
        self.recorder = recorder
        self.owner_order = owner_order
        self.max_update_norm = max_update_norm
        self.max_examples = max_examples
        self.expected_nodes = expected_nodes
        self.min_connected = min_connected
        self.min_replies = min_replies
        self.round_timeout = round_timeout
        self.checks = tuple(checks)
        self.aggregated: list[Message] = []
        """The valid replies the last :meth:`aggregate_train` handed to ``strategy`` (central DP counts them)."""
        self._reference: Reference | None = None
        self._round_config = ConfigRecord()
        self._started = False  # the first round (which waits for every node) is done

    def __repr__(self) -> str:
        return f"ScreenedStrategy({self.strategy!r})"

    def summary(self) -> None:
        """Log the screening settings, then the wrapped strategy's."""
        log.info("screening: max-update-norm %s, max examples %d, min replies %d", self.max_update_norm,
                 self.max_examples, self.min_replies)
        self.strategy.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Start the round in the recorder, choose the nodes, and let the strategy build the train messages."""
        self.recorder.round_started(server_round)
        self._reference = arrays.to_torch_state_dict()
        self._round_config = ConfigRecord(dict(config))
        nodes = self.connected_nodes(grid, server_round)
        return self.strategy.configure_train(server_round, arrays, config, _Connected(grid, nodes))  # type: ignore[arg-type]  # _Connected is a Grid that lists only the chosen nodes

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """The strategy's evaluate messages for the nodes connected now (none: no messages)."""
        nodes = sorted(grid.get_node_ids())
        if not nodes:
            return []
        return self.strategy.configure_evaluate(server_round, arrays, config, _Connected(grid, nodes))  # type: ignore[arg-type]  # _Connected is a Grid that lists only the chosen nodes

    def connected_nodes(self, grid: Grid, server_round: int, what: str | None = None) -> list[int]:
        """The nodes to sample: all of them once connected, or what is connected when the wait ends.

        The run's first query (the scaling statistics, else round 1) waits for every node; ``what``
        names the step in messages (default ``round N``). Raises BelowMinimumError when fewer than
        ``min_connected`` are connected after ``round_timeout``.
        """
        what = what or f"round {server_round}"
        deadline = None if self.round_timeout is None else time.monotonic() + self.round_timeout
        wanted = self.expected_nodes if not self._started else self.min_connected
        self._started = True
        logged = 0.0
        while True:
            nodes = sorted(grid.get_node_ids())
            if len(nodes) >= wanted or (deadline is None and len(nodes) >= self.min_connected):
                return nodes
            if deadline is not None and time.monotonic() >= deadline:
                if len(nodes) >= self.min_connected:
                    return nodes
                raise BelowMinimumError(
                    f"{what}: {len(nodes)} of {self.expected_nodes} owners' nodes connected after "
                    f"{self.round_timeout:g} s; min-clients needs {self.min_connected}"
                )
            if time.monotonic() - logged > 10:
                logged = time.monotonic()
                log.info("%s: waiting for nodes: %d of %d connected (minimum %d)", what, len(nodes),
                         self.expected_nodes, self.min_connected)
            time.sleep(1.0)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Screen and record the replies; the strategy's aggregate of the valid ones (in owner order)."""
        self.aggregated = []
        replies = self.screen_train_replies(server_round, list(replies))
        replies = self.recorder.train_replies(server_round, replies)
        valid = sorted((msg for msg in replies if not msg.has_error()), key=lambda m: self.owner_order(owner_of(m)))
        if len(valid) < self.min_replies:  # before anything touches the model
            raise BelowMinimumError(
                f"round {server_round}: {len(valid)} valid replies, min-clients needs {self.min_replies}: "
                f"{self.recorder.shortfall(server_round)}"
            )
        self.aggregated = list(valid)
        errors = [msg for msg in replies if msg.has_error()]  # in owner order: the sum never depends on arrival
        return self.strategy.aggregate_train(server_round, valid + errors)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Record the evaluation replies; the strategy's aggregate of them."""
        replies = list(replies)
        self.recorder.evaluate_replies(server_round, replies)
        return self.strategy.aggregate_evaluate(server_round, replies)

    # ------------------------------------------------------------------ screening
    def screen_train_replies(self, server_round: int, replies: list[Message]) -> list[Message]:
        """The replies with every invalid one replaced by an error reply saying why it was rejected."""
        reference = self._reference
        if reference is None:
            raise RuntimeError("aggregate_train before configure_train: no global model to check updates against")
        layout = _common_metric_layout(replies)
        out = []
        for msg in replies:
            reason = None if msg.has_error() else self.reply_problem(msg, reference, layout)
            if reason is None:
                out.append(msg)
                continue
            who = _sender(msg)
            self.recorder.rejected_reply(msg)  # the owner still spent privacy training it: keep its numbers
            log.warning("round %d: rejected the update of %s: %s", server_round, who, reason)
            out.append(make_message(metadata=msg.metadata,
                                    error=Error(code=ErrorCode.UNKNOWN, reason=f"{who}: update rejected: {reason}")))
        return out

    def reply_problem(self, msg: Message, reference: Reference, layout: _MetricLayout | None) -> str | None:
        """Why a (non-error) train reply must not be aggregated, or None.

        ``reference`` is the global model sent this round; ``layout`` the metric record most replies share.
        """
        key, weight_key = self.strategy.arrayrecord_key, self.strategy.weighted_by_key
        arrays, metrics = records(msg, ArrayRecord), records(msg, MetricRecord)
        if list(arrays) != [key]:
            return f"expected one ArrayRecord named {key!r}, got {sorted(arrays)}"
        if len(metrics) != 1:
            return f"expected one MetricRecord, got {len(metrics)}"
        name, record = next(iter(metrics.items()))
        if layout is not None and (name, frozenset(record)) != layout:
            missing, extra = sorted(layout[1] - set(record)), sorted(set(record) - layout[1])
            return (f"its metrics differ from the other replies' ({layout[0]!r}: missing {missing}, "
                    f"unexpected {extra}, record {name!r})")
        lists = sorted(k for k, v in record.items() if isinstance(v, list))
        if lists:
            return f"metrics {lists} are lists, expected numbers"
        if weight_key not in record:
            return f"no {weight_key!r} metric"
        try:
            owner_of(msg)
        except (KeyError, TypeError, ValueError, OverflowError):
            return "cannot tell which owner sent it (no valid 'owner')"
        weight = cast(float, record[weight_key])  # a number: lists were rejected above
        reason = validate_update(reference, arrays[key], weight, max_update_norm=self.max_update_norm,
                                 max_examples=self.max_examples)
        for check in self.checks:
            if reason is not None:
                break
            reason = check(msg, reference, self._round_config)
        return reason


class _Connected:
    """The grid as Flower's sampling sees it: only the nodes this round chose (so it never waits)."""

    def __init__(self, grid: Grid, nodes: list[int]) -> None:
        self._grid, self._nodes = grid, nodes

    def get_node_ids(self) -> list[int]:
        return list(self._nodes)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


def _common_metric_layout(replies: list[Message]) -> _MetricLayout | None:
    """The MetricRecord name and key set most replies share (Flower requires one layout for all)."""
    found = [records(msg, MetricRecord) for msg in replies if not msg.has_error()]
    layouts = Counter((name, frozenset(record)) for metrics in found if len(metrics) == 1
                      for name, record in metrics.items())
    return layouts.most_common(1)[0][0] if layouts else None


def _sender(msg: Message) -> str:
    """``owner N`` (the recorder reads the owner back from it) or ``node ID`` if the reply does not say."""
    try:
        return f"owner {owner_of(msg)}"
    except (KeyError, TypeError, ValueError, OverflowError, StopIteration):
        return f"node {msg.metadata.src_node_id}"
