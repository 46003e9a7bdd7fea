"""What a round moves per owner: the adapter's bytes against the full model's bytes."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from fedmodel.llm.lora import adapter_state, unwrap

_ADAPTER_MARKERS = ("lora_", "modules_to_save.")


@dataclass(frozen=True)
class PayloadSizes:
    """Tensor bytes of the adapter state and of the full model (each distinct tensor counted once).

    Attributes
    ----------
    adapter_bytes
        Bytes of :func:`~fedmodel.llm.lora.adapter_state`: what a LoRA owner sends.
    full_model_bytes
        Bytes of the base model's state (parameters and persistent buffers, tied weights once,
        head included): what full fine-tuning would send.
    """

    adapter_bytes: int
    full_model_bytes: int

    @property
    def ratio(self) -> float:
        """``adapter_bytes / full_model_bytes``."""
        return self.adapter_bytes / self.full_model_bytes


def payload_sizes(model: nn.Module) -> PayloadSizes:
    """Adapter bytes and full model bytes of a model from :func:`~fedmodel.llm.lora.add_lora`.

    Parameters
    ----------
    model
        The LoRA model, possibly wrapped by Opacus.

    Returns
    -------
    PayloadSizes
    """
    adapter = sum(t.numel() * t.element_size() for t in adapter_state(model).values())
    base = unwrap(model).get_base_model()  # type: ignore[operator]  # a peft model's get_base_model, reached through the unwrapped module
    seen: set[tuple[int, int]] = set()
    full = 0
    for name, tensor in base.state_dict().items():
        if any(marker in name for marker in _ADAPTER_MARKERS):
            continue  # the adapter and peft's trainable copy of the head; the original head counts
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if key in seen:
            continue
        seen.add(key)
        full += tensor.numel() * tensor.element_size()
    return PayloadSizes(adapter, full)
