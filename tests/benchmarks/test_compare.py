"""The pure parts of benchmarks/compare.py: the process-tree memory sampler, scenarios, tables, the app copy.

No simulation runs here; benchmarks/compare.py itself is the end-to-end check.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT / "benchmarks" / "reference_app")]

from fedbench.reference import write_app  # noqa: E402
from fedbench.scenarios import FEDMODEL_DP, FEDMODEL_NO_DP, REFERENCE, run_config, scenario, unsupported  # noqa: E402
from fedbench.table import (  # noqa: E402
    VariantResult,
    format_repeats,
    format_results,
    later_round_seconds,
    ratio,
    ratio_rows,
)
from fedbench.treemem import TreeMemorySampler  # noqa: E402
from fedbench.variants import DPSchedule  # noqa: E402
from fedref.task import parse_noise_multipliers  # noqa: E402

MIB = 1024 * 1024

# A child that holds 64 MiB and starts a grandchild holding 96 MiB; "ready" once both are allocated.
# The grandchild exits when its stdin closes, i.e. when the child is killed.
TREE = textwrap.dedent("""
    import subprocess, sys
    grandchild = subprocess.Popen([sys.executable, "-c",
        "import sys; b = b'x' * (96 * 2**20); print('ready', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    held = b"y" * (64 * 2**20)
    assert grandchild.stdout.readline().strip() == "ready"
    print("ready", flush=True)
    sys.stdin.read()
""")

# Holds 128 MiB until told, then frees it and says "freed".
ALLOCATE_THEN_FREE = textwrap.dedent("""
    import sys
    held = b"x" * (128 * 2**20)
    print("ready", flush=True)
    sys.stdin.readline()
    del held
    print("freed", flush=True)
    sys.stdin.read()
""")


def _start(script: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.wait(timeout=10)


def test_sampler_sums_rss_of_child_and_grandchild() -> None:
    proc = _start(TREE)
    try:
        sampler = TreeMemorySampler(proc.pid)
        total = sampler.sample()
        assert total >= 160 * MIB
        assert sampler.peak.processes == 2
        assert sampler.peak.rss_bytes == total
    finally:
        _stop(proc)


def test_sampler_keeps_the_peak_after_memory_is_freed() -> None:
    proc = _start(ALLOCATE_THEN_FREE)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        with TreeMemorySampler(proc.pid, interval_s=0.05) as sampler:
            proc.stdin.write("free\n")
            proc.stdin.flush()
            assert proc.stdout.readline().strip() == "freed"
            after = sampler.sample()
        peak = sampler.peak
        assert peak.rss_bytes >= 128 * MIB
        assert after < peak.rss_bytes - 64 * MIB
        assert peak.samples >= 2
    finally:
        _stop(proc)


def test_sampler_reads_zero_once_the_tree_has_exited() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    sampler = TreeMemorySampler(proc.pid)
    proc.wait(timeout=30)
    assert sampler.sample() == 0


@pytest.mark.parametrize("interval", [0.0, -1.0])
def test_sampler_refuses_a_non_positive_interval(interval: float) -> None:
    with pytest.raises(ValueError, match="interval_s"):
        TreeMemorySampler(1, interval_s=interval)


@pytest.mark.parametrize(("a", "b", "expected"), [(6.0, 3.0, 2.0), (1, 4, 0.25), (None, 3.0, None),
                                                   (3.0, None, None), (3.0, 0.0, None)])
def test_ratio(a: float | None, b: float | None, expected: float | None) -> None:
    assert ratio(a, b) == expected


def _result(name: str, wall: float, first: float, rss_mib: int, later: float = 2.0) -> VariantResult:
    return VariantResult(name, wall_s=wall, first_round_s=first, later_round_s=later, peak_rss_bytes=rss_mib * MIB,
                         peak_processes=9, accuracy=0.9, epsilon_reported=2.0, epsilon_spent=3.0)


def test_ratio_rows_divide_the_named_variants() -> None:
    results = [_result(FEDMODEL_DP, 20.0, 10.0, 2000, later=3.0), _result(FEDMODEL_NO_DP, 10.0, 8.0, 1000, later=1.0),
               _result(REFERENCE, 60.0, 30.0, 3000, later=6.0)]
    assert ratio_rows(results) == [("fedmodel DP / fedmodel no DP", 2.0, 1.25, 3.0, 2.0),
                                   ("reference / fedmodel DP", 3.0, 3.0, 2.0, 1.5)]


def test_ratio_rows_leave_out_variants_that_did_not_complete() -> None:
    results = [_result(FEDMODEL_DP, 20.0, 10.0, 2000), VariantResult.failed(FEDMODEL_NO_DP, "boom", wall_s=3.0),
               VariantResult.not_supported(REFERENCE, "too many owners")]
    assert ratio_rows(results) == [("fedmodel DP / fedmodel no DP", None, None, None, None),
                                   ("reference / fedmodel DP", None, None, None, None)]


def test_format_results_prints_no_numbers_for_unsupported_variants() -> None:
    text = format_results([_result(FEDMODEL_DP, 20.0, 10.0, 2048), _result(FEDMODEL_NO_DP, 10.0, 8.0, 1024),
                           VariantResult.not_supported(REFERENCE, "a | b\nc")])
    lines = text.splitlines()
    assert lines[2] == "| fedmodel DP | 20.0 | 10.0 | 2.00 | 2,048 | 9 | 0.900 | 2.000 | 3.000 | ok |"
    assert lines[4] == "| reference (Flower + Opacus) | - | - | - | - | - | - | - | - | not supported yet: a / b c |"
    assert "| fedmodel DP / fedmodel no DP | 2.00x | 1.25x | 1.00x | 2.00x |" in lines
    assert "| reference / fedmodel DP | - | - | - | - |" in lines


@pytest.mark.parametrize(("ends", "expected"), [([], None), ([5.0], None), ([5.0, 7.0, 11.0], 3.0)])
def test_later_round_seconds_is_the_mean_gap_between_round_ends(ends: list[float], expected: float | None) -> None:
    assert later_round_seconds(ends) == expected


def test_scenario_overrides_keep_the_sampling_rule() -> None:
    assert scenario("thousand", owners=30, rounds=2).sampled == 30
    assert scenario("million", owners=100).sampled == 10
    assert scenario("small").describe() == "10 owners x 5 rounds, all training"
    with pytest.raises(ValueError, match="--scenario"):
        scenario("huge")
    with pytest.raises(ValueError, match="--owners 0"):
        scenario("small", owners=0)


def test_million_owners_run_in_cohorts_and_the_reference_is_not_started_with_a_million_nodes() -> None:
    million = scenario("million")
    assert "one Flower node per owner" in (unsupported(million, REFERENCE, 1437) or "")
    assert unsupported(million, FEDMODEL_DP, 1437) is None and unsupported(million, FEDMODEL_NO_DP, 1437) is None
    assert "cohorts" in (unsupported(million, FEDMODEL_DP, 1437, nodes=0) or "")  # sampling needs cohorts
    config = run_config(million)
    assert (config.clients, config.nodes, config.owners_per_round, str(config.partition)) == (
        1_000_000, 2, 10, "sample:2")
    config.validate()
    assert "1,437 training rows" in (unsupported(scenario("thousand", owners=2000), REFERENCE, 1437) or "")
    assert unsupported(scenario("small"), FEDMODEL_DP, 1437) is None
    assert not run_config(scenario("small"), nodes=10).cohorts  # as many nodes as owners: one each
    assert run_config(scenario("thousand")).cohorts


def test_the_reference_app_reads_the_noise_multipliers_the_harness_writes() -> None:
    schedule = DPSchedule({5: 1.884765625, 4: 2.0}, 2.99)
    assert schedule.as_config() == "4:2.0,5:1.884765625"
    assert parse_noise_multipliers(schedule.as_config()) == {4: 2.0, 5: 1.884765625}
    with pytest.raises(ValueError, match="STEPS:SIGMA"):
        parse_noise_multipliers("5=1.2")


def test_write_app_copies_the_sources_and_sets_the_run_config(tmp_path: Path) -> None:
    rounds_file = str(tmp_path / "r.jsonl")
    app = write_app(tmp_path / "app", {"owners": 30, "rounds-file": rounds_file})
    assert (app / "fedref" / "client_app.py").exists()
    config = tomllib.loads((app / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert (config["owners"], config["rounds-file"], config["num-server-rounds"]) == (30, rounds_file, 5)
    with pytest.raises(ValueError, match="unknown reference app config keys"):
        write_app(tmp_path / "again", {"num-rounds": 3})


def test_the_gpu_scenario_refuses_a_machine_without_a_gpu() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the refusal is for machines without one")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compare.py"), "--scenario", "gpu", "--no-append"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 2 and "no CUDA GPU on this machine" in proc.stderr
    assert "Traceback" not in proc.stderr


def _run(accuracies: tuple[float | None, float | None, float | None], walls: tuple[float, float, float],
         failed: str = "") -> list[VariantResult]:
    names = (FEDMODEL_DP, FEDMODEL_NO_DP, REFERENCE)
    return [VariantResult.failed(name, "timed out") if name == failed else
            VariantResult(name, wall_s=wall, first_round_s=wall / 2, accuracy=acc)
            for name, acc, wall in zip(names, accuracies, walls, strict=True)]


def test_repeats_summarise_median_times_and_accuracy_paired_by_seed() -> None:
    repeats = [_run((0.30, 0.40, 0.20), (40.0, 36.0, 200.0)),
               _run((0.20, 0.42, 0.25), (50.0, 38.0, 220.0)),
               _run((0.40, 0.41, 0.30), (44.0, 37.0, 240.0))]
    text = format_repeats(repeats, [42, 43, 44])
    assert "Summary of 3 runs (seeds 42, 43, 44" in text
    dp_row = next(line for line in text.splitlines() if line.startswith(f"| {FEDMODEL_DP} |"))
    assert "| 3 of 3 | 44.0 | 22.0 | 0.300 ± 0.100 (0.200-0.400) | 0.300 / 0.200 / 0.400 |" in dp_row
    assert "| reference / fedmodel DP | 5.00x | 5.00x |" in text  # 220 / 44: medians, not means
    assert "| fedmodel DP / fedmodel no DP | 1.19x |" in text  # 44 / 37
    # paired differences 0.10, -0.05, 0.10: mean 0.05, sd 0.0866
    assert "paired by seed: 0.050 ± 0.087 (-0.050-0.100); fedmodel DP lower in 1 of 3 runs." in text


def test_repeats_leave_failed_runs_out_of_the_numbers() -> None:
    repeats = [_run((0.30, 0.40, 0.20), (40.0, 36.0, 200.0)),
               _run((None, 0.42, 0.25), (50.0, 38.0, 220.0), failed=FEDMODEL_DP)]
    text = format_repeats(repeats, [1, 2])
    dp_row = next(line for line in text.splitlines() if line.startswith(f"| {FEDMODEL_DP} |"))
    assert "| 1 of 2 | 40.0 |" in dp_row and "0.300 / - |" in dp_row
    assert "fedmodel DP lower in 0 of 1 runs." in text  # the failed run is not paired


def test_repeat_must_be_at_least_one() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compare.py"), "--scenario", "small", "--repeat", "0",
                           "--no-append"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 2 and "--repeat 0: expected a number of runs >= 1" in proc.stderr
