"""The reference runner's wait is fedmodel's (runs.follow, tested there); what ends it early is its own."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[2] / "benchmarks")]

from fedbench import reference  # noqa: E402


def test_the_wait_ends_when_the_superlink_exits_or_the_deadline_passes() -> None:
    superlink = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        assert reference._broken(superlink, time.monotonic() + 300) is None
        assert reference._broken(superlink, time.monotonic() - 1) == "still running at the deadline"
    finally:
        superlink.kill()
        superlink.wait()
    answer = reference._broken(superlink, time.monotonic() + 300)
    assert answer is not None and answer.startswith("flower-superlink exited with code")
