"""``fedmodel simulate`` rejects bad input during validation: exit code 2, one clear line, no traceback.

None of these may start a simulation: ``_run`` is replaced by a function that fails the test.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from fedmodel.cli import app

# ``fedmodel.cli.simulate`` is shadowed by the command function of the same name on the package.
simulate_module = importlib.import_module("fedmodel.cli.simulate")


@pytest.fixture
def invoke(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    def no_simulation(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("validation passed and a simulation was started")

    monkeypatch.setattr(simulate_module, "_run", no_simulation)
    monkeypatch.setattr(simulate_module, "_superlink", lambda config: nullcontext())  # no SuperLink either
    monkeypatch.chdir(tmp_path)

    def run(args: list[str]) -> Any:
        return CliRunner().invoke(app, ["simulate", *args])  # no_simulation: bad input never reaches the engine

    return run


def check_rejected(result: Any, needles: list[str]) -> None:
    # click >= 8.2: result.output interleaves stdout and stderr; result.stderr holds stderr alone.
    assert "Traceback" not in result.output
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit)
    assert "error:" in result.stderr
    assert "error:" in result.output
    for needle in needles:
        assert needle in result.stderr


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--clients", "0"], ["clients = 0"]),
        (["--epsilon", "-1"], ["epsilon = -1"]),
        (["--partition", "dirichlet:0"], ["partition = 'dirichlet:0'"]),
        (["--dataset", "mnist"], ["dataset = 'mnist'"]),
        (["--format", "xml"], ["--format 'xml'"]),
        (["--strategy", "foo"], ["strategy = 'foo'"]),
    ],
    ids=["clients", "epsilon", "partition", "dataset", "format", "strategy"],
)
def test_bad_option_value(invoke: Any, args: list[str], needles: list[str]) -> None:
    check_rejected(invoke(args), needles)


def test_missing_data_file(invoke: Any, tmp_path: Path) -> None:
    path = tmp_path / "missing.csv"
    check_rejected(invoke(["--dataset", str(path), "--label", "y"]), [str(path), "file not found"])


def test_csv_without_label_column(invoke: Any, tmp_path: Path) -> None:
    path = tmp_path / "shard.csv"
    path.write_text("a,b,target\n1,2,0\n3,4,1\n5,6,0\n7,8,1\n", encoding="utf-8")
    check_rejected(invoke(["--dataset", str(path), "--label", "y"]),
                   [str(path), "no label column 'y'", "a, b, target"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is usable here, so --device cuda is valid")
def test_cuda_without_gpu(invoke: Any) -> None:
    check_rejected(invoke(["--device", "cuda"]), ["device = 'cuda'", "no CUDA GPU"])


def test_config_file_with_unknown_key(invoke: Any, tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text("clients = 4\nepochs = 3\n", encoding="utf-8")
    check_rejected(invoke(["--config", str(path)]), [str(path), "unknown key 'epochs'"])


def test_error_text_is_not_parsed_as_markup(invoke: Any, tmp_path: Path) -> None:
    path = tmp_path / "shard.csv"
    path.write_text("a,[/x],[bold]c\n1,2,0\n3,4,1\n", encoding="utf-8")
    check_rejected(invoke(["--dataset", str(path), "--label", "y"]),
                   ["no label column 'y'", "a, [/x], [bold]c"])


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--audit", "--dataset", "breast-cancer"], ["audit-canaries = 200", "at most features x classes", "60"]),
        (["--audit", "--audit-owners", "0,12"], ["audit-owners = [12]"]),
        (["--audit", "--audit-canaries", "1"], ["audit-canaries = 1"]),
    ],
    ids=["too-many-canaries", "owner", "count"],
)
def test_bad_audit_settings(invoke: Any, args: list[str], needles: list[str]) -> None:
    check_rejected(invoke(args), needles)


def test_superlink_boots_while_the_data_is_checked_and_stops_on_a_bad_input(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    steps: list[str] = []

    @contextmanager
    def superlink(config: Any) -> Iterator[None]:
        steps.append("superlink started")
        try:
            yield None
        finally:
            steps.append("superlink stopped")

    real_check = simulate_module.check_inputs

    def check(config: Any) -> None:
        steps.append("inputs checked")
        real_check(config)

    monkeypatch.setattr(simulate_module, "_superlink", superlink)
    monkeypatch.setattr(simulate_module, "check_inputs", check)
    monkeypatch.setattr(simulate_module, "_run", lambda *a, **k: pytest.fail("a bad input reached the engine"))
    path = tmp_path / "shard.csv"
    path.write_text("a,b,target\n1,2,0\n3,4,1\n", encoding="utf-8")
    check_rejected(CliRunner().invoke(app, ["simulate", "--dataset", str(path), "--label", "y"]), ["no label column"])
    assert steps == ["superlink started", "inputs checked", "superlink stopped"]


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--clients", "5", "--nodes", "9"], ["nodes = 9: expected 0 (one node per owner) or a count in [1, clients = 5]"]),
        (["--clients", "5", "--owners-per-round", "2"], ["owners-per-round = 2 needs nodes < clients", "--nodes"]),
        (["--clients", "5", "--nodes", "2", "--secure-aggregation"], ["with secure-aggregation: not supported yet"]),
        (["--partition", "sample:0"], ["sample needs a row count >= 1"]),
        (["--clients", "3", "--partition", "sample:100000"], ["each owner draws 100000 rows"]),
    ],
    ids=["nodes-range", "sampling-without-cohorts", "cohorts-secagg", "sample-zero", "sample-too-many"],
)
def test_bad_cohort_settings(invoke: Any, args: list[str], needles: list[str]) -> None:
    check_rejected(invoke(args), needles)


def test_many_owners_on_a_node_each_get_a_tip_and_cohorts_do_not() -> None:
    from fedmodel.config import RunConfig

    assert "--nodes 2" in (simulate_module.cohort_tip(RunConfig(clients=500)) or "")
    assert simulate_module.cohort_tip(RunConfig(clients=500, nodes=2)) is None
    assert simulate_module.cohort_tip(RunConfig(clients=10)) is None
    assert simulate_module.cohort_tip(RunConfig(clients=500, secure_aggregation=True)) is None  # cohorts refuse it


def test_the_summary_table_reads_the_typed_report(tmp_path: Path) -> None:
    import json

    from fedmodel.cli.console import out

    fixture = Path(__file__).parents[1] / "report" / "data" / "default_report_before.json"
    report = json.loads(fixture.read_text(encoding="utf-8"))
    report["timing"] = {"serverapp_seconds": 31.9, "total_seconds": 52.1, "startup_seconds": 14.1}
    report["rounds"][2]["num_failures"] = 2
    with out.capture() as captured:
        simulate_module.print_summary(report, tmp_path)
    text = " ".join(captured.get().split())
    for line in ("final accuracy │ 89.4%", "final f1 │ 89.5%", "DP-SGD, rdp accountant, delta 1e-05",
                 "max 2.995, min 2.995 (budget 3)", "owner failures │ 2",
                 "private local Ray: 1 CPU, 0 GPU each", "52.1 s (start-up 14.1 s)"):
        assert line in text
    report["privacy"] = {"mode": "none", "owners": [], "client_level": None}
    report["final"] = None
    with out.capture() as captured:
        simulate_module.print_summary(report, tmp_path)
    text = " ".join(captured.get().split())
    assert "none (--no-dp)" in text and "final accuracy │ -" in text
