"""PNG plots of a run's report: accuracy, loss and privacy budget per round.

matplotlib is imported lazily inside the functions, so importing this module
is cheap. Figures are built with :class:`matplotlib.figure.Figure` and an
explicit Agg canvas: no pyplot, no global backend state.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["write_plots"]

FIGSIZE: tuple[float, float] = (7.0, 4.0)
"""Figure size in inches."""

DPI: int = 100
"""Resolution of the written PNGs."""

MANY_OWNERS: int = 20
"""Above this many owners the epsilon plot draws thin lines and no legend."""

NO_DP_TEXT = "no differential privacy: no epsilon"



def write_plots(report: Mapping[str, Any], plots_dir: Path) -> dict[str, Path]:
    """Write the accuracy, loss and epsilon plots of a run.

    Parameters
    ----------
    report : Mapping[str, Any]
        The run report (the content of ``report.json``). Missing keys and
        ``None`` values are tolerated.
    plots_dir : Path
        Folder to write into; created (with parents) when absent.

    Returns
    -------
    dict[str, Path]
        ``{"accuracy": ..., "loss": ..., "epsilon": ...}``: the written files.
    """
    plots_dir = Path(plots_dir)
    plots_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for name, draw in _BUILDERS.items():
        fig = _new_figure()
        try:
            draw(fig, report)
            path = plots_dir / f"{name}.png"
            _save(fig, path)
        finally:
            fig.clear()
        written[name] = path
    return written


# ---------------------------------------------------------------------------
# figure helpers


def _new_figure() -> Figure:
    """Create a detached figure with an Agg canvas.

    Returns
    -------
    Figure
        A figure of :data:`FIGSIZE` inches at :data:`DPI`.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> None:
    """Lay out and save a figure as PNG.

    Parameters
    ----------
    fig : Figure
        The figure to save.
    path : Path
        Destination file.
    """
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=DPI)


def _plain(text: Any) -> str:
    """Turn a value into matplotlib text that is never parsed as math.

    Parameters
    ----------
    text : Any
        Any value; ``None`` becomes ``"?"``.

    Returns
    -------
    str
        The text with ``$`` escaped, so mathtext never kicks in.
    """
    return ("?" if text is None else str(text)).replace("$", r"\$")


def _title(report: Mapping[str, Any], what: str) -> str:
    """Build a plot title naming the dataset.

    Parameters
    ----------
    report : Mapping[str, Any]
        The run report.
    what : str
        What the plot shows.

    Returns
    -------
    str
        E.g. ``"digits: test accuracy and macro F1"``.
    """
    return f"{_plain(report.get('dataset'))}: {what}"


def _integer_rounds(ax: Axes) -> None:
    """Label the x axis as rounds with integer ticks.

    Parameters
    ----------
    ax : Axes
        The axes to format.
    """
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)


def _centered_text(ax: Axes, text: str) -> None:
    """Write a message in the middle of empty axes.

    Parameters
    ----------
    ax : Axes
        The axes to write on.
    text : str
        The message.
    """
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=13,
            color="dimgray", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


# ---------------------------------------------------------------------------
# report access


def finite_number(value: Any) -> float | None:
    """Return a finite float, or ``None`` for missing / NaN / non-numeric.

    Parameters
    ----------
    value : Any
        A value from the report.

    Returns
    -------
    float | None
        The value as a finite float, else ``None``.
    """
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _rounds(report: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Return the per-round entries of the report that are mappings.

    Parameters
    ----------
    report : Mapping[str, Any]
        The run report.

    Returns
    -------
    list[Mapping[str, Any]]
        The rounds, possibly empty.
    """
    rounds = report.get("rounds")
    if not isinstance(rounds, Sequence) or isinstance(rounds, str):
        return []
    return [entry for entry in rounds if isinstance(entry, Mapping)]


def _series(report: Mapping[str, Any], key: str,
            with_initial: bool = True) -> tuple[list[float], list[float]]:
    """Collect (round, value) points of one metric, skipping missing values.

    Parameters
    ----------
    report : Mapping[str, Any]
        The run report.
    key : str
        Metric key in each round entry (and in ``report["initial"]``).
    with_initial : bool
        Include round 0 from ``report["initial"]`` when present.

    Returns
    -------
    tuple[list[float], list[float]]
        x (rounds) and y (values) of the finite points.
    """
    xs: list[float] = []
    ys: list[float] = []
    initial = report.get("initial")
    if with_initial and isinstance(initial, Mapping):
        value = finite_number(initial.get(key))
        if value is not None:
            xs.append(0.0)
            ys.append(value)
    for position, entry in enumerate(_rounds(report), start=1):
        value = finite_number(entry.get(key))
        if value is None:
            continue
        round_number = finite_number(entry.get("round"))
        xs.append(float(position) if round_number is None else round_number)
        ys.append(value)
    return xs, ys


def _owner_epsilons(report: Mapping[str, Any]) -> dict[str, tuple[list[float], list[float]]]:
    """Collect the cumulative epsilon of every owner per round.

    Parameters
    ----------
    report : Mapping[str, Any]
        The run report.

    Returns
    -------
    dict[str, tuple[list[float], list[float]]]
        Owner label -> (rounds, epsilons), in order of first appearance.
    """
    curves: dict[str, tuple[list[float], list[float]]] = {}
    for position, entry in enumerate(_rounds(report), start=1):
        round_number = finite_number(entry.get("round"))
        x = float(position) if round_number is None else round_number
        spent = entry.get("owner_epsilon")
        if not isinstance(spent, Sequence) or isinstance(spent, str):
            continue
        for item in spent:
            if not isinstance(item, Mapping):
                continue
            epsilon = finite_number(item.get("epsilon"))
            if epsilon is None:
                continue
            xs, ys = curves.setdefault(_plain(item.get("owner")), ([], []))
            xs.append(x)
            ys.append(epsilon)
    return curves


def _budget(privacy: Mapping[str, Any]) -> float | None:
    """Return the epsilon budget: the global one, else the owners' largest.

    Parameters
    ----------
    privacy : Mapping[str, Any]
        ``report["privacy"]``.

    Returns
    -------
    float | None
        The budget, or ``None`` when unknown.
    """
    budget = finite_number(privacy.get("budget_epsilon"))
    if budget is not None:
        return budget
    owners = privacy.get("owners")
    if not isinstance(owners, Sequence) or isinstance(owners, str):
        return None
    budgets = [finite_number(o.get("budget_epsilon")) for o in owners if isinstance(o, Mapping)]
    known = [b for b in budgets if b is not None]
    return max(known) if known else None


def _is_private(report: Mapping[str, Any]) -> bool:
    """Tell whether the run used differential privacy.

    Parameters
    ----------
    report : Mapping[str, Any]
        The run report.

    Returns
    -------
    bool
        False when the privacy section is absent or its mode is ``"none"``.
    """
    privacy = report.get("privacy")
    if not isinstance(privacy, Mapping):
        return False
    mode = privacy.get("mode")
    return mode is not None and str(mode).strip().lower() not in ("", "none")


# ---------------------------------------------------------------------------
# the three plots


def _draw_accuracy(fig: Figure, report: Mapping[str, Any]) -> None:
    """Draw test accuracy and macro F1 per round.

    Parameters
    ----------
    fig : Figure
        Empty figure to draw on.
    report : Mapping[str, Any]
        The run report.
    """
    ax = fig.add_subplot()
    for key, label, marker in (("accuracy", "test accuracy", "o"), ("f1", "macro F1", "s")):
        xs, ys = _series(report, key)
        ax.plot(xs, ys, marker=marker, markersize=4, label=label)
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel("score")
    ax.set_title(_title(report, "test accuracy and macro F1"))
    _integer_rounds(ax)
    ax.legend(loc="lower right")


def _draw_loss(fig: Figure, report: Mapping[str, Any]) -> None:
    """Draw mean train loss and test loss per round.

    Parameters
    ----------
    fig : Figure
        Empty figure to draw on.
    report : Mapping[str, Any]
        The run report.
    """
    ax = fig.add_subplot()
    train_x, train_y = _series(report, "train_loss", with_initial=False)
    test_x, test_y = _series(report, "test_loss")
    ax.plot(train_x, train_y, marker="o", markersize=4, label="train loss (mean over owners)")
    ax.plot(test_x, test_y, marker="s", markersize=4, label="test loss")
    if not (train_y or test_y):
        ax.text(0.5, 0.5, "no loss recorded", ha="center", va="center",
                color="dimgray", transform=ax.transAxes)
    ax.set_ylabel("loss")
    ax.set_title(_title(report, "loss"))
    _integer_rounds(ax)
    ax.legend(loc="upper right")


def _draw_epsilon(fig: Figure, report: Mapping[str, Any]) -> None:
    """Draw the cumulative epsilon spent per owner, and the budget.

    Without differential privacy the figure only carries a message.

    Parameters
    ----------
    fig : Figure
        Empty figure to draw on.
    report : Mapping[str, Any]
        The run report.
    """
    ax = fig.add_subplot()
    ax.set_title(_title(report, "cumulative privacy budget spent"))
    if not _is_private(report):
        _centered_text(ax, NO_DP_TEXT)
        return
    curves = _owner_epsilons(report)
    if not curves:
        _centered_text(ax, "no epsilon recorded")
        return
    if len(curves) > MANY_OWNERS:
        _draw_many_owners(ax, curves)
    else:
        for owner, (xs, ys) in curves.items():
            ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.2, label=f"owner {owner}")
    privacy = report.get("privacy")
    budget = _budget(privacy) if isinstance(privacy, Mapping) else None
    if budget is not None:
        ax.axhline(budget, color="black", linestyle="--", linewidth=1.2, label="budget")
    ax.set_ylim(bottom=0.0)
    ax.set_ylabel("epsilon")
    _integer_rounds(ax)
    columns = max(1, math.ceil(min(len(curves), MANY_OWNERS) / 10))
    ax.legend(loc="lower right", fontsize="small", ncol=columns)


def _draw_many_owners(ax: Axes, curves: Mapping[str, tuple[list[float], list[float]]]) -> None:
    """Draw many owners as faint lines plus a bold line of the maximum.

    Parameters
    ----------
    ax : Axes
        The axes to draw on.
    curves : Mapping[str, tuple[list[float], list[float]]]
        Owner label -> (rounds, epsilons).
    """
    from matplotlib.collections import LineCollection

    highest: dict[float, float] = {}
    for xs, ys in curves.values():
        for x, y in zip(xs, ys, strict=True):
            highest[x] = max(y, highest.get(x, y))
    # one artist for every owner's line (a line per owner costs ~1 ms each to build: 1 s at 1000 owners)
    ax.add_collection(LineCollection([list(zip(xs, ys, strict=True)) for xs, ys in curves.values()], colors="tab:blue",
                                     linewidths=0.6, alpha=0.3))
    ax.autoscale_view()
    rounds = sorted(highest)
    ax.plot(rounds, [highest[x] for x in rounds], color="tab:red", linewidth=2.5,
            label=f"max over {len(curves)} owners")


_BUILDERS: dict[str, Callable[[Figure, Mapping[str, Any]], None]] = {
    "accuracy": _draw_accuracy,
    "loss": _draw_loss,
    "epsilon": _draw_epsilon,
}
PLOT_NAMES: tuple[str, ...] = tuple(_BUILDERS)
"""The plots :func:`write_plots` writes, as ``<name>.png``."""
