"""One owner's round of LoRA fine-tuning, with Opacus DP-SGD or without privacy.

DP uses :class:`~fedmodel.privacy.OpacusDPSGD` unchanged: ``make_private`` in hooks mode over the
trainable (adapter and head) parameters, Poisson sampling, the noise multiplier calibrated once for
the whole budget and the owner's cumulative accounting. Logical batches larger than
``max_physical_batch_size`` go through Opacus' ``BatchMemoryManager``.

An empty Poisson batch is a step like any other (the accountant counts it and Opacus adds pure
noise). Hugging Face models cannot run on 0 rows, so such a batch runs a one-row placeholder of
padding tokens with its loss multiplied by zero: its per-example gradient is exactly zero and
the update is the same as an empty batch's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedmodel.errors import ConfigError, DataValidationError
from fedmodel.llm.batches import forward_logits, per_example_loss, placeholder_batch
from fedmodel.llm.encoding import TokenizedShard
from fedmodel.llm.lora import task_of, unwrap
from fedmodel.llm.source import Task
from fedmodel.privacy import NoPrivacy, OpacusDPSGD, OwnerPrivacyState, PrivacyMechanism, plan_for_owner
from fedmodel.privacy.randomness import plain_seed

HEAD_LR_FACTOR = 100.0
"""A run's head learning rate when none is given: this many times the adapters' (see ``head_lr``)."""


@dataclass(frozen=True)
class LoraTrainSettings:
    """Hyper-parameters of local LoRA training and, for DP, of the whole run's privacy plan.

    Attributes
    ----------
    batch_size
        Logical batch size; DP samples each example with probability ``1 / ceil(n / batch_size)``.
    max_physical_batch_size
        Most examples in one forward pass (larger logical batches are split, one step per logical batch).
    lr
        AdamW learning rate of the LoRA adapters.
    head_lr
        AdamW learning rate of the classification head (None: ``lr``). Under DP noise Adam moves every
        coordinate by about ``lr`` per step, so adapters need a small rate while the head, which
        carries most of the gradient signal, needs a larger one.
    epochs
        Local epochs per round.
    rounds, epsilon, delta, max_grad_norm
        The run's rounds, the owner's budget (epsilon, delta) and the clipping norm; used to
        calibrate the noise once, on the owner's first DP round.
    """

    batch_size: int = 32
    max_physical_batch_size: int = 32
    lr: float = 5e-4
    head_lr: float | None = None
    epochs: int = 1
    rounds: int = 1
    epsilon: float = 3.0
    delta: float = 1e-5
    max_grad_norm: float = 1.0

    def __post_init__(self) -> None:
        checks = [
            (self.batch_size >= 1, f"batch_size = {self.batch_size}: expected an integer >= 1"),
            (self.max_physical_batch_size >= 1,
             f"max_physical_batch_size = {self.max_physical_batch_size}: expected an integer >= 1"),
            (self.lr > 0 and math.isfinite(self.lr), f"lr = {self.lr}: expected a number > 0"),
            (self.head_lr is None or (self.head_lr > 0 and math.isfinite(self.head_lr)),
             f"head_lr = {self.head_lr}: expected a number > 0"),
            (self.epochs >= 1, f"epochs = {self.epochs}: expected an integer >= 1"),
            (self.rounds >= 1, f"rounds = {self.rounds}: expected an integer >= 1"),
            (self.epsilon > 0 and math.isfinite(self.epsilon), f"epsilon = {self.epsilon}: expected a number > 0"),
            (0 < self.delta < 1, f"delta = {self.delta}: expected a number in (0, 1)"),
            (self.max_grad_norm > 0 and math.isfinite(self.max_grad_norm),
             f"max_grad_norm = {self.max_grad_norm}: expected a number > 0"),
        ]
        problems = [text for ok, text in checks if not ok]
        if problems:
            raise ConfigError(problems)


def train_lora_round(
    model: nn.Module, shard: TokenizedShard, settings: LoraTrainSettings, *, privacy: OwnerPrivacyState | None,
    seed: int | None, device: torch.device, owner: int | str = 0, secure_mode: bool = False,
) -> dict[str, float]:
    """Train the adapter (and head) of ``model`` in place on the owner's shard for ``settings.epochs`` epochs.

    Parameters
    ----------
    model
        A model from :func:`~fedmodel.llm.lora.add_lora`; it is moved to ``device``.
    shard
        The owner's tokenised examples (with labels for classification).
    settings
        Training and privacy-plan hyper-parameters.
    privacy
        The owner's cumulative privacy state (its plan is calibrated on first use), or None to train
        without DP.
    seed
        Drives batch sampling, dropout and (unless ``secure_mode``) the DP noise: a simulation's round
        is reproducible from it. None (a deployed node): the DP noise and Poisson sampling come from
        the OS CSPRNG, dropout from a fresh OS seed (:mod:`fedmodel.privacy.randomness`).
    device
        Where to train.
    owner
        The owner's id, for messages.
    secure_mode
        Opacus' cryptographically secure noise (then ``seed`` does not fix the noise).

    Returns
    -------
    dict of str to float
        ``num-examples``, ``train-loss`` and, with DP, the owner's cumulative ``epsilon`` and plan.

    Raises
    ------
    PrivacyBudgetExceeded
        The round would exceed the owner's budget; nothing was trained.
    """
    task = task_of(model)
    if len(shard) == 0:
        raise DataValidationError(f"owner {owner}: the shard holds no training examples")
    if task == "classification" and shard.labels is None:
        raise DataValidationError(f"owner {owner}: a classification shard needs labels")
    model.to(device)
    model.train()  # Opacus refuses a model in eval mode (after an evaluation in the same process, say)
    optimizer = torch.optim.AdamW(_param_groups(model, settings), weight_decay=0.0)
    loader = _loader(shard, task, settings.batch_size, plain_seed(seed))
    mechanism: PrivacyMechanism
    if privacy is None:
        mechanism = NoPrivacy()
    else:
        if privacy.plan is None:
            privacy.plan = plan_for_owner(
                num_examples=len(shard), batch_size=settings.batch_size, local_epochs=settings.epochs,
                rounds=settings.rounds, epsilon=settings.epsilon, delta=settings.delta,
                max_grad_norm=settings.max_grad_norm,
            )
        mechanism = OpacusDPSGD(privacy, owner, noise_seed=seed, secure_mode=secure_mode)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(plain_seed(seed))
        train_model, train_optimizer, train_loader = mechanism.wrap(model, optimizer, loader)
        try:
            model.train()
            if privacy is None:
                loss = _train_plain(train_model, train_optimizer, train_loader, task, settings, device)
            else:
                loss = _train_private(train_model, train_optimizer, train_loader, task, settings, device)
        finally:
            if train_model is not model:
                train_model.cleanup()  # type: ignore[operator]  # Opacus hooks off, so the model can be wrapped again
    metrics = {"num-examples": float(len(shard)), "train-loss": loss}
    metrics.update(mechanism.finish())
    return metrics


def _param_groups(model: nn.Module, settings: LoraTrainSettings) -> list[dict[str, Any]]:
    """The adapters at ``lr``; the classification head (peft ``modules_to_save``) at ``head_lr``."""
    head = [p for n, p in model.named_parameters() if p.requires_grad and "modules_to_save" in n]
    rest = [p for n, p in model.named_parameters() if p.requires_grad and "modules_to_save" not in n]
    groups: list[dict[str, Any]] = [{"params": rest, "lr": settings.lr}]
    if head:
        groups.append({"params": head, "lr": settings.head_lr if settings.head_lr is not None else settings.lr})
    return [g for g in groups if g["params"]]


def _loader(shard: TokenizedShard, task: Task, batch_size: int, seed: int) -> DataLoader[Any]:
    tensors = [shard.input_ids, shard.attention_mask] + ([shard.labels] if task == "classification" else [])
    dataset = TensorDataset(*[t for t in tensors if t is not None])
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))


def _batch_loss(model: nn.Module, batch: list[torch.Tensor], task: Task,
                device: torch.device) -> tuple[torch.Tensor, int]:
    """Mean per-example loss of a batch and its row count; a 0-row batch gives a zero-weighted placeholder."""
    input_ids, attention_mask = batch[0].to(device), batch[1].to(device)
    labels = batch[2].to(device) if task == "classification" else None
    inner = unwrap(model)
    model_type = str(getattr(inner.config, "model_type", ""))
    if len(input_ids) == 0:
        pad = getattr(inner.config, "pad_token_id", None)
        ids, mask = placeholder_batch(input_ids, int(pad) if pad is not None else 0)
        return forward_logits(model, model_type, ids, mask).sum() * 0.0, 0
    logits = forward_logits(model, model_type, input_ids, attention_mask)
    losses, _ = per_example_loss(task, logits, input_ids, attention_mask, labels)
    return losses.mean(), len(input_ids)


def _train_private(model: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader[Any], task: Task,
                   settings: LoraTrainSettings, device: torch.device) -> float:
    from opacus.utils.batch_memory_manager import BatchMemoryManager

    total, rows = 0.0, 0
    for _ in range(settings.epochs):
        with BatchMemoryManager(data_loader=loader, max_physical_batch_size=settings.max_physical_batch_size,
                                optimizer=optimizer) as physical:
            for batch in physical:
                loss, n = _batch_loss(model, batch, task, device)
                loss.backward()
                optimizer.step()  # Opacus steps (and the accountant counts) once per logical batch
                optimizer.zero_grad(set_to_none=True)
                total, rows = total + float(loss.detach()) * n, rows + n
    return total / rows if rows else math.nan


def _train_plain(model: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader[Any], task: Task,
                 settings: LoraTrainSettings, device: torch.device) -> float:
    total, rows = 0.0, 0
    for _ in range(settings.epochs):
        for batch in loader:
            optimizer.zero_grad(set_to_none=True)
            size = len(batch[0])
            for start in range(0, size, settings.max_physical_batch_size):
                chunk = [t[start:start + settings.max_physical_batch_size] for t in batch]
                loss, n = _batch_loss(model, chunk, task, device)
                (loss * (n / size)).backward()  # the logical batch's mean loss, accumulated
                total, rows = total + float(loss.detach()) * n, rows + n
            optimizer.step()
    return total / rows if rows else math.nan
