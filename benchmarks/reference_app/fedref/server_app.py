"""fedref: a Flower ServerApp (Message API) running FedAvg with a server-side evaluation.

Besides what Flower's Opacus example does, it appends one JSON line per finished round (wall
time, test accuracy, replies, the largest epsilon an owner reported) to ``rounds-file``, so the
benchmark can read the time to the first round without parsing Flower's log.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedref.task import Settings, load_test_data, make_net, test

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run FedAvg for ``num-server-rounds`` rounds over the sampled owners."""
    settings = Settings.from_run_config(context.run_config)
    test_data = load_test_data(settings)
    net = make_net(settings)
    train_size = max(int(settings.owners * settings.fraction_train), 1)
    evaluate_size = max(int(settings.owners * settings.fraction_evaluate), 1)
    last_train: dict[str, float] = {}

    def train_metrics(records: list[RecordDict], weighting_key: str) -> MetricRecord:
        """Weighted mean train loss; the largest epsilon any owner reported (as the example prints it)."""
        metrics = [next(iter(r.metric_records.values())) for r in records]
        weight = sum(float(m[weighting_key]) for m in metrics)
        losses = [(float(m["train-loss"]), float(m[weighting_key])) for m in metrics if m["train-loss"] == m["train-loss"]]
        last_train.clear()
        last_train.update({
            "replies": float(len(metrics)),
            "train-loss": sum(loss * n for loss, n in losses) / weight if weight else float("nan"),
            "epsilon-max": max(float(m["epsilon"]) for m in metrics) if metrics else float("nan"),
        })
        return MetricRecord(dict(last_train))

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        net.load_state_dict(arrays.to_torch_state_dict())
        loss, accuracy = test(net, test_data)
        if server_round > 0 and settings.rounds_file:
            line = {"round": server_round, "time": time.time(), "accuracy": accuracy, "loss": loss, **last_train}
            with Path(settings.rounds_file).open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(line) + "\n")
        last_train.clear()  # a round whose replies all failed writes no "replies"
        return MetricRecord({"accuracy": accuracy, "loss": loss})

    strategy = FedAvg(
        fraction_train=settings.fraction_train, fraction_evaluate=settings.fraction_evaluate,
        min_train_nodes=train_size, min_evaluate_nodes=evaluate_size,
        min_available_nodes=max(train_size, evaluate_size), train_metrics_aggr_fn=train_metrics,
    )
    strategy.start(
        grid=grid, initial_arrays=ArrayRecord(net.state_dict()), num_rounds=settings.num_server_rounds,
        train_config=ConfigRecord({"lr": settings.lr}), evaluate_fn=evaluate,
    )
