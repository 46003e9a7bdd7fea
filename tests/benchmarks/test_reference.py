"""The reference runner's wait: Flower is asked for the status when the log stream ends, not every 2 s."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path[:0] = [str(Path(__file__).resolve().parents[2] / "benchmarks")]

from fedbench import reference  # noqa: E402


def test_wait_asks_flower_once_when_the_log_stream_has_ended(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[bool] = []  # per question: had the stream ended?

    def status(run_id: int, env: dict[str, str], connection: str) -> tuple[str, str]:
        asked.append(stream.poll() is not None)
        return "finished:completed", ""

    monkeypatch.setattr(reference, "run_status", status)
    superlink = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    stream = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1)"])
    try:
        assert reference._wait(7, {}, superlink, stream, time.monotonic() + 300) == ("finished:completed", "")
        assert asked == [True]  # asked once, after the stream ended
    finally:
        superlink.kill()
        stream.kill()
