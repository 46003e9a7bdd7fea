"""Peak memory of a whole process tree: the sum of RSS over a process and all its descendants.

A background thread samples every ``interval_s`` seconds. A simulation's tree is the driver, the
Flower SuperLink, SuperExec, the ServerApp and simulation processes, Ray's GCS, raylet and every
Ray worker. A process seen once stays tracked even if it is re-parented (a daemonising child),
until it exits. The figure is the largest per-sample sum; summed RSS counts pages shared between
processes (libraries, Ray's object store) once per process, so it overstates the physical
memory in use, but it is simple, comparable between runs, and what the issue's targets use.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from types import TracebackType

import psutil

DEFAULT_INTERVAL_S = 0.2


@dataclass(frozen=True)
class TreeMemoryPeak:
    """The largest summed RSS seen, how many processes made it up, and how many samples were taken."""

    rss_bytes: int
    processes: int
    samples: int


class TreeMemorySampler:
    """Sample the summed RSS of ``pid`` and its descendants until stopped; use as a context manager."""

    def __init__(self, pid: int, interval_s: float = DEFAULT_INTERVAL_S) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s = {interval_s!r}: expected a number > 0")
        self.pid = pid
        self.interval_s = interval_s
        self._root = psutil.Process(pid)
        self._tracked: dict[int, psutil.Process] = {pid: self._root}
        self._peak = TreeMemoryPeak(0, 0, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"tree-memory-{pid}", daemon=True)

    @property
    def peak(self) -> TreeMemoryPeak:
        return self._peak

    def sample(self) -> int:
        """Take one sample now; return its summed RSS in bytes (0 once every process has exited)."""
        try:
            for child in self._root.children(recursive=True):
                self._tracked.setdefault(child.pid, child)
        except psutil.Error:  # the root exited; its orphans are still tracked
            pass
        total, alive = 0, 0
        for pid, proc in list(self._tracked.items()):
            try:
                if not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE:
                    raise psutil.NoSuchProcess(pid)
                total += proc.memory_info().rss
                alive += 1
            except psutil.Error:
                del self._tracked[pid]
        peak = self._peak
        self._peak = TreeMemoryPeak(max(peak.rss_bytes, total), alive if total > peak.rss_bytes else peak.processes,
                                    peak.samples + 1)
        return total

    def start(self) -> TreeMemorySampler:
        self.sample()
        self._thread.start()
        return self

    def stop(self) -> TreeMemoryPeak:
        """Stop sampling and return the peak."""
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join()
        return self._peak

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> TreeMemorySampler:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
