"""One benchmark variant's measurements, the ratios between variants, and the Markdown tables."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from fedbench.scenarios import FEDMODEL_DP, FEDMODEL_NO_DP, REFERENCE

MIB = 1024 * 1024
OK = "ok"


@dataclass(frozen=True)
class VariantResult:
    """What one variant measured; every number is None when it did not run or failed.

    ``later_round_s`` is the mean time of rounds 2..R (end of one round to the end of the next),
    the steady state once start-up is paid. ``epsilon_reported`` is the largest epsilon an owner reported; ``epsilon_spent`` the largest an
    owner really spent over the whole run (they differ for the reference, which reports one call's).
    """

    name: str
    status: str = OK
    wall_s: float | None = None
    first_round_s: float | None = None
    later_round_s: float | None = None
    peak_rss_bytes: int | None = None
    peak_processes: int | None = None
    accuracy: float | None = None
    epsilon_reported: float | None = None
    epsilon_spent: float | None = None

    @property
    def ok(self) -> bool:
        return self.status == OK

    @classmethod
    def not_supported(cls, name: str, reason: str) -> VariantResult:
        return cls(name, status=f"not supported yet: {reason}")

    @classmethod
    def failed(cls, name: str, reason: str, **measured: float | int | None) -> VariantResult:
        return cls(name, status=f"failed: {reason}", **measured)  # type: ignore[arg-type]


def ratio(numerator: float | int | None, denominator: float | int | None) -> float | None:
    """``numerator / denominator``, or None when either is missing or the denominator is not > 0."""
    if numerator is None or denominator is None or not denominator > 0:
        return None
    return float(numerator) / float(denominator)


RATIOS: tuple[tuple[str, str, str], ...] = (
    ("fedmodel DP / fedmodel no DP", FEDMODEL_DP, FEDMODEL_NO_DP),
    ("reference / fedmodel DP", REFERENCE, FEDMODEL_DP),
)


RatioRow = tuple[str, float | None, float | None, float | None, float | None]


def ratio_rows(results: list[VariantResult]) -> list[RatioRow]:
    """(label, wall, first round, later rounds, peak RSS) ratios between variants that both completed."""
    by_name = {r.name: r for r in results if r.ok}
    rows = []
    for label, top, bottom in RATIOS:
        a, b = by_name.get(top), by_name.get(bottom)
        if a is None or b is None:
            rows.append((label, None, None, None, None))
        else:
            rows.append((label, ratio(a.wall_s, b.wall_s), ratio(a.first_round_s, b.first_round_s),
                         ratio(a.later_round_s, b.later_round_s), ratio(a.peak_rss_bytes, b.peak_rss_bytes)))
    return rows


def later_round_seconds(round_end_times: list[float]) -> float | None:
    """Mean time between consecutive round ends (rounds 2..R); None with fewer than two rounds."""
    if len(round_end_times) < 2:
        return None
    return (round_end_times[-1] - round_end_times[0]) / (len(round_end_times) - 1)


def _num(value: float | int | None, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def format_results(results: list[VariantResult]) -> str:
    """The variants table and the ratios table, in Markdown."""
    lines = [
        "| variant | wall s | first round s | later rounds s/round | peak RSS MiB (tree) | processes at peak "
        "| test accuracy | max epsilon reported | max epsilon spent | status |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        rss = None if r.peak_rss_bytes is None else r.peak_rss_bytes / MIB
        lines.append(
            f"| {r.name} | {_num(r.wall_s, 1)} | {_num(r.first_round_s, 1)} | {_num(r.later_round_s, 2)} | {_num(rss, 0)} | "
            f"{_num(r.peak_processes, 0)} | {_num(r.accuracy, 3)} | {_num(r.epsilon_reported, 3)} | "
            f"{_num(r.epsilon_spent, 3)} | {' '.join(r.status.replace('|', '/').split())} |"
        )
    lines += ["", "| ratio | wall | first round | later rounds | peak RSS |", "|---|---|---|---|---|"]
    for label, *values in ratio_rows(results):
        lines.append(f"| {label} | " + " | ".join(_times(v) for v in values) + " |")
    return "\n".join(lines) + "\n"


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _spread(values: list[float]) -> str:
    """``mean ± sd (min-max)`` of the values (the sample standard deviation), or ``-``."""
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {sd:.3f} ({min(values):.3f}-{max(values):.3f})"


def format_repeats(repeats: list[list[VariantResult]], seeds: list[int]) -> str:
    """The summary of ``repeats`` (one list of variant results per run seed), in Markdown.

    Per variant: completed runs, median wall / first-round time, test accuracy as mean ± sd (min-max)
    and per seed. Ratios are of the medians. Accuracy differences are paired by seed (the same rows,
    split and initial weights on both sides; each side's own DP noise).
    """
    names = [r.name for r in repeats[0]]
    done = {name: [run[i] for run in repeats if run[i].ok] for i, name in enumerate(names)}
    lines = [
        f"Summary of {len(repeats)} runs (seeds {', '.join(map(str, seeds))}; each run: every variant on that seed's "
        "split and initial weights):",
        "",
        "| variant | runs completed | median wall s | median first round s | test accuracy mean ± sd (min-max) "
        "| accuracy per seed |",
        "|---|---|---|---|---|---|",
    ]
    medians: dict[str, tuple[float | None, float | None]] = {}
    for i, name in enumerate(names):
        results = done[name]
        wall = _median([r.wall_s for r in results if r.wall_s is not None])
        first = _median([r.first_round_s for r in results if r.first_round_s is not None])
        medians[name] = (wall, first)
        per_seed = " / ".join(_num(run[i].accuracy, 3) for run in repeats)
        lines.append(f"| {name} | {len(results)} of {len(repeats)} | {_num(wall, 1)} | {_num(first, 1)} | "
                     f"{_spread([r.accuracy for r in results if r.accuracy is not None])} | {per_seed} |")
    lines += ["", "| ratio of medians | wall | first round |", "|---|---|---|"]
    for label, top, bottom in RATIOS:
        if top in medians and bottom in medians:
            (wall_a, first_a), (wall_b, first_b) = medians[top], medians[bottom]
            lines.append(f"| {label} | {_times(ratio(wall_a, wall_b))} | {_times(ratio(first_a, first_b))} |")
    if FEDMODEL_DP in names and REFERENCE in names:
        dp, ref = names.index(FEDMODEL_DP), names.index(REFERENCE)
        diffs = [run[dp].accuracy - run[ref].accuracy for run in repeats  # type: ignore[operator]
                 if run[dp].ok and run[ref].ok and run[dp].accuracy is not None and run[ref].accuracy is not None]
        if diffs:
            lines += ["", f"Test accuracy, fedmodel DP minus reference, paired by seed: {_spread(diffs)}; "
                          f"fedmodel DP lower in {sum(d < 0 for d in diffs)} of {len(diffs)} runs."]
    return "\n".join(lines) + "\n"
