"""Compute device choice: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``, checked against this machine."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedmodel.errors import DeviceError

if TYPE_CHECKING:
    import torch


def resolve_device(spec: str) -> torch.device:
    """The torch device for ``spec``; DeviceError if CUDA is asked for and not usable here."""
    import torch  # on first use: importing fedmodel's commands stays fast

    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device = {spec!r}: no CUDA GPU is usable on this machine "
                f"(torch {torch.__version__}, built with CUDA {torch.version.cuda or 'none'}); "
                "use --device cpu or auto"
            )
        index = int(spec.split(":", 1)[1]) if ":" in spec else 0
        count = torch.cuda.device_count()
        if index >= count:
            raise DeviceError(f"device = {spec!r}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")
        return torch.device(f"cuda:{index}")
    raise DeviceError(f"device = {spec!r}: expected auto | cpu | cuda | cuda:N")
