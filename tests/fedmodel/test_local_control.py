"""The local SuperLink's Control API in-process: the requests ``flwr run`` / ``log --stream`` / ``ls`` would send.

Flower's client is replaced by a recorder here; the whole path against a real SuperLink is in
``tests/integration/test_simulation.py``.
"""

from __future__ import annotations

import hashlib
import io
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flwr.proto.control_pb2 import ListRunsResponse, StartRunRequest, StartRunResponse, StreamLogsResponse
from flwr.proto.run_pb2 import Run, RunStatus

from fedmodel.config import RunConfig
from fedmodel.errors import SimulationError
from fedmodel.local_control import LocalControl
from fedmodel.runs import write_app
from fedmodel.simulations import runner


class FakeClient:
    def __init__(self, *, refuse: bool = False, run_id: int | None = 42, logs: list[str] | None = None,
                 fail_after: int | None = None, gate: threading.Event | None = None) -> None:
        self.refuse, self.run_id, self.logs, self.fail_after = refuse, run_id, logs or [], fail_after
        self.gate = gate
        self.requests: list[Any] = []
        self.closed = False

    def StartRun(self, request: StartRunRequest) -> StartRunResponse:  # noqa: N802 (Flower's name)
        self.requests.append(request)
        if self.refuse:
            raise RuntimeError("Federation `@x/y` does not exist")
        return StartRunResponse(run_id=self.run_id) if self.run_id is not None else StartRunResponse(note="no nodes")

    def StreamLogs(self, request: Any) -> Iterator[StreamLogsResponse]:  # noqa: N802
        self.requests.append(request)
        if self.gate is not None:
            assert self.gate.wait(10)
        for i, line in enumerate(self.logs):
            if self.fail_after is not None and i == self.fail_after:
                raise ConnectionError("the SuperLink went away")
            yield StreamLogsResponse(log_output=line, latest_timestamp=float(i))

    def ListRuns(self, request: Any) -> ListRunsResponse:  # noqa: N802
        self.requests.append(request)
        response = ListRunsResponse()
        response.run_dict[request.run_id].CopyFrom(
            Run(run_id=request.run_id, status=RunStatus(status="finished", sub_status="failed", details="")))
        return response

    def close(self) -> None:
        self.closed = True


def control_with(client: FakeClient) -> LocalControl:
    control = LocalControl("1")
    control.new_client = lambda: client  # type: ignore[method-assign]
    return control


def test_submit_sends_the_app_built_as_flower_builds_it_and_the_federation_settings(tmp_path: Path) -> None:
    app_dir = write_app(tmp_path / "app", RunConfig(clients=3, rounds=1))
    client = FakeClient()
    run_id = control_with(client).submit(app_dir, runner.federation_settings(RunConfig(clients=3, rounds=1)))
    assert run_id == 42
    request = client.requests[0]
    assert request.fab.hash_str == hashlib.sha256(request.fab.content).hexdigest()
    with zipfile.ZipFile(io.BytesIO(request.fab.content)) as fab:
        assert "pyproject.toml" in fab.namelist()
        assert b"fedmodel.server.app:app" in fab.read("pyproject.toml")
    federation = request.override_federation_config
    assert (federation.num_supernodes, federation.client_resources_num_cpus) == (3, 1)
    assert request.federation == "" and len(request.override_config) == 0


def test_a_refused_run_says_flowers_reason(tmp_path: Path) -> None:
    app_dir = write_app(tmp_path / "app", RunConfig(clients=2, rounds=1))
    with pytest.raises(SimulationError, match="refused the run: Federation `@x/y` does not exist"):
        control_with(FakeClient(refuse=True)).submit(app_dir, {"num_supernodes": 2})
    with pytest.raises(SimulationError, match="did not start the run: no nodes"):
        control_with(FakeClient(run_id=None)).submit(app_dir, {"num_supernodes": 2})


def test_unknown_federation_settings_are_refused_before_anything_is_sent(tmp_path: Path) -> None:
    client = FakeClient()
    with pytest.raises(ValueError, match="Unknown simulation config field"):
        control_with(client).submit(write_app(tmp_path / "app", RunConfig(clients=2, rounds=1)),
                                    {"num_supernodez": 2})
    assert client.requests == []


def test_a_client_that_cannot_be_loaded_is_a_simulation_error() -> None:
    control = LocalControl("1")

    def broken() -> Any:
        raise ImportError("No module named 'flwr.supercore.control'")

    control.new_client = broken  # type: ignore[method-assign]
    with pytest.raises(SimulationError, match="could not load Flower's Control API client: No module named"):
        control.client()


def test_status_reads_as_flower_ls_says_it() -> None:
    client = FakeClient()
    assert control_with(client).status(7) == ("finished:failed", "N/A")
    assert client.requests[0].run_id == 7


def test_the_runner_asks_flower_list_when_the_in_process_status_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[int] = []
    monkeypatch.setattr(runner, "run_status",
                        lambda run_id, env, connection: asked.append(run_id) or ("finished:failed", "from flwr list"))
    assert runner._flower_status(LocalControl("1"), 7, {}) == ("finished:failed", "from flwr list")  # port 1: no one
    assert asked == [7]


def test_the_log_stream_copies_every_line_and_ends_with_the_stream(tmp_path: Path) -> None:
    client = FakeClient(logs=["INFO: Starting Flower Simulation\n", "INFO: [ROUND 1]\n", "INFO: done\n"])
    stream = control_with(client).stream_log(7, tmp_path / "flower.log")
    stream.wait(10)
    assert stream.ended() and stream.error is None and client.closed
    assert (tmp_path / "flower.log").read_text() == "INFO: Starting Flower Simulation\nINFO: [ROUND 1]\nINFO: done\n"
    assert client.requests[0].run_id == 7 and client.requests[0].after_timestamp == 0.0


def test_a_broken_log_stream_says_so_in_the_log(tmp_path: Path) -> None:
    client = FakeClient(logs=["INFO: [ROUND 1]\n", "never\n"], fail_after=1)
    stream = control_with(client).stream_log(7, tmp_path / "flower.log")
    stream.wait(10)
    assert stream.ended() and stream.error == "ConnectionError: the SuperLink went away"
    text = (tmp_path / "flower.log").read_text()
    assert text.startswith("INFO: [ROUND 1]\n") and "the log stream ended early: ConnectionError" in text


def test_a_stopped_log_stream_ends_quietly(tmp_path: Path) -> None:
    gate = threading.Event()
    client = FakeClient(logs=["a\n", "b\n"], fail_after=1, gate=gate)  # the SuperLink stopped after we stopped
    stream = control_with(client).stream_log(7, tmp_path / "flower.log")
    stream.stop()
    gate.set()
    stream.wait(10)
    assert stream.ended() and stream.error is None
    assert "ended early" not in (tmp_path / "flower.log").read_text()


class HangingClient(FakeClient):
    """A stream that sends one line and then waits, as a live run's does, until the connection is closed."""

    def __init__(self) -> None:
        super().__init__()
        self.closing = threading.Event()

    def StreamLogs(self, request: Any) -> Iterator[StreamLogsResponse]:  # noqa: N802
        yield StreamLogsResponse(log_output="INFO: [ROUND 1]\n", latest_timestamp=1.0)
        assert self.closing.wait(30)
        raise ConnectionError("connection closed")

    def close(self) -> None:
        super().close()
        self.closing.set()


def test_stopping_a_live_log_stream_closes_its_connection_at_once(tmp_path: Path) -> None:
    # the SuperLink's graceful stop waits for open requests: an open stream held it for its whole grace period
    client = HangingClient()
    stream = control_with(client).stream_log(7, tmp_path / "flower.log")
    for _ in range(100):
        if (tmp_path / "flower.log").read_text():
            break
        threading.Event().wait(0.05)
    assert not stream.ended()
    stream.stop()
    stream.wait(5)
    assert stream.ended() and client.closed and stream.error is None
    assert (tmp_path / "flower.log").read_text() == "INFO: [ROUND 1]\n"


def test_stop_run_says_whether_the_superlink_stopped_it() -> None:
    class Stopping(FakeClient):
        def StopRun(self, request: Any) -> Any:  # noqa: N802
            from flwr.proto.control_pb2 import StopRunResponse

            self.requests.append(request)
            if self.refuse:
                raise ConnectionError("gone")
            return StopRunResponse(success=True)

    client = Stopping()
    assert control_with(client).stop_run(7) is True and client.requests[0].run_id == 7
    assert control_with(Stopping(refuse=True)).stop_run(7) is False  # best effort: never raises
