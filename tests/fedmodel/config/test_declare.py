"""Tests of :mod:`fedmodel.config.declare`: a setting declared once is coerced, checked and keyed from that one place."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import pytest

from fedmodel.config import DEPLOYED_RUN_KEYS, AggregationSpec, PartitionSpec, RunConfig
from fedmodel.config.declare import TESTING_AID, coerce, declared, described, field_problems, option, own_fields
from fedmodel.config.sections import SECTIONS
from fedmodel.faults import Fault


@dataclass(frozen=True)
class _Knobs:
    """A section declared only for this test."""

    knob: int = option(3, help="A knob", check=lambda v: v > 0, expected="an integer > 0")
    mode: str = option("a", help="A mode", choices=("a", "b"), deployed=TESTING_AID)


def test_a_declared_field_is_checked_by_its_own_declaration() -> None:
    assert field_problems(_Knobs(), _Knobs) == []
    assert field_problems(_Knobs(knob=0, mode="c"), _Knobs) == ["knob = 0: expected an integer > 0",
                                                                "mode = 'c': expected a | b"]
    assert field_problems(_Knobs(knob=0, mode="c"), _Knobs, only=("mode",)) == ["mode = 'c': expected a | b"]
    assert [meta.deployed for _, meta in declared(_Knobs)] == ["allowed", "testing-aid"]
    assert described(dict((f.name, m) for f, m in declared(_Knobs))["mode"]) == "A mode: a | b"


@pytest.mark.parametrize(("tp", "raw", "value"), [
    (int, "5", 5), (int, 5.0, 5), (int, "5.0", 5), (float, "0.5", 0.5), (float, 2, 2.0), (bool, "TRUE", True),
    (bool, False, False), (str, " x ", "x"), (tuple[str, ...], "a, b,,", ("a", "b")), (tuple[str, ...], ["a"], ("a",)),
    (tuple[int, ...], "1,2", (1, 2)), (tuple[int, ...], [3], (3,)), (tuple[Fault, ...], "", ()),
    (PartitionSpec, "dirichlet:0.5", PartitionSpec("dirichlet", alpha=0.5)),
    (AggregationSpec, "krum:1", AggregationSpec("krum", byzantine=1)),
])
def test_raw_values_are_coerced_by_the_annotation(tp: Any, raw: Any, value: Any) -> None:
    assert coerce(tp, raw) == value


@pytest.mark.parametrize(("tp", "raw", "message"), [
    (int, "5.5", "expected an integer"), (int, True, "expected an integer"), (float, "x", "expected a number"),
    (float, True, "expected a number"), (bool, "yes", "expected true or false"), (str, 3, "expected a string"),
    (tuple[int, ...], "1,x", "expected comma-separated owner ids"),
])
def test_a_raw_value_of_the_wrong_type_is_refused(tp: Any, raw: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        coerce(tp, raw)


def test_every_run_field_is_declared_once_in_exactly_one_section() -> None:
    names = [name for section in SECTIONS for name in own_fields(section)]
    assert sorted(names) == sorted(f.name for f in dataclasses.fields(RunConfig))
    assert len(names) == len(set(names))
    assert [f.name for f, _ in declared(RunConfig)] == [f.name for f in dataclasses.fields(RunConfig)]


def test_the_deployed_allow_list_is_each_fields_declaration() -> None:
    declared_rules = {f.name.replace("_", "-"): meta.deployed for f, meta in declared(RunConfig)}
    assert dict(DEPLOYED_RUN_KEYS) == declared_rules
    assert DEPLOYED_RUN_KEYS["inject-faults"] == "testing-aid" and DEPLOYED_RUN_KEYS["nodes"] == "simulation-only"


def test_each_section_reports_only_its_own_fields() -> None:
    bad = RunConfig(clients=0, epsilon=-1.0, missing="guess")
    problems = {section.__name__: section.problems(bad) for section in SECTIONS}  # type: ignore[attr-defined]
    assert problems["TrainingSettings"] == ["clients = 0: expected an integer >= 1"]
    assert problems["PrivacySettings"] == ["epsilon = -1.0: expected a number > 0"]
    assert problems["CleaningSettings"] == ["missing = 'guess': expected error | drop | mean | median | mode"]
    assert problems["DataSettings"] == []
