"""Where a simulation's start-up goes: run one command, trace its process tree, time its first round.

    python benchmarks/startup.py --out RUN_DIR -- fedmodel simulate --out RUN_DIR [options...]

Samples ``/proc`` every 0.1 s for the command and every process it starts (Flower's SuperLink,
SuperExec, flwr-simulation, the ``flwr`` CLI calls, Ray's daemons and workers), and prints for each
group: when its first process started (seconds after the command), its CPU seconds up to the end of
round 1 and in all. CPU seconds are the measure to trust on a shared machine (wall time stretches
with the load); the load average is printed before and after. The run folder's progress events
give the ServerApp's start, round 1's start and end. Linux only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HZ = os.sysconf("SC_CLK_TCK")
GROUPS = (  # first match wins: (group, what a command line holds)
    ("flwr run", "/flwr run "), ("flwr log", "/flwr log "), ("flwr list", "/flwr list "),
    ("flower-superlink", "flower-superlink"), ("flower-superexec", "flower-superexec"),
    ("flwr-simulation (ServerApp, Ray driver)", "flwr-simulation"),
    ("Ray head (ray start --block)", "/ray start "), ("Ray daemons", "ray::DashboardAgent"),
    ("Ray daemons", "ray::RuntimeEnvAgent"), ("Ray daemons", "ray.util.client.server"),
    ("Ray workers (ClientApp actors)", "default_worker.py"), ("Ray workers (ClientApp actors)", "setup_worker.py"),
    ("Ray workers (ClientApp actors)", "ray::"), ("Ray daemons", "/ray/"), ("Ray daemons", "raylet"),
)


@dataclass
class Proc:
    start: float
    cpu: float
    cmd: str
    cpu_at_round1: float | None = None


def boot_time() -> float:
    return time.time() - float(Path("/proc/uptime").read_text().split()[0])


def read_proc(pid: int, boot: float) -> tuple[int, float, float, str] | None:
    """(parent, CPU seconds, start time, command line) of a process, or None once it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2:].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / HZ, boot + int(fields[19]) / HZ, cmd


def group(cmd: str, root: bool) -> str:
    if root:
        return "command (fedmodel CLI)"
    return next((name for name, needle in GROUPS if needle in cmd), "other")


def trace(cmd: list[str], run_dir: Path) -> tuple[int, float, dict[int, Proc], int, float | None]:
    """Run ``cmd``; (exit code, wall seconds, its processes, its pid, when round 1 ended)."""
    boot, started = boot_time(), time.time()
    proc = subprocess.Popen(cmd)
    tree, round1_at = {proc.pid}, None
    seen: dict[int, Proc] = {}
    progress = run_dir / "progress.jsonl"
    while True:
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            info = read_proc(int(name), boot)
            if info is None:
                continue
            parent, cpu, start, line = info
            pid = int(name)
            if pid in tree or (parent in tree and start >= started - 1):
                tree.add(pid)
                if pid not in seen:
                    seen[pid] = Proc(start - started, cpu, line)
                seen[pid].cpu, seen[pid].cmd = cpu, seen[pid].cmd or line
        if round1_at is None and progress.exists() and '"event": "round"' in progress.read_text():
            round1_at = time.time() - started
            for p in seen.values():
                p.cpu_at_round1 = p.cpu
        if proc.poll() is not None:
            return proc.returncode, time.time() - started, seen, proc.pid, round1_at
        time.sleep(0.1)


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="the run folder the command writes")
    parser.add_argument("--processes", action="store_true", help="also list every process")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    print(f"load average before: {load()}  ({os.cpu_count()} CPUs)", flush=True)
    rc, wall, procs, root, round1_at = trace(command, args.out)
    print(f"load average after: {load()}; exit code {rc}; wall {wall:.1f} s")
    events = [json.loads(line) for line in (args.out / "progress.jsonl").read_text().splitlines()] \
        if (args.out / "progress.jsonl").exists() else []
    t0 = time.time() - wall
    for kind, label in (("start", "ServerApp started"), ("round-start", "round 1 started"), ("round", "round 1 ended")):
        event = next((e for e in events if e["event"] == kind), None)
        if event is not None:
            print(f"{label:>22}: {event['time'] - t0:6.1f} s after the command started")
    totals: dict[str, list[float]] = {}
    for pid, p in procs.items():
        name = group(p.cmd, pid == root)
        first, at_r1, cpu, count = totals.setdefault(name, [p.start, 0.0, 0.0, 0])
        totals[name] = [min(first, p.start), at_r1 + (p.cpu_at_round1 or 0.0), cpu + p.cpu, count + 1]
    print("\n| process group | processes | first started s | CPU s to round 1 end | CPU s in all |\n|---|---|---|---|---|")
    for name, (first, at_r1, cpu, count) in sorted(totals.items(), key=lambda kv: kv[1][0]):
        print(f"| {name} | {count} | {first:.1f} | {at_r1:.1f} | {cpu:.1f} |")
    r1 = sum(v[1] for v in totals.values())
    if args.processes:
        print("\n| started s | CPU s to round 1 end | CPU s in all | command |\n|---|---|---|---|")
        for p in sorted(procs.values(), key=lambda p: p.start):
            print(f"| {p.start:.1f} | {p.cpu_at_round1 or 0.0:.1f} | {p.cpu:.1f} | {p.cmd[:110]} |")
    print(f"| all | {sum(int(v[3]) for v in totals.values())} | | {r1:.1f} | {sum(v[2] for v in totals.values()):.1f} |")
    if round1_at is not None:
        print(f"\nround 1 ended {round1_at:.1f} s after the command started (sampled); "
              f"{r1:.1f} CPU s by then = {r1 / round1_at:.2f} cores busy on average")
    sys.exit(rc)


if __name__ == "__main__":
    main()
