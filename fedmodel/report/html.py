"""Self-contained HTML page of a run's report.

The page needs nothing but itself: CSS is inline and the plots are embedded
as ``data:image/png;base64`` URIs, so it reads offline and can be mailed.
Every string that comes from the report is escaped with :func:`html.escape`.
"""

from __future__ import annotations

import base64
import html
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fedmodel.report.plots import finite_number

__all__ = ["render_html", "write_html"]

PLOT_ORDER: tuple[str, ...] = ("accuracy", "loss", "epsilon")
"""Plots shown first, in this order; any other plots follow."""

MISSING = "—"
"""Shown in place of an unknown value."""

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
       margin: 2em auto; max-width: 1000px; padding: 0 1em; color: #222; line-height: 1.4; }
h1 { margin-bottom: 0.2em; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.6em 0; }
th, td { border: 1px solid #999; padding: 0.25em 0.6em; text-align: right; }
th { background: #eee; }
td:first-child, th:first-child { text-align: left; }
table.meta td, table.meta th { text-align: left; }
.status-completed { color: #1a7f37; font-weight: bold; }
.status-failed { color: #c00; font-weight: bold; }
.failure-reason { color: #c00; font-weight: bold; font-size: 1.15em; border: 2px solid #c00;
                  background: #fff0f0; padding: 0.6em 0.9em; margin: 1em 0; white-space: pre-wrap; }
.note { color: #666; font-style: italic; }
figure { margin: 1em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
pre { background: #f6f6f6; border: 1px solid #ddd; padding: 0.8em; overflow-x: auto; }
""".strip()


# ---------------------------------------------------------------------------
# public API


def render_html(report: Mapping[str, Any], plots: Mapping[str, Path]) -> str:
    """Render a run report as one self-contained HTML5 document.

    Parameters
    ----------
    report : Mapping[str, Any]
        The run report (the content of ``report.json``). Missing keys and
        ``None`` values are tolerated.
    plots : Mapping[str, Path]
        Plot name -> PNG file, as returned by
        :func:`fedmodel.report.plots.write_plots`. A missing name or file is
        replaced by a short note.

    Returns
    -------
    str
        The HTML document.
    """
    title = f"fedmodel report: {_text(report.get('dataset'))}"
    body = "\n".join([
        _header(report),
        _section("Final metrics", _summary(report)),
        _section("Plots", _plots(plots)),
        _section("Privacy", _privacy(report)),
        _section("Rounds", _rounds_table(report)),
        _section("Participation", _participation(report)),
        _section("Owners", _owners(report)),
        _section("Data quality", _data_quality(report)) if _as_map(report.get("data_quality")) else "",
        _section("Scaling statistics", _scaling(report)) if _as_map(report.get("scaling")) else "",
        _section("Timing", _timing(report)),
        _section("Versions", _versions(report)),
        _section("Notes", _notes(report)) if _as_list(report.get("notes")) else "",
        _section("Configuration", _config(report)),
    ])
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{title}</title>\n<style>\n{CSS}\n</style>\n</head>\n"
        f"<body>\n{body}\n</body>\n</html>\n"
    )


def write_html(report: Mapping[str, Any], plots: Mapping[str, Path], path: Path) -> Path:
    """Render the report and write it atomically as UTF-8.

    The page is written to ``path.with_suffix(".html.tmp")`` and then moved
    over ``path`` with :func:`os.replace`, so readers never see half a page.

    Parameters
    ----------
    report : Mapping[str, Any]
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
    tmp = path.with_suffix(".html.tmp")
    try:
        tmp.write_text(render_html(report, plots), encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# ---------------------------------------------------------------------------
# value helpers


def _text(value: Any) -> str:
    """Escape any value for HTML; ``None`` becomes a dash.

    Parameters
    ----------
    value : Any
        A value from the report.

    Returns
    -------
    str
        Escaped text.
    """
    return MISSING if value is None else html.escape(str(value))


def _num(value: Any, spec: str = ".4g") -> str:
    """Format a number; non-numbers are escaped as text.

    Parameters
    ----------
    value : Any
        A value from the report.
    spec : str
        Format spec for numbers.

    Returns
    -------
    str
        Escaped text.
    """
    number = finite_number(value)
    if number is None:
        if isinstance(value, float):
            return MISSING
        return _text(value)
    return html.escape(format(number, spec))


def _pct(value: Any) -> str:
    """Format a fraction in [0, 1] as a percentage with one decimal.

    Parameters
    ----------
    value : Any
        A fraction from the report.

    Returns
    -------
    str
        E.g. ``"90.0%"``, or a dash when unknown.
    """
    number = finite_number(value)
    return MISSING if number is None else f"{number * 100:.1f}%"


def _int(value: Any) -> str:
    """Format a count.

    Parameters
    ----------
    value : Any
        A count from the report.

    Returns
    -------
    str
        The integer, or the escaped value when it is not integral.
    """
    number = finite_number(value)
    if number is not None and number.is_integer():
        return str(int(number))
    return _num(value)


def _as_map(value: Any) -> Mapping[str, Any]:
    """Return ``value`` if it is a mapping, else an empty one.

    Parameters
    ----------
    value : Any
        A value from the report.

    Returns
    -------
    Mapping[str, Any]
        A mapping.
    """
    return value if isinstance(value, Mapping) else {}


def _as_list(value: Any) -> list[Any]:
    """Return ``value`` as a list if it is a sequence (not a string).

    Parameters
    ----------
    value : Any
        A value from the report.

    Returns
    -------
    list[Any]
        A list, possibly empty.
    """
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return list(value)
    return []


def _maps(value: Any) -> list[Mapping[str, Any]]:
    """Return the mapping items of a list value.

    Parameters
    ----------
    value : Any
        A value from the report that should be a list of mappings.

    Returns
    -------
    list[Mapping[str, Any]]
        Its mapping items.
    """
    return [item for item in _as_list(value) if isinstance(item, Mapping)]


# ---------------------------------------------------------------------------
# markup helpers


def _section(title: str, body: str) -> str:
    """Wrap a body in a titled section.

    Parameters
    ----------
    title : str
        Section heading (trusted text).
    body : str
        HTML body.

    Returns
    -------
    str
        HTML.
    """
    slug = title.lower().replace(" ", "-")
    return f'<section id="section-{slug}">\n<h2>{html.escape(title)}</h2>\n{body}\n</section>'


def _table(headers: Sequence[str] | None, rows: Iterable[Sequence[str]], table_id: str,
           css_class: str = "") -> str:
    """Build a table from escaped cells.

    Parameters
    ----------
    headers : Sequence[str] | None
        Column headings (trusted text, escaped here); ``None`` for no header row.
    rows : Iterable[Sequence[str]]
        Rows of already escaped cell HTML.
    table_id : str
        ``id`` attribute of the table.
    css_class : str
        Optional ``class`` attribute.

    Returns
    -------
    str
        HTML table.
    """
    head = ""
    if headers is not None:
        cells = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
        head = f"<thead><tr>{cells}</tr></thead>\n"
    body = "\n".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>"
                     for row in rows)
    klass = f' class="{css_class}"' if css_class else ""
    return f'<table id="{table_id}"{klass}>\n{head}<tbody>\n{body}\n</tbody>\n</table>'


def _key_value_table(items: Mapping[str, Any], table_id: str,
                     fmt: Callable[[Any], str] | None = None) -> str:
    """Build a two-column table of a mapping.

    Parameters
    ----------
    items : Mapping[str, Any]
        Keys and values.
    table_id : str
        ``id`` attribute of the table.
    fmt : Callable[[Any], str] | None
        Value formatter; :func:`_text` when ``None``.

    Returns
    -------
    str
        HTML table, or a note when ``items`` is empty.
    """
    if not items:
        return '<p class="note">Not recorded.</p>'
    formatter = fmt or _text
    rows = [(_text(key), formatter(value)) for key, value in items.items()]
    return _table(None, rows, table_id, "meta")


# ---------------------------------------------------------------------------
# sections


def _header(report: Mapping[str, Any]) -> str:
    """Render the title, the run facts and, when failed, the failure reason.

    Parameters
    ----------
    report : Mapping[str, Any]
        The run report.

    Returns
    -------
    str
        HTML.
    """
    status = report.get("status")
    failed = str(status).lower() == "failed"
    status_class = {"failed": "status-failed", "completed": "status-completed"}.get(
        str(status).lower(), "status-unknown")
    rounds_done = len(_maps(report.get("rounds")))
    facts = [
        ("Dataset", _text(report.get("dataset"))),
        ("Status", f'<span class="{status_class}">{_text(status)}</span>'),
        ("Owners", _int(report.get("num_clients"))),
        ("Rounds", f"{_int(report.get('num_rounds'))} planned, {rounds_done} recorded"),
        ("Strategy", _text(report.get("strategy"))),
        ("Model", _text(report.get("model"))),
    ]
    table = _table(None, facts, "run", "meta")
    parts = [f"<h1>fedmodel run report: {_text(report.get('dataset'))}</h1>", table]
    if failed:
        reason = report.get("reason")
        message = _text(reason) if reason is not None else "no reason recorded"
        parts.insert(1, f'<div class="failure-reason">Run failed: {message}</div>')
    return "<header>\n" + "\n".join(parts) + "\n</header>"


def _metric_row(label: str, metrics: Mapping[str, Any]) -> list[str]:
    """Format one row of the summary table.

    Parameters
    ----------
    label : str
        Row label (trusted text).
    metrics : Mapping[str, Any]
        Accuracy, precision, recall, f1 and test_loss.

    Returns
    -------
    list[str]
        Escaped cells.
    """
    return [html.escape(label), _pct(metrics.get("accuracy")), _pct(metrics.get("precision")),
            _pct(metrics.get("recall")), _pct(metrics.get("f1")),
            _num(metrics.get("test_loss"), ".4f")]


def _summary(report: Mapping[str, Any]) -> str:
    """Render the table of final (and initial) test metrics.

    Parameters
    ----------
    report : Mapping[str, Any]
        The run report.

    Returns
    -------
    str
        HTML.
    """
    rows = []
    if isinstance(report.get("initial"), Mapping):
        rows.append(_metric_row("initial (round 0)", report["initial"]))
    final = report.get("final")
    if isinstance(final, Mapping):
        rows.append(_metric_row("final", final))
    if not rows:
        return '<p class="note">No metrics recorded.</p>'
    headers = ("", "Accuracy", "Precision", "Recall", "F1 (macro)", "Test loss")
    return _table(headers, rows, "summary")


def _plots(plots: Mapping[str, Path]) -> str:
    """Embed the plots as base64 PNGs, or notes for the missing ones.

    Parameters
    ----------
    plots : Mapping[str, Path]
        Plot name -> PNG file.

    Returns
    -------
    str
        HTML.
    """
    plots = _as_map(plots)
    names = list(PLOT_ORDER) + [str(n) for n in plots if str(n) not in PLOT_ORDER]
    return "\n".join(_figure(name, plots.get(name)) for name in names)


def _figure(name: str, path: Any) -> str:
    """Embed one PNG, or a note if it cannot be read.

    Parameters
    ----------
    name : str
        Plot name.
    path : Any
        Path of the PNG, or ``None``.

    Returns
    -------
    str
        HTML ``<figure>`` or a note.
    """
    label = html.escape(name)
    data = _read_png(path)
    if data is None:
        return f'<p class="note">Plot "{label}" is not available.</p>'
    encoded = base64.b64encode(data).decode("ascii")
    return (f'<figure><img alt="{label} plot" src="data:image/png;base64,{encoded}">'
            f"<figcaption>{label}</figcaption></figure>")


def _read_png(path: Any) -> bytes | None:
    """Read a plot file, or return ``None`` when absent or unreadable.

    Parameters
    ----------
    path : Any
        Path of the PNG, or ``None``.

    Returns
    -------
    bytes | None
        The file content.
    """
    if path is None:
        return None
    try:
        file = Path(path)
        return file.read_bytes() if file.is_file() else None
    except (OSError, TypeError, ValueError):
        return None


def _privacy(report: Mapping[str, Any]) -> str:
    """Render the privacy settings and the per-owner privacy table.

    Parameters
    ----------
    report : Mapping[str, Any]
        The run report.

    Returns
    -------
    str
        HTML.
    """
    privacy = _as_map(report.get("privacy"))
    facts = {
        "Mode": _text(privacy.get("mode")),
        "Delta": _num(privacy.get("delta"), ".3g"),
        "Accountant": _text(privacy.get("accountant")),
        "Budget epsilon": _num(privacy.get("budget_epsilon"), ".3f"),
        "Max epsilon spent": _num(privacy.get("max_epsilon"), ".3f"),
        "Ledger (totals across runs)": _text(privacy.get("ledger") or "none: this run's numbers only"),
    }
    parts = [_key_value_table(facts, "privacy", fmt=str)]
    owners = _maps(privacy.get("owners"))
    if owners:
        headers = ("Owner", "Epsilon this run", "of it: scaling statistics", "Epsilon all runs", "Budget",
                   "Remaining", "Noise multiplier", "Sample rate", "Steps", "Max grad norm", "Examples")
        rows = [(_text(o.get("owner")), _num(o.get("epsilon"), ".3f"),
                 _num(o.get("epsilon_scaling_statistics"), ".3f") if o.get("epsilon_scaling_statistics") is not None
                 else "&ndash;",
                 _num(o.get("epsilon_total"), ".3f"), _num(o.get("budget_epsilon"), ".3f"),
                 _num(o.get("remaining_epsilon"), ".3f"), _num(o.get("noise_multiplier")),
                 _num(o.get("sample_rate")), _int(o.get("steps")),
                 _num(o.get("max_grad_norm")), _int(o.get("num_examples")))
                for o in owners]
        parts.append(_table(headers, rows, "privacy-owners"))
    elif str(privacy.get("mode")).strip().lower() in ("none", ""):
        parts.append('<p class="note">No differential privacy: no epsilon spent.</p>')
    parts.append(_client_level(privacy.get("client_level")))
    parts.append(_audit(privacy.get("audit")))
    refusals = _maps(privacy.get("refusals"))
    if refusals:
        parts.append('<p class="note">Owners that refused to train (their budget or their policy):</p>')
        parts.append(_table(("Round", "Owner", "Rule", "Reason"),
                            [(_int(r.get("round")), _text(r.get("owner")), _text(r.get("rule")),
                              _text(r.get("reason"))) for r in refusals], "privacy-refusals"))
    return "\n".join(parts)


def _client_level(value: Any) -> str:
    """Render central DP's client-level guarantee (``privacy.client_level``), or nothing without central DP.

    Parameters
    ----------
    value : Any
        ``report["privacy"]["client_level"]``.

    Returns
    -------
    str
        HTML.
    """
    level = _as_map(value)
    if not level:
        return ""
    facts = {
        "Client-level epsilon": _num(level.get("epsilon"), ".3f"),
        "Delta": _num(level.get("delta"), ".3g"),
        "Accountant": _text(level.get("accountant")),
        "Mechanism": _text(level.get("mechanism")),
        "Protects": _text(level.get("level")),
        "Noise multiplier (requested / charged)": (f"{_num(level.get('noise_multiplier'))} / "
                                                   f"{_num(level.get('accounted_noise_multiplier'))}"),
        "Clipping norm": _num(level.get("clip")) + (f" (adaptive, last {_num(level.get('clip_final'))})"
                                                    if level.get("clip_final") is not None else ""),
        "Rounds released (charged)": f"{_int(level.get('rounds'))} ({_int(level.get('releases_charged'))})",
    }
    return ('<p class="note">Central DP: the guarantee for each owner as a whole, on top of the sample-level '
            'one above.</p>\n' + _key_value_table(facts, "privacy-client-level", fmt=str))


def _audit(value: Any) -> str:
    """Render the empirical privacy audit (``privacy.audit``, with ``--audit``), or nothing without one.

    Parameters
    ----------
    value : Any
        ``report["privacy"]["audit"]``.

    Returns
    -------
    str
        HTML.
    """
    audit = _as_map(value)
    if not audit:
        return ""
    beta = finite_number(audit.get("beta"))
    verdict = _text(audit.get("verdict"))
    if str(audit.get("verdict", "")).startswith("VIOLATION"):
        verdict = f"<strong>{verdict}</strong>"
    facts = {
        "Verdict": verdict,
        "Lower bound on epsilon": _num(audit.get("lower_bound_epsilon"), ".3f") + (
            f" (read from {_text(audit['read_from'])})" if audit.get("read_from") else ""),
        "Proven epsilon (largest of the audited owners)": _num(audit.get("proven_epsilon"), ".3f"),
        "Audited owners": _owner_list(audit.get("owners")),
        "Canaries (included)": f"{_int(audit.get('canaries'))} ({_int(audit.get('canaries_included'))})",
        "Guesses (in / out), correct": (f"{_int(audit.get('guesses'))} ({_int(audit.get('guesses_in'))} / "
                                        f"{_int(audit.get('guesses_out'))}), {_int(audit.get('correct'))}"),
        "Confidence, delta": f"{_pct(1 - beta) if beta is not None else MISSING}, {_num(audit.get('delta'), '.3g')}",
        "Method": _text(audit.get("method")),
    }
    return ('<p class="note">Empirical privacy audit (a testing aid): a lower bound on the epsilon this run '
            'really has, from canaries scored on the final model. A bound above the proven epsilon means the '
            'run is not private as claimed; a bound below it proves nothing more (black-box canaries give '
            'loose bounds).</p>\n' + _key_value_table(facts, "privacy-audit", fmt=str))


def _round_row(label: Any, entry: Mapping[str, Any]) -> list[str]:
    """Format one row of the per-round table.

    Parameters
    ----------
    label : Any
        Round number.
    entry : Mapping[str, Any]
        The round entry (or ``report["initial"]`` for round 0).

    Returns
    -------
    list[str]
        Escaped cells.
    """
    return [_int(label), _num(entry.get("train_loss"), ".4f"),
            _num(entry.get("test_loss"), ".4f"), _pct(entry.get("accuracy")),
            _pct(entry.get("f1")), _int(entry.get("num_replies")),
            _int(entry.get("num_failures")), _num(entry.get("seconds"), ".1f")]


def _rounds_table(report: Mapping[str, Any]) -> str:
    """Render the per-round table, with round 0 when known.

    Parameters
    ----------
    report : Mapping[str, Any]
        The run report.

    Returns
    -------
    str
        HTML.
    """
    rows = []
    if isinstance(report.get("initial"), Mapping):
        rows.append(_round_row(0, report["initial"]))
    for position, entry in enumerate(_maps(report.get("rounds")), start=1):
        number = entry.get("round")
        rows.append(_round_row(position if number is None else number, entry))
    if not rows:
        return '<p class="note">No rounds recorded.</p>'
    headers = ("Round", "Train loss", "Test loss", "Accuracy", "F1 (macro)", "Replies",
               "Failures", "Seconds")
    return _table(headers, rows, "rounds")


def _failure_item(failure: Mapping[str, Any]) -> str:
    """Format one failure as a list item.

    Parameters
    ----------
    failure : Mapping[str, Any]
        ``{"node_id": ..., "owner": ..., "reason": ...}``.

    Returns
    -------
    str
        HTML ``<li>``.
    """
    owner = failure.get("owner")
    who = f"node {_text(failure.get('node_id'))}"
    if owner is not None:
        who += f" (owner {_text(owner)})"
    return f"<li>{who}: {_text(failure.get('reason'))}</li>"


def _owner_list(value: Any) -> str:
    """Format a list of owners as ``"(n) a, b"``, or a dash when there are none or it is unknown.

    Parameters
    ----------
    value : Any
        A list of owner names or numbers from the report.

    Returns
    -------
    str
        Escaped text.
    """
    owners = _as_list(value)
    return (f"({len(owners)}) " + ", ".join(_text(o) for o in owners)) if owners else MISSING


def _participation_row(label: str, entry: Mapping[str, Any]) -> list[str]:
    """Format one round (or one retried attempt) of the participation table.

    Parameters
    ----------
    label : str
        Escaped round label.
    entry : Mapping[str, Any]
        The round entry, or one of its ``retried`` attempts.

    Returns
    -------
    list[str]
        Escaped cells: round, replied, failed with reasons, timed out, not connected.
    """
    failures = _maps(entry.get("failures"))
    failed = (f'<ul class="failures">{"".join(_failure_item(f) for f in failures)}</ul>'
              if failures else MISSING)
    return [label, _owner_list(entry.get("replied")), failed, _owner_list(entry.get("timed_out")),
            _owner_list(entry.get("not_connected"))]


def _attempt_rows(number: str, label: str, entry: Mapping[str, Any]) -> list[list[str]]:
    """The participation rows of one round: its retried attempts, then ``entry`` itself as ``label``.

    Parameters
    ----------
    number : str
        Escaped round number.
    label : str
        Escaped label of the round's last attempt.
    entry : Mapping[str, Any]
        The round entry.

    Returns
    -------
    list[list[str]]
        Rows of escaped cells.
    """
    rows = [_participation_row(f"{number} (attempt {_int(earlier.get('attempt'))})", earlier)
            for earlier in _maps(entry.get("retried"))]
    return rows + [_participation_row(label, entry)]


def _participation(report: Mapping[str, Any]) -> str:
    """Render, per round, the owners that replied, failed (with the reason), timed out or were not connected.

    A retried round (``below-minimum = retry``) shows each earlier attempt on its own row first, and
    the round a run stopped in (``unfinished_round``) comes last. The lists are ``report.json``'s
    ``replied``, ``failures``, ``timed_out`` and ``not_connected``.

    Parameters
    ----------
    report : Mapping[str, Any]
        The run report.

    Returns
    -------
    str
        HTML.
    """
    rows = []
    for position, entry in enumerate(_maps(report.get("rounds")), start=1):
        number = _int(position if entry.get("round") is None else entry.get("round"))
        attempt = finite_number(entry.get("attempt"))
        last = f"{number} (attempt {_int(attempt)})" if attempt is not None and attempt > 1 else number
        rows += _attempt_rows(number, last, entry)
    unfinished = _as_map(report.get("unfinished_round"))
    if unfinished:  # the round the run stopped in
        number = _int(unfinished.get("round"))
        rows += _attempt_rows(number, f"{number} (not completed)", unfinished)
    if not rows:
        return '<p class="note">No rounds recorded.</p>'
    headers = ("Round", "Replied", "Failed (reason)", "Timed out", "Not connected")
    return _table(headers, rows, "participation", "meta")


def _owners(report: Mapping[str, Any]) -> str:
    """Render the per-owner evaluation table.

    Parameters
    ----------
    report : Mapping[str, Any]
        The run report.

    Returns
    -------
    str
        HTML.
    """
    owners = _maps(report.get("owners"))
    if not owners:
        return '<p class="note">No per-owner metrics recorded.</p>'
    headers = ("Owner", "Examples", "Accuracy", "Precision", "Recall", "F1 (macro)",
               "Train loss")
    rows = [(_text(o.get("owner")), _int(o.get("num_examples")), _pct(o.get("accuracy")),
             _pct(o.get("precision")), _pct(o.get("recall")), _pct(o.get("f1")),
             _num(o.get("train_loss"), ".4f")) for o in owners]
    return _table(headers, rows, "owners")


def _seconds(value: Any) -> str:
    """Format a duration in seconds.

    Parameters
    ----------
    value : Any
        Seconds.

    Returns
    -------
    str
        E.g. ``"60.2 s"``, or the escaped value.
    """
    number = finite_number(value)
    return _text(value) if number is None else f"{number:.1f} s"


def _timing(report: Mapping[str, Any]) -> str:
    """Render the timing table.

    Parameters
    ----------
    report : Mapping[str, Any]
        The run report.

    Returns
    -------
    str
        HTML.
    """
    timing = _as_map(report.get("timing"))
    labelled = {str(k).removesuffix("_seconds").replace("_", " "): v for k, v in timing.items()}
    return _key_value_table(labelled, "timing", fmt=_seconds)


def _versions(report: Mapping[str, Any]) -> str:
    """Render the versions table.

    Parameters
    ----------
    report : Mapping[str, Any]
        The run report.

    Returns
    -------
    str
        HTML.
    """
    return _key_value_table(_as_map(report.get("versions")), "versions")


def _notes(report: Mapping[str, Any]) -> str:
    """Render the notes as a bullet list.

    Parameters
    ----------
    report : Mapping[str, Any]
        The run report.

    Returns
    -------
    str
        HTML.
    """
    items = "\n".join(f"<li>{_text(note)}</li>" for note in _as_list(report.get("notes")))
    return f'<ul class="notes">\n{items}\n</ul>'


def _toml_value(value: Any) -> str:
    """Format a config value the TOML way (unescaped).

    Parameters
    ----------
    value : Any
        A config value.

    Returns
    -------
    str
        TOML-ish literal.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (str, list, tuple)):
        return json.dumps(value, default=str, ensure_ascii=False)
    return json.dumps(str(value), ensure_ascii=False)


def _config_lines(config: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Flatten a config into ``key = value`` lines (unescaped).

    Parameters
    ----------
    config : Mapping[str, Any]
        Config, possibly nested.
    prefix : str
        Dotted prefix of nested keys.

    Returns
    -------
    list[str]
        One line per scalar; ``None`` values are commented out as unset.
    """
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


def _config(report: Mapping[str, Any]) -> str:
    """Render the resolved config as a ``<pre>`` block.

    Parameters
    ----------
    report : Mapping[str, Any]
        The run report.

    Returns
    -------
    str
        HTML.
    """
    config = _as_map(report.get("config"))
    if not config:
        return '<p class="note">Not recorded.</p>'
    return f'<pre class="config">{html.escape(chr(10).join(_config_lines(config)))}</pre>'


_QUALITY_COLUMNS = (
    ("rows", "Rows"), ("missing-cells", "Missing cells"), ("not-numbers", "Not numbers"),
    ("infinite-values", "Infinite"), ("duplicate-rows", "Duplicate rows"), ("outlier-cells-iqr", "Outlier cells (IQR 1.5)"),
    ("constant-columns", "Constant columns"), ("id-columns", "Id columns dropped"),
    ("clean-cells-imputed", "Imputed"), ("clean-rows-dropped-missing", "Rows dropped: gaps"),
    ("clean-duplicates-dropped", "Rows dropped: duplicates"), ("clean-outliers-clipped", "Cells clipped"),
    ("clean-rows-dropped-outliers", "Rows dropped: outliers"), ("clean-rows-out", "Rows trained on"),
)


def _data_quality(report: Mapping[str, Any]) -> str:
    """Each owner's counts before and after cleaning (never a value), and the cleaning settings."""
    quality = _as_map(report.get("data_quality"))
    parts = [_key_value_table(_as_map(quality.get("cleaning")), "cleaning")]
    owners = _maps(quality.get("owners"))
    if owners:
        headers = ("Owner",) + tuple(title for _, title in _QUALITY_COLUMNS)
        rows = [(_text(o.get("owner")),) + tuple(_int(o.get(key)) for key, _ in _QUALITY_COLUMNS) for o in owners]
        parts.append(_table(headers, rows, "data-quality"))
    parts.append(f'<p class="note">{_text(quality.get("note"))}</p>')
    return "\n".join(parts)


def _scaling(report: Mapping[str, Any]) -> str:
    """The federated scaling statistics: per feature, the value, its noise tolerance and the public bounds."""
    scaling = _as_map(report.get("scaling"))
    facts = {
        "Method": _text(scaling.get("method")), "Statistics": _text(scaling.get("statistics")),
        "Owners answered": _int(scaling.get("owners_answered")),
        "Noise multiplier of the sums": _num(scaling.get("noise_multiplier")),
        "Tolerance": _text(scaling.get("tolerance")),
    }
    parts = [_key_value_table(facts, "scaling", fmt=str)]
    features = _maps(scaling.get("features"))
    if features:
        headers = ("Feature", "Mean", "Mean tolerance (+/-)", "Std", "Std tolerance (+/-)", "Public bounds")
        rows = [(str(i), _num(f.get("mean")), _num(f.get("mean_tolerance")), _num(f.get("std")),
                 _num(f.get("std_tolerance")),
                 " .. ".join(_num(b) for b in _as_list(f.get("bounds")))) for i, f in enumerate(features)]
        parts.append(_table(headers, rows, "scaling-features"))
    return "\n".join(parts)
