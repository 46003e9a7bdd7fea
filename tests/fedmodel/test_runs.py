"""Stopping what a run started: a process, its group, and the sessions its children opened for themselves."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fedmodel import runs
from fedmodel.report.run_folder import RunFolder
from fedmodel.runs import descendant_groups, descendants, stop_process

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


def test_descendants_lists_a_child_before_its_grandchild_and_nothing_for_a_gone_process(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(pid_file)], start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline, "the test's grandchild did not start"
            time.sleep(0.05)
        assert [p.pid for p in descendants(os.getpid()) if p.pid in (parent.pid, int(pid_file.read_text()))] == [
            parent.pid, int(pid_file.read_text())]
        assert any("time.sleep(600)" in " ".join(p.cmdline()) for p in descendants(parent.pid))
    finally:
        stop_process(parent, grace_s=5)
    assert descendants(parent.pid) == []


class FakeRun:
    """A run on a fake clock: the ServerApp writes a round event every 10 s and ``done`` at ``done_at``;
    Flower marks it ``status`` at ``end_at``; ``flwr log --stream`` exits then (or at ``stream_exits_at``)."""

    def __init__(self, folder: RunFolder, *, end_at: float, done_at: float | None,
                 status: str = "finished:completed", stream_exits_at: float | None = None) -> None:
        self.folder, self.end_at, self.done_at, self.status = folder, end_at, done_at, status
        self.stream_exits_at = end_at if stream_exits_at is None else stream_exits_at
        self.now, self.written, self.said_done = 0.0, 0.0, False
        self.asked: list[float] = []
        folder.path.mkdir(parents=True, exist_ok=True)

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        while self.written + 10 <= min(self.now, self.done_at if self.done_at is not None else self.end_at):
            self.written += 10
            self._event("round", round=int(self.written // 10))
        if self.done_at is not None and not self.said_done and self.done_at <= self.now:
            self.said_done = True
            self._event("done", status="completed")

    def _event(self, kind: str, **data: Any) -> None:
        with self.folder.progress_path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({"event": kind, "time": self.now, **data}) + "\n")

    def run_status(self, run_id: int, env: dict[str, str], connection: str) -> tuple[str, str]:
        self.asked.append(self.now)
        return (self.status, "why") if self.now >= self.end_at else ("running", "")

    def stream_ended(self) -> bool:
        return self.now >= self.stream_exits_at


@pytest.fixture
def fake_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[..., FakeRun]:
    def make(**kwargs: Any) -> FakeRun:
        run = FakeRun(RunFolder(tmp_path / "run"), **kwargs)
        monkeypatch.setattr(runs.time, "monotonic", run.monotonic)
        monkeypatch.setattr(runs.time, "sleep", run.sleep)
        monkeypatch.setattr(runs, "run_status", run.run_status)
        return run
    return make


def test_follow_asks_flower_when_the_log_stream_ends_not_every_few_seconds(fake_run: Callable[..., FakeRun]) -> None:
    run = fake_run(end_at=603.0, done_at=600.0)
    seen: list[dict[str, Any]] = []
    status = runs.follow(1, {}, "local", run.folder, on_event=seen.append, stream_ended=run.stream_ended)
    assert status == ("finished:completed", "why")
    assert run.asked[-1] == pytest.approx(603.0, abs=runs.POLL_INTERVAL_S)  # as soon as the stream ended
    assert len(run.asked) <= 600 / runs.STATUS_SAFETY_INTERVAL_S + 1  # one `flwr list` per safety interval at most
    assert [e["event"] for e in seen] == ["round"] * 60 + ["done"]


def test_follow_finds_a_serverapp_that_died_without_done(fake_run: Callable[..., FakeRun]) -> None:
    run = fake_run(end_at=45.0, done_at=None, status="finished:failed")
    assert runs.follow(1, {}, "local", run.folder, on_event=None, stream_ended=run.stream_ended) == (
        "finished:failed", "why")
    assert run.asked == [pytest.approx(45.0, abs=runs.POLL_INTERVAL_S)]


def test_follow_without_a_stream_backs_off_and_checks_soon_after_done(fake_run: Callable[..., FakeRun]) -> None:
    run = fake_run(end_at=903.0, done_at=900.0)
    assert runs.follow(1, {}, "local", run.folder, on_event=None)[0] == "finished:completed"
    gaps = [b - a for a, b in zip(run.asked, run.asked[1:], strict=False)]
    assert run.asked[0] == pytest.approx(runs.STATUS_INTERVAL_S, abs=runs.POLL_INTERVAL_S)
    assert max(gaps) <= runs.STATUS_MAX_INTERVAL_S + runs.POLL_INTERVAL_S
    assert len(run.asked) < 900 / runs.STATUS_MAX_INTERVAL_S + 10  # not 450 questions
    assert run.asked[-1] - 903.0 <= runs.STATUS_INTERVAL_S + runs.POLL_INTERVAL_S  # done was seen at 900


def test_follow_polls_again_when_the_stream_breaks_early(fake_run: Callable[..., FakeRun]) -> None:
    run = fake_run(end_at=100.0, done_at=None, status="finished:failed", stream_exits_at=5.0)
    assert runs.follow(1, {}, "local", run.folder, on_event=None, stream_ended=run.stream_ended)[0] == "finished:failed"
    assert run.asked[0] == pytest.approx(5.0, abs=runs.POLL_INTERVAL_S)
    assert run.asked[1] - run.asked[0] == pytest.approx(runs.STATUS_INTERVAL_S, abs=runs.POLL_INTERVAL_S)
    assert run.asked[-1] - 100.0 <= runs.STATUS_MAX_INTERVAL_S


def test_follow_with_a_cheap_status_asks_right_after_done_not_when_the_stream_ends(
        fake_run: Callable[..., FakeRun]) -> None:
    run = fake_run(end_at=602.0, done_at=600.0, stream_exits_at=606.0)
    status = runs.follow(1, {}, "local", run.folder, on_event=None, stream_ended=run.stream_ended,
                         status=lambda: run.run_status(1, {}, "local"))
    assert status == ("finished:completed", "why")
    assert run.asked[-1] == pytest.approx(602.0, abs=runs.POLL_INTERVAL_S)  # Flower said finished: no wait for 606
    before_done = [t for t in run.asked if t < 600.0]
    assert len(before_done) <= 600 / runs.STATUS_SAFETY_INTERVAL_S + 1  # while running, as rarely as before


def test_follow_stops_when_broken_says_so(fake_run: Callable[..., FakeRun]) -> None:
    run = fake_run(end_at=1e9, done_at=None)
    answers = iter([None, None, "flower-superlink exited with code 1"])
    assert runs.follow(1, {}, "local", run.folder, on_event=None, broken=lambda: next(answers),
                       stream_ended=run.stream_ended) == ("broken", "flower-superlink exited with code 1")
    assert run.asked == []


def test_finish_adds_timing_and_status_and_keeps_the_plots_drawn(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir(parents=True)
    report = {"status": "completed", "dataset": "digits", "rounds": [], "privacy": {"mode": "none"}}
    folder.write_report(report)
    plots = sorted(folder.plots_dir.glob("*.png"))
    assert [p.name for p in plots] == ["accuracy.png", "epsilon.png", "loss.png"]
    before = {p.name: p.stat().st_mtime_ns for p in plots}
    result = runs.finish(folder, "finished:completed", "", time.time() - 3.0, logs="the logs")
    written = json.loads(folder.report_path.read_text())
    assert written["flower_status"] == "finished:completed" and written["timing"]["total_seconds"] >= 3.0
    assert result.report["timing"] == written["timing"]
    assert {p.name: p.stat().st_mtime_ns for p in plots} == before  # timing and status change no curve
    assert "<td>total</td>" in folder.html_path.read_text()  # the page shows the timing
    (folder.plots_dir / "loss.png").unlink()  # a lost plot is drawn again
    folder.write_report(written, redraw_plots=False)
    assert (folder.plots_dir / "loss.png").is_file()
