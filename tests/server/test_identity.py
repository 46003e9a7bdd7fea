"""Where the ServerApp finds the coordinator's registry: the SuperLink's environment, else nowhere."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fedmodel.server.identity import NodeNames

from fedmodel.deployment.coordinator import REGISTRY_ENV, NodeEntry
from fedmodel.errors import DeploymentError


def test_the_registry_comes_from_the_environment_and_is_read_again_for_a_new_node(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REGISTRY_ENV, raising=False)
    assert NodeNames.from_environment() is None  # simulation, --insecure: names stay what replies say
    registry = tmp_path / "nodes.json"
    monkeypatch.setenv(REGISTRY_ENV, str(registry))
    names = NodeNames.from_environment()
    assert names is not None and names.path == registry
    assert names.name(5) == "node 5"  # no registry yet: nobody is admitted
    registry.write_text(json.dumps({"nodes": [NodeEntry("site-a", 5, "a" * 64, "k", "allowed").to_record()]}))
    assert names.name(5) == "site-a"
    registry.write_text("{broken")
    with pytest.raises(DeploymentError, match="nodes.json"):  # an unreadable registry stops the run, named
        names.name(6)
