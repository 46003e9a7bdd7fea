"""Benchmark: one scenario three ways, fedmodel with DP, fedmodel without DP, plain Flower + Opacus.

    python benchmarks/compare.py --scenario small|thousand|million [--owners N] [--rounds R] [--nodes K]
                                 [--repeat N] [--note TEXT]
    python benchmarks/compare.py --scenario gpu [--batch 256 1024 4096] [--tf32]

Runs the variants one after another on this machine, each as its own process tree on a private
local Ray: ``fedmodel simulate``, ``fedmodel simulate`` with ``dp = false``, and the reference app
in benchmarks/reference_app (a new PrivacyEngine per client call, as Flower's Opacus example does)
with the same model, rows, batch size, learning rate, rounds and fedmodel's calibrated noise
multiplier, hence the same epsilon spent. Prints wall time, time from the command's start to the
end of round 1, the process tree's peak summed RSS, test accuracy, epsilon and the ratios, and
appends them with the date and machine to benchmarks/RESULTS.md. A variant that cannot run a
scenario yet prints "not supported yet" and why, never a number. With DP noise, one run's test
accuracy is one draw: ``--repeat N`` runs every variant on N run seeds (the split, initial weights
and fedmodel's noise follow the seed; the reference's noise is unseeded, as in Flower's example)
and summarises median times and accuracy as mean ± sd, also paired by seed.

Scenarios: small = 10 owners x 5 rounds; thousand = 1000 owners x 3 rounds, all training;
million = 1,000,000 registered owners, 10 sampled per round, each holding 2 rows drawn from the
training rows (partition sample:2; the reference, one Flower node per owner, is not run there).
fedmodel hosts owners in cohorts on ``--nodes`` Flower nodes (default 2) when they outnumber them.

gpu = DP-SGD against non-private step throughput of a small CNN on this machine's GPU, Opacus'
per-sample gradients from hooks, ghost clipping and torch.func side by side (benchmarks/gpu_throughput.py);
it refuses to run without a GPU.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from fedbench.scenarios import (
    DEFAULT_NODES,
    FEDMODEL_DP,
    FEDMODEL_NO_DP,
    VARIANTS,
    Scenario,
    run_config,
    scenario,
    unsupported,
)
from fedbench.table import VariantResult, format_repeats, format_results
from fedbench.variants import DPSchedule, dp_schedule, run_fedmodel, run_reference_app

from fedmodel.config import RunConfig
from fedmodel.data.dataset import train_test_split
from fedmodel.data.loading import load_dataset

RESULTS = Path(__file__).with_name("RESULTS.md")


def training_rows(config: RunConfig) -> int:
    """Rows left for the owners once the test split is held out."""
    train, _ = train_test_split(load_dataset(config), config.test_fraction, config.seed)
    return len(train)


def run_variants(s: Scenario, work: Path, *, timeout_s: float, nodes: int = DEFAULT_NODES,
                 seed: int | None = None) -> tuple[list[VariantResult], DPSchedule | None]:
    """Every variant on ``s`` (with run seed ``seed``, else the scenario's), in turn; the DP schedule is
    computed before any clock starts."""
    config = run_config(s, nodes=nodes)
    if seed is not None:
        config = config.replace(seed=seed)
    work.mkdir(parents=True, exist_ok=True)
    rows = training_rows(config)
    reasons = {v: unsupported(s, v, rows, nodes=nodes) for v in VARIANTS}
    schedule = dp_schedule(config) if any(r is None for r in reasons.values()) else None
    results = []
    for variant in VARIANTS:
        reason = reasons[variant]
        if reason is not None:
            result = VariantResult.not_supported(variant, reason)
        elif schedule is None:
            raise AssertionError("unreachable: a schedule exists whenever a variant runs")
        else:
            print(f"running {variant} ...", file=sys.stderr, flush=True)
            if variant == FEDMODEL_DP:
                result = run_fedmodel(variant, config, s, work, timeout_s=timeout_s)
            elif variant == FEDMODEL_NO_DP:
                result = run_fedmodel(variant, config.replace(dp=False), s, work, timeout_s=timeout_s)
            else:
                result = run_reference_app(config, s, schedule, work, timeout_s=timeout_s)
        print(f"  {variant}: {result.status}"
              + (f", {result.wall_s:.1f} s" if result.wall_s is not None else ""), file=sys.stderr, flush=True)
        results.append(result)
    return results, schedule


def header(s: Scenario, args: argparse.Namespace, schedule: DPSchedule | None, started: str, load: str) -> str:
    config = run_config(s, nodes=args.nodes)
    overrides = "".join(f" --{k} {v}" for k, v in (("owners", args.owners), ("rounds", args.rounds),
                                                   ("nodes", args.nodes),
                                                   ("repeat", args.repeat if args.repeat > 1 else None))
                        if v is not None)
    hosting = (f"fedmodel: {config.nodes} Flower nodes hosting cohorts of owners" if config.cohorts
               else "fedmodel: one Flower node per owner")
    noise = ("-" if schedule is None else
             ", ".join(f"{sigma:.4f} ({steps} batches/epoch)" for steps, sigma in sorted(schedule.noise_multipliers.items())))
    return (
        f"## compare: {s.name}{overrides}: {s.describe()}\n\n"
        f"{started} on {platform.node() or 'this machine'} ({os.cpu_count()} CPUs, "
        f"{platform.processor() or platform.machine()}), load average {load}; private local Ray, 1 CPU per worker. "
        f"{config.dataset}, {config.partition}, {config.model}, batch {config.batch_size}, lr {config.lr:g}, "
        f"{config.local_epochs} local epoch; DP: epsilon {config.epsilon:g}, delta {config.delta:g}, "
        f"clip {config.max_grad_norm:g}, noise multiplier {noise}. {hosting}; the reference: one node per owner.\n"
    )


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", required=True, choices=["small", "thousand", "million", "gpu"])
    parser.add_argument("--owners", type=int, help="change the scenario's number of owners")
    parser.add_argument("--rounds", type=int, help="change the scenario's number of rounds")
    parser.add_argument("--nodes", type=int, default=DEFAULT_NODES,
                        help=f"fedmodel's Flower nodes hosting the owners; 0 = one per owner [default: {DEFAULT_NODES}]")
    parser.add_argument("--timeout-s", type=float, default=3600.0, help="per variant [default: 3600]")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run every variant this many times, on run seeds seed, seed+1, ...: a table per run and "
                             "a summary (median times, accuracy mean ± sd, paired by seed) [default: 1]")
    parser.add_argument("--note", default="", help="a sentence written under the table (e.g. what else ran)")
    parser.add_argument("--keep", action="store_true", help="keep the run folders and logs (printed)")
    parser.add_argument("--no-append", action="store_true", help=f"print only; do not append to {RESULTS.name}")
    parser.add_argument("--batch", type=int, nargs="+", default=[256, 1024, 4096], help="gpu: batch sizes")
    parser.add_argument("--tf32", action="store_true", help="gpu: allow TF32 matrix products and convolutions")
    args = parser.parse_args()
    if args.scenario == "gpu":
        return gpu(args, parser)
    if args.repeat < 1:
        parser.error(f"--repeat {args.repeat}: expected a number of runs >= 1")
    try:
        s = scenario(args.scenario, owners=args.owners, rounds=args.rounds)
    except ValueError as exc:
        parser.error(str(exc))
    load, started_at = _load(), time.strftime("%Y-%m-%d %H:%M")
    work = Path(tempfile.mkdtemp(prefix="fedmodel-compare-"))
    started = time.perf_counter()
    repeats: list[list[VariantResult]] = []
    schedule: DPSchedule | None = None
    base_seed = run_config(s, nodes=args.nodes).seed
    seeds = [base_seed + i for i in range(args.repeat)]
    try:
        for seed in seeds:
            if args.repeat > 1:
                print(f"run {len(repeats) + 1} of {args.repeat}: seed {seed}", file=sys.stderr, flush=True)
            results, run_schedule = run_variants(s, work / f"seed-{seed}", timeout_s=args.timeout_s,
                                                 nodes=args.nodes, seed=seed if args.repeat > 1 else None)
            repeats.append(results)
            schedule = schedule or run_schedule
    finally:
        if args.keep or not repeats or any(r.status.startswith("failed") for run in repeats for r in run):
            print(f"run folders and logs kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    text = header(s, args, schedule, started_at, f"{load} at start, {_load()} at end") + "\n"
    if args.repeat == 1:
        text += format_results(repeats[0])
    else:
        text += "\n".join(f"Run {i + 1}, seed {seed}:\n\n{format_results(run)}" for i, (seed, run)
                          in enumerate(zip(seeds, repeats, strict=True))) + "\n" + format_repeats(repeats, seeds)
    results = [r for run in repeats for r in run]
    text += f"\nWhole command: {time.perf_counter() - started:.0f} s.{' ' + args.note if args.note else ''}\n"
    print(text)
    if not args.no_append:
        with RESULTS.open("a", encoding="utf-8") as fh:
            fh.write("\n" + text)
    return 0 if all(r.ok or r.status.startswith("not supported") for r in results) else 1


def gpu(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """The GPU scenario: the throughput table of benchmarks/gpu_throughput.py, appended like the others."""
    import torch
    from gpu_throughput import throughput_table

    if not torch.cuda.is_available():
        parser.error("--scenario gpu: no CUDA GPU on this machine (torch.cuda.is_available() is False)")
    text = throughput_table(torch.device("cuda"), args.batch, tf32=args.tf32)
    if args.note:
        text += f"\n{args.note}\n"
    print(text)
    if not args.no_append:
        with RESULTS.open("a", encoding="utf-8") as fh:
            fh.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
