"""Self-contained HTML page of a run's report.

The page is the Jinja2 template ``templates/report.html.j2`` rendered with autoescaping, so every
value from the report is escaped on output; its stylesheet ``templates/report.css`` is inlined and
the plots are embedded as ``data:image/png;base64`` URIs, so the page needs nothing but itself:
it reads offline and can be mailed.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from fedmodel.fsio import atomic_write
from fedmodel.report.model import Report
from fedmodel.report.plots import finite_number

__all__ = ["render_html", "write_html"]

PLOT_ORDER: tuple[str, ...] = ("accuracy", "loss", "epsilon")
"""Plots shown first, in this order; any other plots follow."""

MISSING = "—"
"""Shown in place of an unknown value."""

QUALITY_COLUMNS = (
    ("rows", "Rows"), ("missing-cells", "Missing cells"), ("not-numbers", "Not numbers"),
    ("infinite-values", "Infinite"), ("duplicate-rows", "Duplicate rows"), ("outlier-cells-iqr", "Outlier cells (IQR 1.5)"),
    ("constant-columns", "Constant columns"), ("id-columns", "Id columns dropped"),
    ("clean-cells-imputed", "Imputed"), ("clean-rows-dropped-missing", "Rows dropped: gaps"),
    ("clean-duplicates-dropped", "Rows dropped: duplicates"), ("clean-outliers-clipped", "Cells clipped"),
    ("clean-rows-dropped-outliers", "Rows dropped: outliers"), ("clean-rows-out", "Rows trained on"),
)
"""The data-quality table's columns: count key and heading."""


def render_html(report: Report | Mapping[str, Any], plots: Mapping[str, Path]) -> str:
    """Render a run report as one self-contained HTML5 document.

    Parameters
    ----------
    report : Report | Mapping[str, Any]
        The run report, typed or as ``report.json`` holds it (missing keys and ``None`` values are
        tolerated).
    plots : Mapping[str, Path]
        Plot name -> PNG file, as returned by :func:`fedmodel.report.plots.write_plots`. A missing
        name or file is replaced by a short note.

    Returns
    -------
    str
        The HTML document.
    """
    r = report if isinstance(report, Report) else Report.from_dict(report)
    status = str(r.status).lower()
    audit = r.privacy.audit or {}
    beta = finite_number(audit.get("beta"))
    verdict = _text(audit.get("verdict"))
    if str(audit.get("verdict", "")).startswith("VIOLATION"):
        verdict = Markup("<strong>{}</strong>").format(verdict)
    plots = plots if isinstance(plots, Mapping) else {}
    names = list(PLOT_ORDER) + [str(n) for n in plots if str(n) not in PLOT_ORDER]
    scaling = r.scaling or {}
    return _template().render(
        r=r, css=_css(), missing=MISSING, failed=status == "failed",
        status_class={"failed": "status-failed", "completed": "status-completed"}.get(status, "status-unknown"),
        plots=[{"name": name, "data": _png(plots.get(name))} for name in names],
        audit_verdict=verdict, audit_confidence=_pct(1 - beta) if beta is not None else MISSING,
        scaling_features=[f for f in (scaling.get("features") or []) if isinstance(f, Mapping)],
        quality_columns=QUALITY_COLUMNS,
        timing=[(str(k).removesuffix("_seconds").replace("_", " "), _seconds(v)) for k, v in r.timing.items()],
        config_lines=_config_lines(r.config),
    ) + "\n"


def write_html(report: Report | Mapping[str, Any], plots: Mapping[str, Path], path: Path) -> Path:
    """Render the report and write it atomically as UTF-8 (readers never see half a page).

    Parameters
    ----------
    report : Report | Mapping[str, Any]
        The run report.
    plots : Mapping[str, Path]
        Plot name -> PNG file.
    path : Path
        Destination of the page; its folder is created when absent.

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, render_html(report, plots).encode("utf-8"))
    return path


@cache
def _template() -> jinja2.Template:
    """The page template, with autoescaping on and the value filters."""
    env = jinja2.Environment(autoescape=True, undefined=jinja2.ChainableUndefined, keep_trailing_newline=False)
    env.filters.update(text=_text, num=_num, pct=_pct, int=_int, seconds=_seconds, owners=_owners)
    source = files("fedmodel.report").joinpath("templates", "report.html.j2").read_text(encoding="utf-8")
    return env.from_string(source)


@cache
def _css() -> Markup:
    """The page's stylesheet (package data, trusted: inlined as it is)."""
    return Markup(files("fedmodel.report").joinpath("templates", "report.css").read_text(encoding="utf-8").strip())


# ---------------------------------------------------------------------------------------- value filters
def _text(value: Any) -> str:
    """Any value as text (escaped on output); ``None`` or an undefined value becomes a dash."""
    if value is None or isinstance(value, jinja2.Undefined):
        return MISSING
    return value if isinstance(value, Markup) else str(value)


def _number(value: Any) -> float | None:
    """The value as a finite float, else None (an undefined template value included)."""
    return None if isinstance(value, jinja2.Undefined) else finite_number(value)


def _num(value: Any, spec: str = ".4g") -> str:
    """A number formatted with ``spec``; a non-number as text, NaN as a dash."""
    number = _number(value)
    if number is None:
        return MISSING if isinstance(value, float) else _text(value)
    return format(number, spec)


def _pct(value: Any) -> str:
    """A fraction in [0, 1] as a percentage with one decimal (``"90.0%"``), or a dash."""
    number = _number(value)
    return MISSING if number is None else f"{number * 100:.1f}%"


def _int(value: Any) -> str:
    """A count as an integer, or the value as :func:`_num` writes it when it is not integral."""
    number = _number(value)
    if number is not None and number.is_integer():
        return str(int(number))
    return _num(value)


def _seconds(value: Any) -> str:
    """A duration (``"60.2 s"``), or the value as text."""
    number = _number(value)
    return _text(value) if number is None else f"{number:.1f} s"


def _owners(value: Any) -> str:
    """A list of owners as ``"(n) a, b"``, or a dash when there are none or it is unknown."""
    owners = list(value) if isinstance(value, (list, tuple)) else []
    return (f"({len(owners)}) " + ", ".join(_text(o) for o in owners)) if owners else MISSING


def _png(path: Any) -> str | None:
    """A plot file as base64, or None when absent or unreadable."""
    if path is None:
        return None
    try:
        file = Path(path)
        return base64.b64encode(file.read_bytes()).decode("ascii") if file.is_file() else None
    except (OSError, TypeError, ValueError):
        return None


def _toml_value(value: Any) -> str:
    """A config value the TOML way."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (str, list, tuple)):
        return json.dumps(value, default=str, ensure_ascii=False)
    return json.dumps(str(value), ensure_ascii=False)


def _config_lines(config: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The config as ``key = value`` lines (nested keys dotted; ``None`` commented out as unset)."""
    lines = []
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            lines.extend(_config_lines(value, f"{name}."))
        elif value is None:
            lines.append(f"# {name} = (unset)")
        else:
            lines.append(f"{name} = {_toml_value(value)}")
    return lines
