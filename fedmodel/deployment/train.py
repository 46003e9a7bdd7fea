"""Submit a training run to a deployed coordinator (Flower SuperLink) and follow it to its end.

The ServerApp runs next to the SuperLink and writes the run folder itself (``--out`` is a path on
the coordinator's machine); run ``fedmodel train`` there to follow progress and get the report.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from fedmodel.config import RunConfig
from fedmodel.errors import ConfigError
from fedmodel.runs import (
    ProgressFn,
    RunResult,
    finish,
    flower_env,
    follow,
    new_run_folder,
    stop_process,
    stop_run,
    stream_log,
    submit,
    write_app,
)

CONNECTION = "fedmodel"
_ADDRESS_RE = re.compile(r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")


def connection(coordinator: str, ca_cert: Path | None, *, insecure: bool) -> dict[str, Any]:
    """The ``flwr`` connection entry for a coordinator; the CA path is made absolute (Flower requires it)."""
    problems = []
    if not _ADDRESS_RE.match(coordinator):
        problems.append(f"--coordinator {coordinator!r}: expected HOST:PORT, e.g. 127.0.0.1:9091")
    if insecure:
        entry: dict[str, Any] = {"address": coordinator, "insecure": True}
    elif ca_cert is None:
        problems.append("--ca: the coordinator's CA certificate is required (or --insecure for a plain-HTTP test setup)")
        entry = {}
    elif not ca_cert.is_file():
        problems.append(f"--ca {ca_cert}: file not found (it is the ca.crt that `fedmodel certs init` made)")
        entry = {}
    else:
        entry = {"address": coordinator, "root-certificates": str(ca_cert.absolute())}
    if problems:
        raise ConfigError(problems)
    return entry


def run_training(config: RunConfig, coordinator: str, ca_cert: Path | None, *, insecure: bool = False,
                 on_event: ProgressFn | None = None) -> RunResult:
    """Submit ``config`` to the coordinator, follow it, and raise SimulationError if it did not complete."""
    started = time.time()
    entry = connection(coordinator, ca_cert, insecure=insecure)
    config, folder = new_run_folder(config)
    run_dir = folder.path
    home = Path(tempfile.mkdtemp(prefix="fedmodel-train-"))
    log_proc: subprocess.Popen[bytes] | None = None
    try:
        env = flower_env(home, {"default": CONNECTION, CONNECTION: entry})
        run_id = submit(write_app(home / "app", config), env, CONNECTION)
        log_proc = stream_log(run_id, env, CONNECTION, run_dir / "flower.log")
        stream = log_proc
        try:
            status, details = follow(run_id, env, CONNECTION, folder, on_event=on_event,
                                     stream_ended=lambda: stream.poll() is not None)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: stop the run on the coordinator too, then say so
            stop_run(run_id, env, CONNECTION)
            raise
    finally:
        stop_process(log_proc)
        shutil.rmtree(home, ignore_errors=True)
    return finish(folder, status, details, started,
                  logs=f"{run_dir / 'flower.log'} and the coordinator's SuperLink output")
