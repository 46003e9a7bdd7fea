"""Where the workers run, checked before Flower starts: no Ray cluster needed for these tests."""

from __future__ import annotations

import importlib
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fedmodel.simulations.cluster import RayClusterError, RayNode, assess, check_cluster
from fedmodel.simulations.runner import _private_ray_root, federation_settings
from typer.testing import CliRunner

from fedmodel import __version__
from fedmodel.cli import app
from fedmodel.config import RunConfig
from fedmodel.errors import ConfigError
from fedmodel.runs import flower_env, free_port

simulate_module = importlib.import_module("fedmodel.cli.simulate")


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[[list[str]], tuple[Any, float]]:
    """``fedmodel simulate`` through the real runner; (result, seconds)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "300")

    def run(args: list[str]) -> tuple[Any, float]:
        start = time.monotonic()
        result = CliRunner().invoke(app, ["simulate", "--clients", "2", "--rounds", "1", "--no-dp",
                                          "--out", str(tmp_path / "run"), *args])
        return result, time.monotonic() - start

    return run


def rejected(result: Any, needle: str) -> str:
    assert "Traceback" not in result.output
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit)
    stderr = " ".join(result.stderr.split())  # rich wraps long lines
    assert stderr.count("error:") == 1, stderr
    assert needle in stderr, stderr
    return stderr


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts TCP connections and never says a word."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_unreachable_address_fails_at_once_with_one_message(cli: Any, tmp_path: Path) -> None:
    port = free_port()
    result, seconds = cli(["--ray-address", f"127.0.0.1:{port}"])
    text = rejected(result, f"cannot reach the Ray cluster at 127.0.0.1:{port}: Connection refused")
    assert "ray start --head" in text
    assert seconds < 30
    assert not (tmp_path / "run").exists()  # nothing was started or written


def test_a_port_that_is_no_ray_cluster_fails_within_the_time_limit(silent_port: int) -> None:
    start = time.monotonic()
    with pytest.raises(RayClusterError, match=r"did not answer within 6 s.*no Ray GCS answered") as info:
        check_cluster(f"127.0.0.1:{silent_port}", 1, 0.0, timeout_s=6)
    assert time.monotonic() - start < 9
    assert info.value.exit_code == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_gpus_without_a_cluster_on_a_machine_without_gpus(cli: Any, tmp_path: Path) -> None:
    result, seconds = cli(["--gpus-per-worker", "0.25"])
    rejected(result, "gpus-per-worker = 0.25: this machine has 0 usable CUDA GPUs, so no simulation worker fits")
    assert seconds < 10
    assert not (tmp_path / "run").exists()


def test_more_cpus_per_worker_than_this_machine_has(cli: Any) -> None:
    have = os.cpu_count() or 1
    result, _ = cli(["--cpus-per-worker", str(have + 1)])
    rejected(result, f"this machine has {have} CPUs")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--cpus-per-worker", "0"], "cpus-per-worker = 0: expected an integer >= 1"),
        (["--gpus-per-worker", "-0.5"], "gpus-per-worker = -0.5: expected a number >= 0"),
        (["--ray-address", "head-node"], "ray-address = 'head-node': expected HOST:PORT"),
        (["--gpus-per-worker", "0.5", "--device", "cpu"], "the GPU share would go unused"),
    ],
    ids=["cpus", "gpus", "address", "gpus-on-cpu"],
)
def test_bad_resource_options(cli: Any, args: list[str], needle: str) -> None:
    result, _ = cli(args)
    rejected(result, needle)


def test_new_keys_parse_from_run_config_strings() -> None:
    config = RunConfig.from_mapping({"ray-address": "ray://10.0.0.1:10001", "cpus-per-worker": "2",
                                     "gpus-per-worker": "0.25"})
    assert (config.ray_address, config.cpus_per_worker, config.gpus_per_worker) == ("ray://10.0.0.1:10001", 2, 0.25)
    with pytest.raises(ConfigError):
        RunConfig.from_mapping({"cpus-per-worker": 1.5})


def node(cpus: float = 2, gpus: float = 0, version: str | None = __version__, error: str | None = None,
         ident: str = "a" * 56) -> RayNode:
    return RayNode(id=ident, ip="10.0.0.7", cpus=cpus, gpus=gpus, version=version, error=error)


@pytest.mark.parametrize(
    ("nodes", "cpus", "gpus", "needle"),
    [
        ([], 1, 0.0, "no alive node"),
        ([node(gpus=0)], 1, 0.5, "no node has the 1 CPU and 0.5 GPU that one worker asks for"),
        ([node(cpus=2)], 4, 0.0, "10.0.0.7 (aaaaaaaa): 2 CPU, 0 GPU"),
        ([node(version=None, error="ModuleNotFoundError: No module named 'fedmodel'")], 1, 0.0,
         "No module named 'fedmodel'"),
        ([node(version="0.0.1")], 1, 0.0, "10.0.0.7 (aaaaaaaa) runs fedmodel 0.0.1"),
    ],
    ids=["empty", "no-gpu", "too-few-cpus", "not-installed", "other-version"],
)
def test_assess_names_what_to_fix(nodes: list[RayNode], cpus: int, gpus: float, needle: str) -> None:
    problem = assess(nodes, cpus, gpus, __version__)
    assert problem is not None and needle in problem


def test_assess_ignores_nodes_that_host_no_worker() -> None:
    head = node(cpus=0, version="0.0.1", ident="h" * 56)  # a 0-CPU head runs no actor
    assert assess([head, node(cpus=1, gpus=1)], 1, 0.25, __version__) is None


def test_fractional_gpus_share_a_gpu_like_flowers_pool() -> None:
    assert node(cpus=8, gpus=1).workers(1, 0.25) == 4
    assert node(cpus=2, gpus=1).workers(1, 0.25) == 2
    assert node(cpus=3, gpus=0).workers(1, 0.0) == 3


def test_federation_settings_set_worker_resources_and_no_init_args() -> None:
    settings = federation_settings(RunConfig(clients=6, cpus_per_worker=2, gpus_per_worker=0.25))
    assert settings == {"num_supernodes": 6, "client_resources_num_cpus": 2, "client_resources_num_gpus": 0.25}
    from flwr.supercore.utils import simulation_config_from_json

    proto = simulation_config_from_json(dict(settings))  # fields Flower's SimulationConfig knows
    assert (proto.num_supernodes, proto.client_resources_num_gpus) == (6, 0.25)
    assert not proto.HasField("init_args_num_cpus")


def test_the_superlink_environment_never_inherits_a_ray_address(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert "RAY_ADDRESS" not in flower_env(tmp_path / "a", {})  # deployments: no Ray at all
    assert flower_env(tmp_path / "b", {}, ray_address="local")["RAY_ADDRESS"] == "local"
    assert flower_env(tmp_path / "c", {}, ray_address="10.0.0.1:6379")["RAY_ADDRESS"] == "10.0.0.1:6379"


def test_a_private_ray_keeps_its_files_under_the_run_home(tmp_path: Path) -> None:
    home = Path("/run/fedmodel-flwr-abcdefgh")  # only its length matters
    assert _private_ray_root(RunConfig(), home) == home
    assert _private_ray_root(RunConfig(ray_address="127.0.0.1:6379"), home) is None
