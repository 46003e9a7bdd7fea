"""The run folder: a contract other tools read.

``config.toml`` (resolved config), ``metrics.csv`` (one row per finished round, appended and
flushed as rounds finish, so a crash loses nothing already done), ``progress.jsonl`` (events the
CLI follows), ``report.json``, ``plots/*.png``, ``report.html`` and ``model.safetensors``.
Whole files are written to a temporary name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomli_w

from fedmodel.fsio import atomic_write

METRICS_COLUMNS: tuple[str, ...] = (
    "round", "train_loss", "test_loss", "accuracy", "precision", "recall", "f1",
    "num_replies", "num_failures", "seconds", "epsilon_max", "num_timed_out",
)


class RunFolder:
    """Writes one run's folder."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.plots_dir = path / "plots"
        self.config_path = path / "config.toml"
        self.metrics_path = path / "metrics.csv"
        self.progress_path = path / "progress.jsonl"
        self.report_path = path / "report.json"
        self.html_path = path / "report.html"
        self.model_path = path / "model.safetensors"

    def create(self, config: Mapping[str, Any]) -> None:
        """Create the folder, write config.toml and an empty metrics.csv with its header."""
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write(self.config_path, tomli_w.dumps({"fedmodel": dict(config)}).encode())
        atomic_write(self.metrics_path, (",".join(METRICS_COLUMNS) + "\n").encode())

    def event(self, kind: str, **data: Any) -> None:
        """Append one progress event (a JSON line with the wall-clock time)."""
        line = json.dumps({"event": kind, "time": time.time(), **data}, default=_json_default)
        with self.progress_path.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def append_round(self, row: Mapping[str, Any]) -> None:
        """Append a finished round to metrics.csv (durably)."""
        with self.metrics_path.open("a", encoding="utf-8", newline="") as fh:
            csv.writer(fh).writerow([_csv_cell(row.get(c)) for c in METRICS_COLUMNS])
            fh.flush()
            os.fsync(fh.fileno())

    def restart_metrics(self, rows: list[Mapping[str, Any]]) -> None:
        """Rewrite metrics.csv with these rows only (a resumed run: a row after its checkpoint is dropped)."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(METRICS_COLUMNS)
        writer.writerows([_csv_cell(row.get(c)) for c in METRICS_COLUMNS] for row in rows)
        atomic_write(self.metrics_path, buffer.getvalue().encode())

    def write_model(self, weights: Mapping[str, Any]) -> None:
        """Save the global model's state dict as safetensors."""
        from safetensors.torch import save_file

        tmp = self.model_path.with_suffix(".safetensors.tmp")
        save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, str(tmp))
        os.replace(tmp, self.model_path)

    def write_report(self, report: Mapping[str, Any], *, redraw_plots: bool = True) -> None:
        """Write report.json, the plots and the self-contained report.html.

        ``redraw_plots=False`` keeps plots already written (a report that only gained timing or
        Flower's status draws the same curves); if one is missing, all are drawn again.
        """
        from fedmodel.report.html import write_html
        from fedmodel.report.plots import PLOT_NAMES, write_plots

        atomic_write(self.report_path, json.dumps(report, indent=2, default=_json_default).encode())
        plots = {name: self.plots_dir / f"{name}.png" for name in PLOT_NAMES}
        if redraw_plots or not all(path.is_file() for path in plots.values()):
            plots = write_plots(report, self.plots_dir)
        write_html(report, plots, self.html_path)

    def read_report(self) -> dict[str, Any]:
        """Read report.json back."""
        return dict(json.loads(self.report_path.read_text(encoding="utf-8")))


def read_events(path: Path, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Complete JSON lines of a progress file from byte ``offset``; returns (events, new offset)."""
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            chunk = fh.read()
    except FileNotFoundError:
        return [], offset
    end = chunk.rfind(b"\n") + 1
    events = [json.loads(line) for line in chunk[:end].splitlines() if line.strip()]
    return events, offset + end


def _csv_cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
