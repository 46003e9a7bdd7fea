"""LoRA adapters via peft: settings, wrapping a base model, and the adapter state that parties exchange.

Only the adapter matrices and the classification head train; the base weights stay frozen and are
never sent. :func:`adapter_state` returns those tensors under names free of Opacus' ``_module.``
prefix, so the state of a model wrapped for DP and of a plain one are interchangeable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from fedmodel.errors import ConfigError
from fedmodel.llm.errors import AdapterStateError
from fedmodel.llm.source import Task

if TYPE_CHECKING:
    from peft import PeftModel

DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {"bert": ("query", "value"), "gpt2": ("c_attn",)}
_CONV1D_TYPES = ("gpt2",)  # architectures whose targets are transformers' Conv1D (weights stored transposed)


@dataclass(frozen=True)
class LoraSettings:
    """LoRA hyper-parameters.

    Attributes
    ----------
    rank
        Rank ``r`` of the update ``B @ A``.
    alpha
        Scaling numerator: the update is multiplied by ``alpha / rank``.
    dropout
        Dropout on the adapter's input, in [0, 1).
    target_modules
        Names of the layers to adapt; None picks the architecture's default
        (BERT: query, value; GPT-2: c_attn).
    """

    rank: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.rank < 1:
            problems.append(f"lora rank = {self.rank}: expected an integer >= 1")
        if self.alpha < 1:
            problems.append(f"lora alpha = {self.alpha}: expected an integer >= 1")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"lora dropout = {self.dropout}: expected a number in [0, 1)")
        if self.target_modules is not None and not self.target_modules:
            problems.append("lora target_modules = (): expected at least one module name, or None for the default")
        if problems:
            raise ConfigError(problems)


def linear_module_names(model: nn.Module) -> list[str]:
    """Distinct last-component names of the model's Linear (and transformers Conv1D) layers, sorted."""
    from transformers.pytorch_utils import Conv1D

    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if name and isinstance(module, nn.Linear | Conv1D)})


def target_modules_for(model: nn.Module, settings: LoraSettings) -> tuple[str, ...]:
    """The layer names to adapt: ``settings.target_modules`` or the architecture's default.

    Raises
    ------
    ConfigError
        No default is known for the architecture, or a named module is not in the model; the
        message lists the model's Linear layer names to choose from.
    """
    model_type = str(getattr(getattr(model, "config", None), "model_type", type(model).__name__))
    available = linear_module_names(model)
    targets = settings.target_modules if settings.target_modules is not None else DEFAULT_TARGETS.get(model_type)
    if targets is None:
        raise ConfigError([f"lora target_modules: no default for architecture {model_type!r}; "
                           f"name some of its Linear layers: {', '.join(available)}"])
    unknown = [t for t in targets if t not in available]
    if unknown:
        raise ConfigError([f"lora target_modules: {', '.join(unknown)} not in the {model_type!r} model; "
                           f"its Linear layers are: {', '.join(available)}"])
    return tuple(targets)


def add_lora(model: nn.Module, settings: LoraSettings, *, seed: int = 0) -> PeftModel:
    """Freeze ``model`` and add LoRA adapters; a classification head stays trainable (peft ``modules_to_save``).

    Parameters
    ----------
    model
        A Hugging Face sequence classification or causal LM model (see :func:`~fedmodel.llm.source.load_base`).
    settings
        The LoRA hyper-parameters.
    seed
        Seeds the adapters' random initialisation, so every party builds the same initial adapter.

    Returns
    -------
    peft.PeftModel
        The wrapped model; its trainable parameters are the adapter (and head) only.
    """
    from peft import LoraConfig, TaskType, get_peft_model

    task = task_of(model)
    targets = target_modules_for(model, settings)
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS if task == "classification" else TaskType.CAUSAL_LM,
        r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout, target_modules=list(targets),
        fan_in_fan_out=getattr(model.config, "model_type", "") in _CONV1D_TYPES,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        peft_model = get_peft_model(model, config)
    if task == "classification" and not any("modules_to_save" in n for n, p in peft_model.named_parameters()
                                            if p.requires_grad):
        raise ConfigError([f"{type(model).__name__}: peft found no classification head to train"])
    return peft_model


def task_of(model: nn.Module) -> Task:
    """``"classification"`` or ``"causal-lm"`` for a Hugging Face or peft model (unwrapped from Opacus)."""
    model = unwrap(model)
    config = getattr(model, "peft_config", None)
    if config is not None:
        task_type = str(config["default"].task_type)
        if task_type.endswith("SEQ_CLS"):
            return "classification"
        if task_type.endswith("CAUSAL_LM"):
            return "causal-lm"
        raise ConfigError([f"peft task type {task_type}: expected SEQ_CLS or CAUSAL_LM"])
    name = type(model).__name__
    if name.endswith("ForSequenceClassification"):
        return "classification"
    if name.endswith(("ForCausalLM", "LMHeadModel")):
        return "causal-lm"
    raise ConfigError([f"{name}: expected a sequence classification or causal LM model"])


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside Opacus' ``GradSampleModule`` (the model itself when not wrapped)."""
    from opacus import GradSampleModule

    while isinstance(model, GradSampleModule):
        model = model._module
    return model


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter and head tensors (detached CPU copies), named as peft saves them, without ``_module.``.

    Parameters
    ----------
    model
        A model from :func:`add_lora`, possibly wrapped by Opacus.

    Returns
    -------
    dict of str to Tensor
        What an owner sends: no base weight is included.
    """
    from peft import get_peft_model_state_dict

    state: Mapping[str, torch.Tensor] = get_peft_model_state_dict(unwrap(model))
    return {name: tensor.detach().to("cpu", copy=True) for name, tensor in state.items()}


def load_adapter_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load an adapter state (from :func:`adapter_state`) into a model with the same adapter layout.

    Raises
    ------
    AdapterStateError
        Names or shapes differ from the model's adapter; the model is left unchanged.
    """
    from peft import set_peft_model_state_dict

    module = unwrap(model)
    expected = adapter_state(module)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k}: {tuple(state[k].shape)} instead of {tuple(v.shape)}" for k, v in expected.items()
              if k in state and state[k].shape != v.shape]
    problems = ([f"missing {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"] if missing else []) + \
        ([f"unexpected {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}"] if unexpected else []) + \
        shapes[:5]
    if problems:
        raise AdapterStateError("adapter state does not fit the model: " + "; ".join(problems))
    result: Any = set_peft_model_state_dict(module, dict(state))
    leftover = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k or "modules_to_save" in k]
    if leftover:
        raise AdapterStateError(f"adapter state not loaded: {', '.join(leftover[:5])}")
