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
