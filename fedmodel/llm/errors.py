"""Errors of the large-model path, all :class:`~fedmodel.errors.FedModelError` subclasses."""

from __future__ import annotations

from pathlib import Path

from fedmodel.errors import FedModelError


class ModelSourceError(FedModelError):
    """A local model folder cannot be used; the message names the folder and the missing or bad file."""

    exit_code = 2


class FingerprintMismatch(ModelSourceError):
    """The base model's weights differ from the ones the coordinator announced."""

    def __init__(self, path: Path, expected: str, actual: str) -> None:
        self.path, self.expected, self.actual = path, expected, actual
        super().__init__(
            f"{path}: the base model's weights have fingerprint {actual}, but the run expects {expected}; "
            "every party must use the same base model files (compare with `fingerprint`)"
        )


class AdapterStateError(FedModelError):
    """An adapter state does not fit the model: names or shapes differ (listed in the message)."""

    exit_code = 2
