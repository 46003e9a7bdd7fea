"""Local training and evaluation loops, shared by simulation and deployment."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedmodel.data import Dataset
from fedmodel.data.augment import AugmentSpec, augment_batch
from fedmodel.metrics import classification_metrics
from fedmodel.privacy.release import EvaluationSums


def make_loader(data: Dataset, batch_size: int, *, seed: int, device: torch.device | None = None) -> DataLoader[Any]:
    """A shuffling loader over ``data``; its generator also drives Opacus' Poisson sampling."""
    del device  # tensors stay on the CPU; batches move to the device in the loop
    tensors = TensorDataset(torch.from_numpy(data.x), torch.from_numpy(data.y))
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(tensors, batch_size=batch_size, shuffle=True, generator=generator)


def train_epochs(
    model: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader[Any], *, epochs: int,
    device: torch.device, proximal_mu: float = 0.0, anchor: list[torch.Tensor] | None = None, lr: float = 0.0,
    augment: AugmentSpec | None = None, augment_seed: int = 0, background: float = 0.0,
) -> float:
    """Train ``epochs`` passes and return the mean loss over non-empty batches (NaN if none).

    Every batch is a step, empty Poisson batches included (DP-SGD then adds pure noise and the
    accountant counts the step). FedProx's proximal term is applied as a separate, data-independent
    step ``w -= lr * mu * (w - anchor)`` after each optimiser step, so it is post-processing of
    the private update and costs no privacy. Augmentation (random shifts, noise) transforms each
    sampled example on its own, so one example still affects one per-sample gradient: DP-SGD's
    clipping and accounting are unchanged.
    """
    generator = torch.Generator().manual_seed(augment_seed) if augment is not None and not augment.is_noop else None
    criterion = nn.CrossEntropyLoss()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    total, batches = 0.0, 0
    for _ in range(epochs):
        for xb, yb in loader:
            if generator is not None and augment is not None:
                xb = augment_batch(xb, augment, generator, background=background)
            xb, yb = xb.to(device), yb.to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(xb), yb)
            loss.backward()
            optimizer.step()
            if proximal_mu > 0 and anchor is not None:
                with torch.no_grad():
                    for p, a in zip(params, anchor, strict=True):
                        p.sub_(lr * proximal_mu * (p - a))
            if len(yb) > 0:
                total += float(loss.detach())
                batches += 1
    return total / batches if batches else math.nan


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset, *, device: torch.device, batch_size: int = 1024) -> dict[str, float]:
    """Mean cross-entropy ``loss`` plus accuracy, precision, recall and F1 (macro) on ``data``."""
    model.eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    loss = 0.0
    preds: list[np.ndarray] = []
    x = torch.from_numpy(data.x)
    y = torch.from_numpy(data.y)
    for start in range(0, len(data), batch_size):
        xb, yb = x[start:start + batch_size].to(device), y[start:start + batch_size].to(device)
        logits = model(xb)
        loss += float(criterion(logits, yb))
        preds.append(logits.argmax(dim=1).cpu().numpy())
    metrics = classification_metrics(data.y, np.concatenate(preds) if preds else np.empty(0, np.int64))
    metrics["loss"] = loss / max(len(data), 1)
    return metrics


@torch.no_grad()
def evaluation_sums(model: nn.Module, data: Dataset, *, device: torch.device, loss_clip: float,
                    batch_size: int = 1024) -> EvaluationSums:
    """The exact sums a DP evaluation release noises: rows, correct predictions, per-row losses clipped to [0, C].

    Each row's cross-entropy is clipped on its own (``reduction="none"``), so one row moves the loss
    sum by at most ``loss_clip`` whatever the model (see :func:`fedmodel.privacy.release.release_evaluation`).
    """
    model.eval()
    criterion = nn.CrossEntropyLoss(reduction="none")
    correct, loss = 0, 0.0
    x = torch.from_numpy(data.x)
    y = torch.from_numpy(data.y)
    for start in range(0, len(data), batch_size):
        xb, yb = x[start:start + batch_size].to(device), y[start:start + batch_size].to(device)
        logits = model(xb)
        per_row = criterion(logits.double(), yb).nan_to_num(nan=loss_clip, posinf=loss_clip)
        loss += float(per_row.clamp(0.0, loss_clip).sum())
        correct += int((logits.argmax(dim=1) == yb).sum())
    return EvaluationSums(len(data), correct, min(loss, len(data) * loss_clip), loss_clip)
