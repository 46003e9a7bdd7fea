"""A messy breast-cancer file, cleaned at the owners, trains as well as the clean file.

The owners run the real ClientApp handlers (query for the DP scaling sums, then train) with real
Flower Messages and Contexts; the coordinator's part (public bounds, combining the sums, FedAvg) is
done here in a few lines. Both models are scored on the same clean rows that neither run saw.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import fedmodel.clients.app as client_app
import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, Metadata, RecordDict
from flwr.app.message.message import make_message

from fedmodel.config import RunConfig
from fedmodel.data import Dataset, federated_split
from fedmodel.data.bundled import _sklearn_data_dir
from fedmodel.data.cleaning import FeatureStats
from fedmodel.data.prepare import bounds_to_config, stats_to_config
from fedmodel.data.scaling import combine, public_bounds
from fedmodel.models import build_model
from fedmodel.training import evaluate

OWNERS, ROUNDS = 5, 5
FEATURES = [f"f{i}" for i in range(30)]


def breast_cancer() -> tuple[np.ndarray, np.ndarray]:
    with (_sklearn_data_dir() / "breast_cancer.csv").open(encoding="ascii") as fh:
        next(csv.reader(fh))
        raw = np.loadtxt(fh, delimiter=",")
    return raw[:, :-1], raw[:, -1].astype(np.int64)


def write_csv(path: Path, x: np.ndarray, y: np.ndarray, ids: np.ndarray | None = None) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow((["patient_id"] if ids is not None else []) + FEATURES + ["diagnosis"])
        for i in range(len(y)):
            cells = ["" if np.isnan(v) else repr(float(v)) for v in x[i]]
            out.writerow(([str(ids[i])] if ids is not None else []) + cells + [str(y[i])])
    return path


def make_messy(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """10% duplicated rows, 5% empty cells, 1% cells multiplied by 100, a numeric patient id column."""
    ids = 900_000 + np.arange(len(y))
    dup = rng.choice(len(y), len(y) // 10, replace=False)
    mx, my, mids = np.vstack([x, x[dup]]), np.concatenate([y, y[dup]]), np.concatenate([ids, ids[dup]])
    gaps = rng.random(mx.shape) < 0.05
    wild = (rng.random(mx.shape) < 0.01) & ~gaps
    mx = mx.copy()
    mx[gaps] = np.nan
    mx[wild] *= 100
    order = rng.permutation(len(my))
    return mx[order], my[order], mids[order]


def message(content: RecordDict, message_type: str, group: str) -> Message:
    meta = Metadata(run_id=1, message_id=f"m{group}{message_type}", src_node_id=0, dst_node_id=7,
                    reply_to_message_id="", group_id=group, created_at=time.time(), ttl=600.0,
                    message_type=message_type)
    return make_message(metadata=meta, content=content)


def run_federation(config: RunConfig) -> tuple[dict[str, torch.Tensor], FeatureStats, list[Context]]:
    """Query every owner for DP sums, then FedAvg over ROUNDS rounds of real ClientApp train calls."""
    split = federated_split(config)
    contexts = [Context(run_id=1, node_id=7, node_config={"partition-id": i, "num-partitions": OWNERS},
                        state=RecordDict(), run_config=config.to_mapping()) for i in range(OWNERS)]
    bounds = public_bounds(split.test().x.astype(np.float64))
    query = ConfigRecord({"query": "feature-sums", "scaling-noise": config.scaling_noise,
                          **bounds_to_config(bounds), **split.schema.to_config()})
    releases = []
    for ctx in contexts:
        reply = client_app.query(message(RecordDict({"config": query}), MessageType.QUERY, "0"), ctx)
        assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
        releases.append(np.asarray(reply.content["metrics"]["sums"]).reshape(3, -1))
    fed = combine(releases, bounds, config.scaling_noise)
    stats = FeatureStats(count=float(fed.count.mean()), mean=fed.mean, std=fed.std, minimum=bounds.lo,
                         maximum=bounds.hi)
    model = build_model("logreg", split.schema.num_features, 2, seed=config.seed)
    weights = model.state_dict()
    for server_round in range(1, ROUNDS + 1):
        record = ConfigRecord({"server-round": server_round, **split.schema.to_config(),
                               **stats_to_config(stats, None)})
        updates, sizes = [], []
        for ctx in contexts:
            content = RecordDict({"arrays": ArrayRecord(weights), "config": record})
            reply = client_app.train(message(content, MessageType.TRAIN, str(server_round)), ctx)
            assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
            updates.append(reply.content["arrays"].to_torch_state_dict())
            sizes.append(float(reply.content["metrics"]["num-examples"]))
        share = np.asarray(sizes) / sum(sizes)
        weights = {k: sum(u[k] * float(a) for u, a in zip(updates, share, strict=True)) for k in weights}
    return weights, stats, contexts


def holdout_accuracy(weights: dict[str, torch.Tensor], stats: FeatureStats, x: np.ndarray, y: np.ndarray) -> float:
    model = build_model("logreg", x.shape[1], 2)
    model.load_state_dict(weights)
    scaled = ((x - stats.mean) / stats.std).astype(np.float32)
    data = Dataset("holdout", scaled, y, ("0", "1"), tuple(FEATURES))
    return evaluate(model, data, device=torch.device("cpu"))["accuracy"]


def test_messy_file_cleaned_at_the_owners_trains_within_two_points_of_the_clean_file(tmp_path: Path) -> None:
    """The band is on the mean over three seeds (split, holdout, mess, noise): one holdout row is ~0.9 points."""
    x, y = breast_cancer()
    accuracies = []
    for seed in (0, 1, 2):
        rng = np.random.default_rng(seed)
        holdout = np.zeros(len(y), dtype=bool)
        holdout[rng.choice(len(y), len(y) // 5, replace=False)] = True
        clean = write_csv(tmp_path / f"clean-{seed}.csv", x[~holdout], y[~holdout])
        messy = write_csv(tmp_path / f"messy-{seed}.csv", *make_messy(x[~holdout], y[~holdout], rng))
        common = {"dataset": "file", "label": "diagnosis", "clients": OWNERS, "rounds": ROUNDS, "epsilon": 3.0,
                  "scaling": "zscore", "seed": seed}
        clean_config = RunConfig.from_mapping({**common, "data-path": str(clean)})
        messy_config = RunConfig.from_mapping({**common, "data-path": str(messy), "missing": "median",
                                               "duplicates": "drop", "outliers": "clip",
                                               "id-columns": "patient_id"})
        clean_weights, clean_stats, _ = run_federation(clean_config)
        messy_weights, messy_stats, contexts = run_federation(messy_config)
        accuracies.append((holdout_accuracy(clean_weights, clean_stats, x[holdout], y[holdout]),
                           holdout_accuracy(messy_weights, messy_stats, x[holdout], y[holdout])))
        # the id column never reached the model: 30 inputs, not 31
        assert messy_weights["0.weight"].shape == (2, 30)
        for ctx in contexts:
            privacy = client_app.load_privacy(ctx)
            assert privacy.other == [(messy_config.scaling_noise, 1.0, 1)]  # the sums were charged
            assert privacy.epsilon(messy_config.delta) <= messy_config.epsilon
    clean_mean = float(np.mean([a for a, _ in accuracies]))
    messy_mean = float(np.mean([b for _, b in accuracies]))
    assert clean_mean > 0.85, accuracies  # the clean baseline itself is sound
    print(f"holdout accuracy, clean vs messy file: {accuracies}; means {clean_mean:.4f} vs {messy_mean:.4f}")
    assert messy_mean >= clean_mean - 0.02, accuracies
