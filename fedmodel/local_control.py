"""The simulation's own SuperLink, driven in-process over its Control API (no ``flwr`` CLI processes).

``flwr run``, ``flwr log --stream`` and ``flwr list`` are each a Python process that imports Flower's
CLI (2-3 CPU seconds apiece on this 2-core machine) before it sends one request; ``flwr run`` sat on
the critical path between the SuperLink answering and the ServerApp starting (3.4 s), and the
other two took a core from the run's Ray workers while round 1 started. The requests are the same
ones the CLI sends (``flwr.cli.run.run._run_with_control_api``, ``flwr.cli.log.stream_logs``,
``flwr ls``): the app is built into a FAB by Flower's own ``build_fab_from_disk``, submitted with
``StartRun`` and followed with ``StreamLogs`` and ``ListRuns``, through Flower's ``ControlHttpClient``.
Only for a SuperLink this process started on loopback, without TLS or accounts (the simulation's);
a deployed coordinator is still reached through the ``flwr`` CLI (:mod:`fedmodel.runs`).

The client and the FAB builder are imported in a background thread (:meth:`LocalControl.preload`)
while the SuperLink boots.
"""

from __future__ import annotations

import hashlib
import importlib
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedmodel.errors import SimulationError

CLIENT_IMPORT_TIMEOUT_S = 60.0


class LocalControl:
    """Control API requests to the SuperLink at ``127.0.0.1:http_port`` (started by this process, insecure)."""

    def __init__(self, http_port: str) -> None:
        self.address = f"127.0.0.1:{http_port}"
        self._loading: threading.Thread | None = None
        self._client: Any = None
        self._error: BaseException | None = None

    def preload(self) -> None:
        """Import Flower's Control client and FAB builder now, in the background."""
        if self._loading is None:
            self._loading = threading.Thread(target=self._load, name="flower-control-client", daemon=True)
            self._loading.start()

    def _load(self) -> None:
        try:
            self._client = self.new_client()
            importlib.import_module("flwr.cli.build")  # the FAB builder submit() uses (typer, pathspec...)
        except Exception as exc:  # reported by client()
            self._error = exc

    def new_client(self) -> Any:
        """A new ``ControlHttpClient`` (as the CLI's, without account tokens: the local SuperLink has none)."""
        from flwr.cli.cli_client_interceptor import CliClientHttpInterceptor
        from flwr.supercore.control import ControlHttpClient
        from flwr.supercore.interceptors.http.runtime_version import RuntimeVersionHttpInterceptor

        return ControlHttpClient.from_server_address(
            self.address, insecure=True, root_certificates=None,
            interceptors=[CliClientHttpInterceptor(), RuntimeVersionHttpInterceptor(component_name="flwr CLI")])

    def client(self) -> Any:
        """The shared client, once loaded; SimulationError if Flower's client could not be loaded."""
        self.preload()
        assert self._loading is not None
        self._loading.join(timeout=CLIENT_IMPORT_TIMEOUT_S)
        if self._client is None:
            raise SimulationError(f"could not load Flower's Control API client: {self._error or 'timed out'}")
        return self._client

    def submit(self, app_dir: Path, federation: Mapping[str, int | float]) -> int:
        """``flwr run APP_DIR --federation-config ...``: start the run; its id, or SimulationError with Flower's reason.

        ``federation`` holds ``SimulationConfig`` fields (``num_supernodes``, ``client_resources_num_cpus``...).
        """
        client = self.client()
        from flwr.cli.build import build_fab_from_disk
        from flwr.common.serde import fab_to_proto, user_config_to_proto
        from flwr.proto.control_pb2 import StartRunRequest
        from flwr.supercore.fab import Fab
        from flwr.supercore.utils import simulation_config_from_json

        fab_bytes = build_fab_from_disk(app_dir)
        request = StartRunRequest(
            fab=fab_to_proto(Fab(hashlib.sha256(fab_bytes).hexdigest(), fab_bytes, {})),
            override_config=user_config_to_proto({}), federation="",
            override_federation_config=simulation_config_from_json(dict(federation)), app_spec="")
        try:
            response = client.StartRun(request)
        except Exception as exc:  # the SuperLink's refusal, as Flower's client raises it
            raise SimulationError(f"the SuperLink refused the run: {exc}") from exc
        if not response.HasField("run_id"):
            raise SimulationError(f"the SuperLink did not start the run{': ' + response.note if response.note else ''}")
        return int(response.run_id)

    def stop_run(self, run_id: int) -> bool:
        """``flwr stop RUN_ID``: True if the SuperLink stopped the run (best effort: False on any failure)."""
        from flwr.proto.control_pb2 import StopRunRequest

        try:
            return bool(self.client().StopRun(StopRunRequest(run_id=run_id)).success)
        except Exception:  # noqa: BLE001  (a SuperLink already gone or never reached)
            return False

    def stream_log(self, run_id: int, path: Path) -> LogStream:
        """``flwr log RUN_ID --stream > path``, in a background thread."""
        return LogStream(self, run_id, path)

    def status(self, run_id: int) -> tuple[str, str]:
        """(status, details) as ``flwr ls`` says them, e.g. ("finished:completed", "N/A")."""
        from flwr.proto.control_pb2 import ListRunsRequest

        run = self.client().ListRuns(ListRunsRequest(run_id=run_id)).run_dict[run_id]
        state = f"{run.status.status}:{run.status.sub_status}" if run.status.sub_status else run.status.status
        return state, str(run.status.details or "N/A")


class LogStream:
    """A run's Flower log copied into a file as the SuperLink streams it; ends by itself when the run is finished."""

    def __init__(self, control: LocalControl, run_id: int, path: Path) -> None:
        self.path = path
        self.error: str | None = None
        self._stop = threading.Event()
        self._client: Any = None
        path.write_bytes(b"")
        self._thread = threading.Thread(target=self._copy, args=(control, run_id), name=f"flower-log-{run_id}",
                                        daemon=True)
        self._thread.start()

    def _copy(self, control: LocalControl, run_id: int) -> None:
        try:
            from flwr.proto.control_pb2 import StreamLogsRequest

            self._client = client = control.new_client()  # its own connection: the shared one answers status requests
            try:
                if self._stop.is_set():
                    return
                with self.path.open("a", encoding="utf-8") as out:
                    for piece in client.StreamLogs(StreamLogsRequest(run_id=run_id, after_timestamp=0.0)):
                        out.write(piece.log_output)
                        out.flush()
                        if self._stop.is_set():
                            break
            finally:
                client.close()
        except Exception as exc:  # a stream cut by the SuperLink's stop, or one that failed: the file says so
            if not self._stop.is_set():
                self.error = f"{type(exc).__name__}: {exc}"
                with self.path.open("a", encoding="utf-8") as out:
                    out.write(f"\n[fedmodel] the log stream ended early: {self.error}\n")

    def ended(self) -> bool:
        return not self._thread.is_alive()

    def wait(self, timeout_s: float) -> None:
        """Up to ``timeout_s`` for the stream to end by itself (it has every line of a finished run then)."""
        self._thread.join(timeout=timeout_s)

    def stop(self) -> None:
        """Stop copying now: this side's connection is closed and the thread ends at once.

        The SuperLink's side of the stream lives on until the run is finished; a run ended early must be
        stopped (:meth:`LocalControl.stop_run`) before the SuperLink can stop gracefully.
        """
        self._stop.set()
        client = self._client
        if client is not None and not self.ended():
            try:
                client.close()  # the copying thread's read fails at once and it ends quietly
            except Exception:  # noqa: BLE001  (closing a connection that is already going away)
                pass
