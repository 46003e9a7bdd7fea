"""Run each benchmark variant as its own process tree and read what it measured.

Every variant is one command (``fedmodel simulate`` or ``run_reference.py``) started by the
harness; wall time runs from just before the process starts to its exit, the time to the first
round from the same start to the end of round 1 as the run wrote it (fedmodel's progress events,
the reference's rounds file), and peak memory is the tree's summed RSS (:mod:`fedbench.treemem`).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import tomli_w

from fedbench.scenarios import REFERENCE, Scenario
from fedbench.table import VariantResult, later_round_seconds
from fedbench.treemem import TreeMemoryPeak, TreeMemorySampler
from fedmodel.config import RunConfig
from fedmodel.data import federated_split
from fedmodel.privacy import epsilon_spent, plan_for_owner, steps_per_epoch
from fedmodel.report.model import Report
from fedmodel.report.run_folder import read_events

BENCH_DIR = Path(__file__).resolve().parent.parent
LOG_TAIL_CHARS = 300


@dataclass(frozen=True)
class ProcessRun:
    """One measured command: exit code, start (epoch seconds), wall time, peak tree memory, its log."""

    returncode: int
    started: float
    wall_s: float
    peak: TreeMemoryPeak
    log: Path

    def tail(self) -> str:
        text = self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""
        return " ".join(text[-LOG_TAIL_CHARS:].split())


def run_measured(cmd: list[str], log: Path, *, timeout_s: float, interval_s: float = 0.2) -> ProcessRun:
    """Run ``cmd`` (output to ``log``), sampling its process tree's memory until it exits or times out."""
    with log.open("wb") as out:
        started, t0 = time.time(), time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        sampler = TreeMemorySampler(proc.pid, interval_s).start()
        try:
            returncode = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            returncode = _stop_tree(proc)
        finally:
            peak = sampler.stop()
        return ProcessRun(returncode, started, time.perf_counter() - t0, peak, log)


@dataclass(frozen=True)
class DPSchedule:
    """The noise multiplier fedmodel calibrates per batches-per-epoch, and the most any owner spends."""

    noise_multipliers: dict[int, float]
    max_epsilon: float

    def as_config(self) -> str:
        return ",".join(f"{steps}:{sigma!r}" for steps, sigma in sorted(self.noise_multipliers.items()))


def dp_schedule(config: RunConfig) -> DPSchedule:
    """fedmodel's calibration (``plan_for_owner``) for every distinct shard schedule of the run."""
    sizes: dict[int, int] = {}
    for n in sorted(federated_split(config).shard_sizes() - {0}):  # the plan depends on n only through the steps
        sizes.setdefault(steps_per_epoch(n, config.batch_size), n)
    noise, most = {}, 0.0
    for steps, n in sizes.items():
        plan = plan_for_owner(num_examples=n, batch_size=config.batch_size, local_epochs=config.local_epochs,
                              rounds=config.rounds, epsilon=config.epsilon, delta=config.delta,
                              max_grad_norm=config.max_grad_norm)
        noise[steps] = plan.noise_multiplier
        most = max(most, epsilon_spent([(plan.noise_multiplier, plan.sample_rate, plan.total_steps)], config.delta))
    return DPSchedule(noise, most)


def run_fedmodel(name: str, config: RunConfig, s: Scenario, work: Path, *, timeout_s: float) -> VariantResult:
    """``fedmodel simulate --config`` on ``config`` (its own run folder under ``work``)."""
    slug = name.replace(" ", "-")
    run_dir = work / slug
    config_path = work / f"{slug}.toml"
    config_path.write_text(tomli_w.dumps({"fedmodel": config.replace(out=str(run_dir)).to_mapping()}), encoding="utf-8")
    run = run_measured([sys.executable, "-m", "fedmodel.cli", "simulate", "--config", str(config_path),
                        "--format", "json"], work / f"{slug}.log", timeout_s=timeout_s)
    report_path = run_dir / "report.json"
    if run.returncode != 0 or not report_path.exists():
        return _failed(name, run, f"exit code {run.returncode}: {run.tail()}")
    report = Report.read(report_path)
    rounds = report.rounds
    bad = [r.round for r in rounds if r.num_replies != s.sampled or r.num_failures]
    if report.status != "completed" or len(rounds) != s.rounds or bad:
        return _failed(name, run, f"report status {report.status}, {len(rounds)} rounds, short rounds {bad}")
    events, _ = read_events(run_dir / "progress.jsonl")
    ends = [float(e["time"]) for e in events if e["event"] == "round"]
    eps = report.privacy.max_epsilon
    return VariantResult(name, wall_s=run.wall_s, first_round_s=ends[0] - run.started if ends else None,
                         later_round_s=later_round_seconds(ends),
                         peak_rss_bytes=run.peak.rss_bytes, peak_processes=run.peak.processes,
                         accuracy=report.final.accuracy if report.final else None, epsilon_reported=eps,
                         epsilon_spent=eps)


def reference_values(config: RunConfig, s: Scenario, schedule: DPSchedule, rounds_file: Path) -> dict[str, Any]:
    """The reference app's run config for the same run as ``config``."""
    fraction = s.sampled / s.owners
    return {
        "num-server-rounds": config.rounds, "owners": config.clients, "fraction-train": fraction,
        "fraction-evaluate": fraction, "dataset": config.dataset, "partition": str(config.partition),
        "seed": config.seed, "test-fraction": config.test_fraction, "model": config.model,
        "batch-size": config.batch_size, "lr": config.lr, "local-epochs": config.local_epochs,
        "max-grad-norm": config.max_grad_norm, "target-delta": config.delta,
        "noise-multipliers": schedule.as_config(), "rounds-file": str(rounds_file),
    }


def run_reference_app(config: RunConfig, s: Scenario, schedule: DPSchedule, work: Path, *,
                      timeout_s: float) -> VariantResult:
    """The reference app through ``run_reference.py`` on ``s.owners`` simulated nodes."""
    rounds_file = work / "reference-rounds.jsonl"
    values_path = work / "reference.toml"
    values_path.write_text(tomli_w.dumps(reference_values(config, s, schedule, rounds_file)), encoding="utf-8")
    log_dir = work / "reference"
    log_dir.mkdir(exist_ok=True)
    run = run_measured([sys.executable, str(BENCH_DIR / "run_reference.py"), str(values_path),
                        "--supernodes", str(s.owners), "--log-dir", str(log_dir), "--timeout-s", str(timeout_s)],
                       work / "reference.log", timeout_s=timeout_s + 120)
    lines = [json.loads(x) for x in rounds_file.read_text(encoding="utf-8").splitlines()] if rounds_file.exists() else []
    if run.returncode != 0:
        return _failed(REFERENCE, run, f"exit code {run.returncode}: {run.tail()}")
    bad = [x["round"] for x in lines if x.get("replies") != s.sampled]
    if len(lines) != s.rounds or bad:
        return _failed(REFERENCE, run, f"{len(lines)} rounds written, rounds missing replies {bad}")
    return VariantResult(REFERENCE, wall_s=run.wall_s, first_round_s=lines[0]["time"] - run.started,
                         later_round_s=later_round_seconds([float(x["time"]) for x in lines]),
                         peak_rss_bytes=run.peak.rss_bytes, peak_processes=run.peak.processes,
                         accuracy=lines[-1]["accuracy"], epsilon_reported=max(x["epsilon-max"] for x in lines),
                         epsilon_spent=schedule.max_epsilon)


def _stop_tree(proc: subprocess.Popen[bytes]) -> int:
    """Stop a command that ran too long and every process it started (SuperLink, Ray), by pid."""
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        children = []
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
    for child in children:
        try:
            child.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(children, timeout=10)
    for child in alive:
        try:
            child.kill()
        except psutil.Error:
            pass
    return proc.wait()


def _failed(name: str, run: ProcessRun, reason: str) -> VariantResult:
    return VariantResult.failed(name, f"{reason} (log: {run.log})", wall_s=run.wall_s,
                                peak_rss_bytes=run.peak.rss_bytes, peak_processes=run.peak.processes)
