"""Scale benchmark: owners trained per second against the number of Ray workers, side by side.

Runs the same DP simulation (digits, N owners, R rounds) once per worker count in one invocation,
on this machine's private Ray, and prints owner-rounds per second in the steady state (rounds 2..R,
so Ray and import start-up are left out) and overall, with the ratio to one worker. The results
are appended, with the date and the machine, to benchmarks/RESULTS.md.

    python benchmarks/scale.py [--owners 40] [--rounds 3] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from fedmodel.simulations.runner import run_simulation

from fedmodel.config import RunConfig
from fedmodel.report.model import Report

RESULTS = Path(__file__).with_name("RESULTS.md")


def measure(owners: int, rounds: int, workers: int, cpus: int, folder: Path) -> dict[str, float]:
    """One simulation with ``workers`` Ray workers (each ``cpus // workers`` CPUs)."""
    config = RunConfig(clients=owners, rounds=rounds, cpus_per_worker=max(cpus // workers, 1),
                       out=str(folder / f"workers-{workers}"))
    started = time.perf_counter()
    report = Report.from_dict(run_simulation(config).report)
    total = time.perf_counter() - started
    steady = sum(r.seconds or 0.0 for r in report.rounds[1:])
    steady_rounds = sum(r.num_replies or 0 for r in report.rounds[1:])
    return {
        "workers": workers, "total_s": total, "steady_s": steady,
        "steady_owner_rounds_per_s": steady_rounds / steady if steady else float("nan"),
        "overall_owner_rounds_per_s": owners * rounds / total,
        "accuracy": report.final.accuracy if report.final else float("nan"), "max_epsilon": report.privacy.max_epsilon,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--owners", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    cpus = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="fedmodel-bench-") as tmp:
        rows = [measure(args.owners, args.rounds, w, cpus, Path(tmp)) for w in args.workers]
    base = rows[0]["steady_owner_rounds_per_s"]
    lines = [
        f"## scale: {time.strftime('%Y-%m-%d %H:%M')} on {platform.node() or 'this machine'} "
        f"({cpus} CPUs, {platform.processor() or platform.machine()}), digits, {args.owners} owners x "
        f"{args.rounds} rounds, DP epsilon 3, private local Ray",
        "",
        "| Ray workers | total s | steady s (rounds 2..R) | owner-rounds/s steady | owner-rounds/s overall "
        "| ratio to first (steady) | accuracy | max epsilon |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['workers']} | {r['total_s']:.1f} | {r['steady_s']:.1f} | {r['steady_owner_rounds_per_s']:.2f} | "
            f"{r['overall_owner_rounds_per_s']:.2f} | {r['steady_owner_rounds_per_s'] / base:.2f}x | "
            f"{r['accuracy']:.3f} | {r['max_epsilon']:.3f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    with RESULTS.open("a", encoding="utf-8") as fh:
        fh.write(("\n" if RESULTS.exists() and RESULTS.stat().st_size else "# Benchmark results\n\n") + text)


if __name__ == "__main__":
    main()
