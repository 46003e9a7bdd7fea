"""Fixtures of the large-model tests (the tiny models and texts are in tests/conftest.py)."""

from __future__ import annotations

import socket

import pytest

import fedmodel.llm  # noqa: F401  (forces offline mode before transformers is imported)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every socket connection attempt is recorded and refused."""
    attempts: list[object] = []

    def refuse(self: socket.socket, address: object) -> None:
        attempts.append(address)
        raise OSError(f"test: network access attempted to {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts
