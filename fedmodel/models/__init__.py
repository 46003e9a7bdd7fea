"""DP-compatible models by name (no BatchNorm), built identically by the coordinator and the owners."""

from __future__ import annotations

import copy
from functools import lru_cache

import torch
from torch import nn

from fedmodel.errors import ConfigError


def build_model(name: str, num_features: int, num_classes: int, *, seed: int = 0) -> nn.Module:
    """Build model ``name`` with deterministic initial weights for ``seed``.

    ``logreg``: multinomial logistic regression. ``mlp``: one hidden layer of 64 units with tanh
    (bounded activations suit clipped, noisy DP-SGD updates better than ReLU).
    """
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        if name == "logreg":
            model: nn.Module = nn.Sequential(nn.Linear(num_features, num_classes))
        elif name == "mlp":
            model = nn.Sequential(nn.Linear(num_features, 64), nn.Tanh(), nn.Linear(64, num_classes))
        else:
            raise ConfigError([f"model = {name!r}: expected logreg | mlp"])
    finally:
        torch.random.set_rng_state(generator_state)
    return model


def model_to_load(name: str, num_features: int, num_classes: int) -> nn.Module:
    """A fresh model ``name`` whose weights are about to be replaced (an owner loading the global model).

    A copy of one model built per process: building one reseeds torch, which costs milliseconds,
    and a cohort node builds one per owner per round. The global random state is left as it was.
    """
    return copy.deepcopy(_template(name, num_features, num_classes))


@lru_cache(maxsize=8)
def _template(name: str, num_features: int, num_classes: int) -> nn.Module:
    return build_model(name, num_features, num_classes)
