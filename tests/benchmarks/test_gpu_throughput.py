"""The GPU throughput benchmark runs each mode through Opacus' own make_private (on the CPU here)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "gpu_throughput.py"


def _module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("gpu_throughput", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_throughput"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("model", ["cnn", "samplenet"])
@pytest.mark.parametrize("mode", ["no DP", "DP (hooks)", "DP (ghost clipping)", "DP (functorch)"])
def test_every_mode_trains_and_reports_a_rate(mode: str, model: str) -> None:
    rate = _module().measure(mode, batch=8, steps=2, warmup=1, device=torch.device("cpu"), model_name=model)
    assert rate > 0


def test_the_table_has_a_row_per_batch_with_every_mode_and_its_ratio_to_no_dp() -> None:
    text = _module().throughput_table(torch.device("cpu"), [4, 8], steps=1, warmup=1, echo=False)
    lines = text.splitlines()
    assert lines[0].startswith("## gpu: cnn DP-SGD throughput")
    rows = [line for line in lines if line.startswith("| 4 |") or line.startswith("| 8 |")]
    assert len(rows) == 2
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 1 + 4 + 3 and all(c.endswith("x") for c in cells[5:])
        rates = [float(c.replace(",", "")) for c in cells[1:5]]
        assert all(r > 0 for r in rates)
        # the rates are printed rounded to whole samples/s (slow CPU rates: a few per second), the ratio from
        # the exact ones: it must lie within what the printed rates allow, and within 0.005 of its own rounding
        low, high = (rates[1] - 0.5) / (rates[0] + 0.5), (rates[1] + 0.5) / max(rates[0] - 0.5, 1e-9)
        assert low - 0.005 <= float(cells[5][:-1]) <= high + 0.005
