"""The rounds of a run from any round on: Flower's ``Strategy.start`` loop, with time-outs, retries, checkpoints.

``Strategy.start`` always begins at round 1 and gives replies that miss its time-out no name; this
loop is the same sequence of strategy calls (configure and aggregate train, configure and aggregate
evaluate, central evaluation), starting at ``first_round``, telling the recorder which nodes did not
answer within ``round-timeout``, retrying a round that fell below ``min-clients`` when
``below-minimum = retry``, and calling ``after_round`` (the checkpoint) when a round is complete.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.serverapp import Grid

from fedmodel.config import RETRY_ATTEMPTS, RunConfig
from fedmodel.errors import AllClientsFailedError, BelowMinimumError

log = logging.getLogger("fedmodel.server")

EvaluateFn = Callable[[int, ArrayRecord], MetricRecord | None]
AfterRound = Callable[[int, ArrayRecord], None]


def run_rounds(strategy: object, grid: Grid, config: RunConfig, *, arrays: ArrayRecord, first_round: int,
               train_config: ConfigRecord, evaluate_config: ConfigRecord, evaluate_fn: EvaluateFn,
               after_round: AfterRound) -> ArrayRecord:
    """Rounds ``first_round`` .. ``config.rounds``; the final global arrays.

    ``strategy`` is one of :func:`server.strategy.build_strategy`'s (it has a ``recorder``).
    Raises BelowMinimumError or AllClientsFailedError when a round cannot be completed.
    """
    timeout = config.round_timeout or None
    for server_round in range(first_round, config.rounds + 1):
        log.info("[ROUND %d/%d]", server_round, config.rounds)
        arrays = _train(strategy, grid, config, server_round, arrays, train_config, timeout)
        replies = grid.send_and_receive(
            list(strategy.configure_evaluate(server_round, arrays, evaluate_config, grid)),  # type: ignore[attr-defined]
            timeout=timeout)
        strategy.aggregate_evaluate(server_round, replies)  # type: ignore[attr-defined]
        evaluate_fn(server_round, arrays)
        after_round(server_round, arrays)
    return arrays


def _train(strategy: object, grid: Grid, config: RunConfig, server_round: int, arrays: ArrayRecord,
           train_config: ConfigRecord, timeout: float | None) -> ArrayRecord:
    attempts = RETRY_ATTEMPTS if config.below_minimum == "retry" else 1
    recorder = strategy.recorder  # type: ignore[attr-defined]
    for attempt in range(1, attempts + 1):
        try:
            messages = list(strategy.configure_train(server_round, arrays, train_config, grid))  # type: ignore[attr-defined]
            replies = list(grid.send_and_receive(messages, timeout=timeout))
            recorder.train_sent(server_round, messages, replies)
            aggregated, _ = strategy.aggregate_train(server_round, replies)  # type: ignore[attr-defined]
            return aggregated if aggregated is not None else arrays
        except (BelowMinimumError, AllClientsFailedError) as exc:
            if attempt == attempts:
                if attempts > 1:
                    raise type(exc)(f"{exc} (tried {attempts} times; below-minimum = retry)") from None
                raise
            log.warning("round %d, attempt %d of %d: %s; trying the round again", server_round, attempt,
                        attempts, exc)
            recorder.folder.event("retry", round=server_round, attempt=attempt, reason=str(exc))
    raise AssertionError("unreachable")  # pragma: no cover
