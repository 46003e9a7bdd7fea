"""Running a Flower process (SuperLink, SuperNode) in the foreground of a fedmodel command.

The child runs in its own process group; its output is teed to the terminal, a log file and a line
callback; Ctrl-C and SIGTERM are forwarded to it (a second one kills the group); whatever is left
in its group when it exits is swept away.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any

from fedmodel.errors import DeploymentError
from fedmodel.runs import stop_process as _stop

_ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")
_SWEEP_WAIT_S = 5.0

LineFn = Callable[[str], None]


@dataclass(frozen=True)
class ProcessExit:
    """How a process run by :func:`run_foreground` ended.

    Attributes
    ----------
    code : int
        Its exit code; 128 + N when signal N ended it.
    interrupted : bool
        Ctrl-C or SIGTERM reached this process and was forwarded to it.
    """

    code: int
    interrupted: bool


def run_foreground(cmd: Sequence[str], *, env: dict[str, str], cwd: Path, log_path: Path | None = None,
                   on_line: LineFn | None = None) -> ProcessExit:
    """Run a Flower process in its own process group, tee its output and forward Ctrl-C and SIGTERM.

    Output lines go to this process's stdout unchanged and, without ANSI colour codes, to ``log_path``
    and ``on_line``. A second Ctrl-C or SIGTERM kills the process group. When the leader has exited, any
    process left in its group (a SuperExec, an orphaned ClientApp) is killed.

    Returns
    -------
    ProcessExit
        Its exit code, and whether a signal to this process was forwarded to it.
    """
    log = _open_log(log_path)
    proc = subprocess.Popen(list(cmd), env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    stream = proc.stdout
    if stream is None:  # cannot happen with stdout=PIPE; keeps the type checker honest
        raise DeploymentError(f"no output pipe from {cmd[0]}")
    reader = threading.Thread(target=_pump, args=(stream, log, on_line), daemon=True)
    reader.start()
    received: list[int] = []
    previous = _forward_signals(proc.pid, received)
    try:
        code = proc.wait()
    finally:
        _restore_signals(previous)
        _stop(proc)
        _sweep_group(proc.pid, reader)
        if log is not None:
            log.close()
    return ProcessExit(code if code >= 0 else 128 - code, bool(received))


def _open_log(path: Path | None) -> IO[bytes] | None:
    if path is None:
        return None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.open("ab")
    except OSError as exc:
        raise DeploymentError(f"cannot open log file {path}: {exc.strerror or exc}") from exc


def _pump(stream: IO[bytes], log: IO[bytes] | None, on_line: LineFn | None) -> None:
    sink = getattr(sys.stdout, "buffer", None)
    for raw in iter(stream.readline, b""):
        plain = _ANSI.sub(b"", raw)
        if sink is not None:
            sink.write(raw)
            sink.flush()
        else:
            sys.stdout.write(raw.decode("utf-8", "replace"))
        if log is not None:
            log.write(plain)
            log.flush()
        if on_line is not None:
            on_line(plain.decode("utf-8", "replace").rstrip("\r\n"))
    stream.close()


def _forward_signals(pgid: int, received: list[int]) -> dict[int, Any]:
    if threading.current_thread() is not threading.main_thread():
        return {}

    def forward(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)
        _killpg(pgid, signum if len(received) == 1 else signal.SIGKILL)

    return {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}


def _restore_signals(previous: dict[int, Any]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def _sweep_group(pgid: int, reader: threading.Thread) -> None:
    """Wait briefly for the group to close its output, then kill whatever is left in it."""
    reader.join(_SWEEP_WAIT_S)
    _killpg(pgid, signal.SIGKILL)
    reader.join(_SWEEP_WAIT_S)


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
