"""The rounds of a run from any round on: Flower's ``Strategy.start`` loop, with time-outs, retries, checkpoints.

``Strategy.start`` always begins at round 1 and gives replies that miss its time-out no name; this
loop is the same sequence of strategy calls (configure and aggregate train, configure and aggregate
evaluate, central evaluation), starting at ``first_round``, telling the recorder which nodes did not
answer within ``round-timeout``, retrying a round that fell below ``min-clients`` when
``below-minimum = retry``, and calling ``after_round`` (the checkpoint) when a round is complete.
The scaling-statistics query before round 1 (``fedmodel.server.stats``) retries the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from fedmodel.server.cohorts import owner_replies, round_config
from fedmodel.server.secagg import secure_train
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.serverapp import Grid

from fedmodel.config import RETRY_ATTEMPTS, RunConfig
from fedmodel.errors import AllClientsFailedError, BelowMinimumError
from fedmodel.report.run_folder import RunFolder

log = logging.getLogger("fedmodel.server")

EvaluateFn = Callable[[int, ArrayRecord], MetricRecord | None]
AfterRound = Callable[[int, ArrayRecord], None]
T = TypeVar("T")


def run_rounds(strategy: object, grid: Grid, config: RunConfig, *, arrays: ArrayRecord, first_round: int,
               train_config: ConfigRecord, evaluate_config: ConfigRecord, evaluate_fn: EvaluateFn,
               after_round: AfterRound) -> ArrayRecord:
    """Rounds ``first_round`` .. ``config.rounds``; the final global arrays.

    ``strategy`` is one of :func:`fedmodel.server.strategy.build_strategy`'s (it has a ``recorder``).
    Raises BelowMinimumError or AllClientsFailedError when a round cannot be completed.
    """
    timeout = config.round_timeout or None
    for server_round in range(first_round, config.rounds + 1):
        log.info("[ROUND %d/%d]", server_round, config.rounds)
        arrays = _train(strategy, grid, config, server_round, arrays, train_config, timeout)
        sent = round_config(config, evaluate_config, server_round)
        replies = list(grid.send_and_receive(
            list(strategy.configure_evaluate(server_round, arrays, sent, grid)),  # type: ignore[attr-defined]  # the strategy is a ScreenedStrategy (its recorder and message methods)
            timeout=timeout))
        strategy.aggregate_evaluate(server_round, owner_replies(config, replies))  # type: ignore[attr-defined]  # the strategy is a ScreenedStrategy (its recorder and message methods)
        evaluate_fn(server_round, arrays)
        after_round(server_round, arrays)
    return arrays


def _train(strategy: object, grid: Grid, config: RunConfig, server_round: int, arrays: ArrayRecord,
           train_config: ConfigRecord, timeout: float | None) -> ArrayRecord:
    recorder = strategy.recorder  # type: ignore[attr-defined]  # the strategy is a ScreenedStrategy (its recorder and message methods)

    def attempt() -> ArrayRecord:
        if config.secure_aggregation:  # Flower's SecAgg+ for the train stage (fedmodel.server.secagg)
            return secure_train(strategy, grid, config, server_round, arrays, train_config, timeout)
        sent = round_config(config, train_config, server_round)
        messages = list(strategy.configure_train(server_round, arrays, sent, grid))  # type: ignore[attr-defined]  # the strategy is a ScreenedStrategy (its recorder and message methods)
        replies = list(grid.send_and_receive(messages, timeout=timeout))
        recorder.train_sent(server_round, messages, replies)  # nodes: who was asked, who answered
        aggregated, _ = strategy.aggregate_train(server_round, owner_replies(config, replies))  # type: ignore[attr-defined]  # the strategy is a ScreenedStrategy (its recorder and message methods)
        return aggregated if aggregated is not None else arrays

    return with_retries(config, recorder.folder, f"round {server_round}", attempt, server_round=server_round)


def with_retries(config: RunConfig, folder: RunFolder, what: str, attempt: Callable[[], T], *,
                 server_round: int) -> T:
    """``attempt()``; while it falls below the minimum, again (up to 3 tries) if ``below-minimum = retry``.

    ``what`` names the step in the log (``round 2``, ``scaling statistics``); each retry is a
    ``retry`` event in ``folder``'s progress with ``server_round`` (0 before round 1). Raises the
    last BelowMinimumError or AllClientsFailedError.
    """
    attempts = RETRY_ATTEMPTS if config.below_minimum == "retry" else 1
    for number in range(1, attempts + 1):
        try:
            return attempt()
        except (BelowMinimumError, AllClientsFailedError) as exc:
            if number == attempts:
                if attempts > 1:
                    raise type(exc)(f"{exc} (tried {attempts} times; below-minimum = retry)") from None
                raise
            log.warning("%s, attempt %d of %d: %s; trying again", what, number, attempts, exc)
            folder.event("retry", round=server_round, attempt=number, reason=str(exc))
    raise AssertionError("unreachable")  # pragma: no cover
