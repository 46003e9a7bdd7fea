"""Tests of :mod:`fedmodel.report.plots`."""

from __future__ import annotations

import copy
import struct
from pathlib import Path
from typing import Any

import pytest

from fedmodel.report.plots import write_plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_report(num_owners: int = 3, num_rounds: int = 3) -> dict[str, Any]:
    """Build a small report of a DP run.

    Parameters
    ----------
    num_owners : int
        Number of data owners.
    num_rounds : int
        Number of rounds.

    Returns
    -------
    dict[str, Any]
        A report dict shaped like ``report.json``.
    """
    rounds = []
    for r in range(1, num_rounds + 1):
        rounds.append({
            "round": r, "train_loss": 2.0 / r, "test_loss": 1.8 / r,
            "accuracy": 0.3 + 0.2 * r, "precision": 0.3 + 0.2 * r, "recall": 0.3 + 0.2 * r,
            "f1": 0.25 + 0.2 * r, "num_replies": num_owners, "num_failures": 0,
            "seconds": 1.5, "failures": [],
            "owner_epsilon": [{"owner": o, "epsilon": r * (0.9 + 0.01 * o)}
                              for o in range(num_owners)],
        })
    return {
        "status": "completed", "reason": None, "dataset": "digits",
        "num_clients": num_owners, "num_rounds": num_rounds, "strategy": "fedavg",
        "model": "mlp",
        "initial": {"test_loss": 2.3, "accuracy": 0.1, "precision": 0.05, "recall": 0.1,
                    "f1": 0.03},
        "rounds": rounds,
        "final": {"accuracy": 0.9, "precision": 0.9, "recall": 0.9, "f1": 0.85,
                  "test_loss": 0.6},
        "privacy": {
            "mode": "dp-sgd", "delta": 1e-5, "accountant": "rdp", "budget_epsilon": 3.0,
            "max_epsilon": 2.76,
            "owners": [{"owner": o, "epsilon": 2.7 + 0.03 * o, "budget_epsilon": 3.0,
                        "noise_multiplier": 1.1, "sample_rate": 0.2, "steps": 75,
                        "max_grad_norm": 1.0, "num_examples": 144}
                       for o in range(num_owners)],
        },
    }


@pytest.fixture
def report() -> dict[str, Any]:
    """A DP report with 3 rounds and 3 owners."""
    return make_report()


def png_size(path: Path) -> tuple[int, int]:
    """Check that ``path`` is a PNG and return its (width, height).

    Parameters
    ----------
    path : Path
        The file.

    Returns
    -------
    tuple[int, int]
        Pixel size from the IHDR chunk.
    """
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def assert_plots(plots: dict[str, Path], plots_dir: Path) -> None:
    """Check the three plots exist, are PNGs of the right size and not trivial.

    Parameters
    ----------
    plots : dict[str, Path]
        What :func:`write_plots` returned.
    plots_dir : Path
        Where they should be.
    """
    assert set(plots) == {"accuracy", "loss", "epsilon"}
    for name, path in plots.items():
        assert path == plots_dir / f"{name}.png"
        assert path.is_file()
        assert path.stat().st_size > 5_000
        assert png_size(path) == (700, 400)


def test_writes_three_valid_pngs(report: dict[str, Any], tmp_path: Path) -> None:
    plots_dir = tmp_path / "run" / "plots"
    plots = write_plots(report, plots_dir)
    assert_plots(plots, plots_dir)


def test_no_dp_still_writes_epsilon(report: dict[str, Any], tmp_path: Path) -> None:
    report["privacy"] = {"mode": "none", "delta": None, "accountant": None,
                         "budget_epsilon": None, "max_epsilon": None, "owners": []}
    for entry in report["rounds"]:
        entry["owner_epsilon"] = []
    plots = write_plots(report, tmp_path)
    assert_plots(plots, tmp_path)


def test_missing_values_are_skipped(report: dict[str, Any], tmp_path: Path) -> None:
    del report["initial"]
    report["rounds"][0]["train_loss"] = None
    report["rounds"][1]["train_loss"] = float("nan")
    report["rounds"][2]["accuracy"] = None
    report["rounds"][2]["owner_epsilon"] = None
    report["privacy"]["budget_epsilon"] = None
    plots = write_plots(report, tmp_path)
    assert_plots(plots, tmp_path)


def test_empty_report(tmp_path: Path) -> None:
    plots = write_plots({}, tmp_path)
    assert all(path.read_bytes()[:8] == PNG_MAGIC for path in plots.values())


def test_many_owners(tmp_path: Path) -> None:
    plots = write_plots(make_report(num_owners=30), tmp_path)
    assert_plots(plots, tmp_path)


def test_many_owners_are_one_collection_holding_every_owners_line() -> None:
    from matplotlib.collections import LineCollection

    from fedmodel.report.plots import _draw_epsilon, _new_figure

    report = make_report(num_owners=30)
    fig = _new_figure()
    _draw_epsilon(fig, report)
    ax = fig.axes[0]
    (lines,) = [c for c in ax.collections if isinstance(c, LineCollection)]
    segments = lines.get_segments()
    assert len(segments) == 30
    owner_7 = [(r["round"], e["epsilon"]) for r in report["rounds"] for e in r["owner_epsilon"] if e["owner"] == 7]
    assert any(seg.tolist() == [list(p) for p in owner_7] for seg in segments)
    top = max(e["epsilon"] for r in report["rounds"] for e in r["owner_epsilon"])
    assert ax.get_ylim()[1] >= top  # the collection is inside the view, not clipped off
    (max_line,) = [line for line in ax.get_lines() if line.get_label().startswith("max over 30 owners")]
    assert max_line.get_ydata()[-1] == pytest.approx(top)


def test_dollar_in_dataset_name_is_not_math(report: dict[str, Any], tmp_path: Path) -> None:
    report["dataset"] = r"$\notacommand{x}$ and $"
    plots = write_plots(copy.deepcopy(report), tmp_path)
    assert_plots(plots, tmp_path)
