"""fedref: the model, the data and the train/test loops of the reference app.

The model and the rows are fedmodel's (``build_model`` and ``federated_split`` on the same run
settings), so fedmodel and this app train the same model on identical shards and test on the
same held-out split; everything else is written as Flower's Opacus example writes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedmodel.config import PartitionSpec, RunConfig
from fedmodel.data import federated_split
from fedmodel.models import build_model


@dataclass(frozen=True)
class Settings:
    """The app's run config (kebab-case keys in pyproject.toml), parsed once."""

    num_server_rounds: int
    owners: int
    fraction_train: float
    fraction_evaluate: float
    dataset: str
    partition: str
    seed: int
    test_fraction: float
    model: str
    batch_size: int
    lr: float
    local_epochs: int
    max_grad_norm: float
    target_delta: float
    noise_multipliers: dict[int, float]
    rounds_file: str

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> Settings:
        return cls(
            num_server_rounds=int(run_config["num-server-rounds"]), owners=int(run_config["owners"]),
            fraction_train=float(run_config["fraction-train"]),
            fraction_evaluate=float(run_config["fraction-evaluate"]),
            dataset=str(run_config["dataset"]), partition=str(run_config["partition"]),
            seed=int(run_config["seed"]), test_fraction=float(run_config["test-fraction"]),
            model=str(run_config["model"]), batch_size=int(run_config["batch-size"]), lr=float(run_config["lr"]),
            local_epochs=int(run_config["local-epochs"]), max_grad_norm=float(run_config["max-grad-norm"]),
            target_delta=float(run_config["target-delta"]),
            noise_multipliers=parse_noise_multipliers(str(run_config["noise-multipliers"])),
            rounds_file=str(run_config["rounds-file"]),
        )

    def split_config(self, owners: int) -> RunConfig:
        """The fedmodel RunConfig whose ``federated_split`` gives this app's rows."""
        return RunConfig(dataset=self.dataset, clients=owners, partition=PartitionSpec.parse(self.partition),
                         seed=self.seed, test_fraction=self.test_fraction)


def parse_noise_multipliers(text: str) -> dict[int, float]:
    """``"5:1.12,4:1.20"`` -> ``{5: 1.12, 4: 1.20}`` (batches per epoch -> noise multiplier)."""
    out: dict[int, float] = {}
    for item in text.split(","):
        steps, _, sigma = item.partition(":")
        if not steps.strip().isdigit() or not sigma:
            raise ValueError(f"noise-multipliers = {text!r}: expected STEPS:SIGMA,... as in 5:1.12")
        out[int(steps)] = float(sigma)
    return out


def load_data(settings: Settings, partition_id: int, num_partitions: int) -> TensorDataset:
    """This owner's training rows (fedmodel's partition ``partition_id``)."""
    shard = federated_split(settings.split_config(num_partitions)).owner(partition_id)
    return TensorDataset(torch.from_numpy(shard.x), torch.from_numpy(shard.y))


def load_test_data(settings: Settings) -> TensorDataset:
    """The coordinator's held-out test rows."""
    test = federated_split(settings.split_config(settings.owners)).test()
    return TensorDataset(torch.from_numpy(test.x), torch.from_numpy(test.y))


def make_net(settings: Settings) -> nn.Module:
    """fedmodel's model for the data set, with the same initial weights on every side."""
    schema = federated_split(settings.split_config(settings.owners)).schema
    return build_model(settings.model, schema.num_features, len(schema.labels), seed=settings.seed)


def train(net: nn.Module, train_loader: DataLoader[Any], optimizer: torch.optim.Optimizer, epochs: int) -> float:
    """Local epochs over the (Poisson) loader; the mean loss over non-empty batches."""
    criterion = nn.CrossEntropyLoss()
    net.train()
    total, batches = 0.0, 0
    for _ in range(epochs):
        for images, labels in train_loader:
            optimizer.zero_grad()
            loss = criterion(net(images), labels)
            loss.backward()
            optimizer.step()
            if len(labels):
                total, batches = total + float(loss.detach()), batches + 1
    return total / batches if batches else float("nan")


@torch.no_grad()
def test(net: nn.Module, data: TensorDataset) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``net`` on ``data``."""
    net.eval()
    x, y = data.tensors
    logits = net(x)
    loss = float(nn.functional.cross_entropy(logits, y))
    accuracy = float((logits.argmax(dim=1) == y).float().mean())
    return loss, accuracy
