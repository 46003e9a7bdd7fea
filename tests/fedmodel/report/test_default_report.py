"""The default simulation's report.json is the one kept from before the typed report, key for key.

It runs ``fedmodel simulate`` with no options (Flower and Ray, about a minute: marked ``integration``);
the fast check that the typed report writes the same file is ``test_model.py``'s round trip.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

BEFORE = Path(__file__).parent / "data" / "default_report_before.json"
REPO = Path(__file__).resolve().parents[3]


def comparable(report: dict[str, Any]) -> dict[str, Any]:
    """The report less what differs from run to run: timings and the run's own names.

    Timings are ``timing`` and each round's ``seconds``; the run's names are the run folder
    (``config.out``), the run id, the Ray node ids (``owners[].ray_node``, ``resources.ray_nodes``)
    and the installed versions' values (the machine's, not the run's).
    """
    report = copy.deepcopy(report)
    report.pop("timing", None)
    for row in report["rounds"]:
        row.pop("seconds", None)
    for key in ("out", "run-id"):
        report["config"].pop(key)
    for owner in report["owners"]:
        owner["ray_node"] = "ray-node" if owner["ray_node"] else None
    report["resources"]["ray_nodes"] = len(report["resources"]["ray_nodes"])
    report["versions"] = sorted(report["versions"])
    return report


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Where two reports differ: keys, types or values; floats within 1e-12 relative count as equal.

    The mean train loss of a round sums the owners' losses in the order their replies arrive, so its
    last bit can differ from run to run (it did before the typed report too).
    """
    if isinstance(a, dict) and isinstance(b, dict):
        # the resolved config lists its keys by settings section since the options are declared once (issue 21);
        # everywhere else the order is kept too
        same = set(a) == set(b) if path == ".config" else list(a) == list(b)
        if not same:
            return [f"{path}: keys {list(a)} != {list(b)}"]
        return [d for k in a for d in differences(a[k], b[k], f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} items != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in differences(x, y, f"{path}[{i}]")]
    if isinstance(a, float) and isinstance(b, float):
        return [] if a == pytest.approx(b, rel=1e-12) else [f"{path}: {a!r} != {b!r}"]
    return [] if type(a) is type(b) and a == b else [f"{path}: {a!r} != {b!r}"]


def test_the_default_runs_report_has_the_same_keys_and_values_as_before(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    run = subprocess.run([sys.executable, "-m", "fedmodel.cli", "simulate", "--out", str(tmp_path / "run")],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    after = json.loads((tmp_path / "run" / "report.json").read_text(encoding="utf-8"))
    before = json.loads(BEFORE.read_text(encoding="utf-8"))
    assert differences(comparable(after), comparable(before)) == []
    assert set(after) == {*before, "timing"}
