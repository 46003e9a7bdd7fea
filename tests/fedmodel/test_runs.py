"""Stopping what a run started: a process, its group, and the sessions its children opened for themselves."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from fedmodel.runs import descendant_groups, stop_process

# A parent in its own session that starts a grandchild in yet another session (as Flower's SuperLink
# starts SuperExec, which starts flwr-simulation), writes the grandchild's pid, and waits.
PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
open(sys.argv[1], "w").write(str(child.pid))
time.sleep(600)
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (killed, not yet reaped by init) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def test_stop_process_kills_the_sessions_its_children_opened(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(pid_file)], start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline, "the test's grandchild did not start"
            time.sleep(0.05)
        grandchild = int(pid_file.read_text())
        assert os.getpgid(grandchild) in descendant_groups(parent.pid)
        assert os.getpgid(grandchild) != os.getpgid(parent.pid)
        stop_process(parent, grace_s=5)
        deadline = time.monotonic() + 10
        while alive(grandchild) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(grandchild), "the grandchild in its own session outlived stop_process"
        assert parent.poll() is not None
    finally:
        parent.kill()
        if pid_file.exists() and pid_file.read_text():
            try:
                os.kill(int(pid_file.read_text()), 9)
            except ProcessLookupError:
                pass


def test_our_own_group_is_never_a_target() -> None:
    assert os.getpgid(0) not in descendant_groups(os.getppid())
