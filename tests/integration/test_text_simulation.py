"""`fedmodel simulate` fine-tuning the tiny random BERT with DP LoRA through Flower's engine (SuperLink + Ray)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
from opacus.accountants.rdp import RDPAccountant

from fedmodel.llm import fingerprint, read_adapter

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # about 90 s; tests/server/test_text.py runs it in-process
EPSILON = 6.0


def test_two_owners_fine_tune_a_tiny_bert_and_only_the_adapter_travels(
    bert_dir: Path, tmp_path: Path, random_texts: Callable[..., list[str]]
) -> None:
    data = tmp_path / "reviews.csv"
    with data.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["review", "sentiment"])
        for i, text in enumerate(random_texts(80, seed=21)):
            writer.writerow([text, "fresh" if i % 2 else "rotten"])
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "fedmodel.cli", "simulate", "--task", "classification", "--model-path", str(bert_dir),
           "--dataset", str(data), "--text-column", "review", "--label", "sentiment", "--clients", "2", "--rounds",
           "2", "--epsilon", str(EPSILON), "--max-length", "16", "--batch-size", "8", "--physical-batch-size", "4",
           "--out", str(out), "--format", "json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=500, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["status"] == "completed" and report["task"] == "classification"
    assert [r["round"] for r in report["rounds"]] == [1, 2] and all(r["num_failures"] == 0 for r in report["rounds"])

    adapter = read_adapter(out / "adapter.safetensors")
    assert adapter.base_fingerprint == fingerprint(bert_dir) == report["language_model"]["fingerprint"]
    assert not (out / "model.safetensors").exists()  # no full model is written, or sent
    payload = report["payload"]
    headers = 128 * len(adapter.state)  # Flower serialises each tensor as .npy: 128 header bytes here
    adapter_bytes = sum(t.numel() * t.element_size() for t in adapter.state.values())
    assert payload["adapter_bytes"] == adapter_bytes
    assert {(r["round"], r["owner"]) for r in payload["owners"]} == {(1, 0), (1, 1), (2, 0), (2, 1)}
    assert all(r["bytes_sent"] == adapter_bytes + headers for r in payload["owners"])
    assert payload["max_ratio_to_full_model"] == pytest.approx((adapter_bytes + headers) / payload["full_model_bytes"])
    assert payload["max_ratio_to_full_model"] < 0.15  # a 90 KB toy model; MiniLM's is 0.33% (README)

    orders = RDPAccountant.DEFAULT_ALPHAS
    owners = report["privacy"]["owners"]
    assert [o["owner"] for o in owners] == [0, 1]
    for o in owners:
        rdp = compute_rdp(q=o["sample_rate"], noise_multiplier=o["noise_multiplier"], steps=o["steps"], orders=orders)
        assert o["epsilon"] == pytest.approx(get_privacy_spent(orders=orders, rdp=rdp, delta=1e-5)[0], rel=1e-9)
        assert 0 < o["epsilon"] <= EPSILON
