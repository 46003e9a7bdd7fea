"""validate_update: each reason to reject an owner's update, and a valid update passing, as dicts and ArrayRecords."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from fedmodel.server.validation import update_norm, validate_update
from flwr.app import ArrayRecord

Tensors = dict[str, torch.Tensor]


def reference() -> Tensors:
    return {"fc.weight": torch.zeros(3, 4), "fc.bias": torch.zeros(3), "count": torch.tensor([1], dtype=torch.int64)}


def honest() -> Tensors:
    return {"fc.weight": torch.full((3, 4), 0.1), "fc.bias": torch.full((3,), 0.1),
            "count": torch.tensor([2], dtype=torch.int64)}


def changed(**parts: torch.Tensor | None) -> Callable[[], Tensors]:
    def make() -> Tensors:
        out = honest()
        for key, value in parts.items():
            name = key.replace("__", ".")
            if value is None:
                del out[name]
            else:
                out[name] = value
        return out
    return make


@pytest.mark.parametrize("as_record", [False, True], ids=["dict", "ArrayRecord"])
def test_a_valid_update_passes(as_record: bool) -> None:
    update = ArrayRecord(honest()) if as_record else honest()
    assert validate_update(reference(), update, 100, max_update_norm=1.0, max_examples=1000) is None
    assert validate_update(reference(), update, 1000.0, max_update_norm=None, max_examples=1000) is None


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (changed(fc__bias=None), "array names differ from the global model: missing fc.bias"),
        (changed(extra=torch.zeros(1)), "unexpected extra"),
        (changed(fc__weight=torch.zeros(4, 4)), "'fc.weight' has shape (4, 4), expected (3, 4)"),
        (changed(fc__bias=torch.zeros(3, dtype=torch.float64)), "'fc.bias' has dtype float64, expected float32"),
        (changed(fc__bias=torch.tensor([0.0, math.nan, 0.0])), "NaN in 'fc.bias'"),
        (changed(fc__weight=torch.full((3, 4), -math.inf)), "infinity in 'fc.weight'"),
        (changed(fc__weight=torch.full((3, 4), 10.0)), "update norm 34.6"),
    ],
    ids=["missing", "extra", "shape", "dtype", "nan", "inf", "norm"],
)
@pytest.mark.parametrize("as_record", [False, True], ids=["dict", "ArrayRecord"])
def test_each_bad_update_is_rejected_with_its_reason(make: Callable[[], Tensors], needle: str, as_record: bool) -> None:
    update = ArrayRecord(make()) if as_record else make()
    reason = validate_update(reference(), update, 100, max_update_norm=5.0, max_examples=1000)
    assert reason is not None and needle in reason, reason


@pytest.mark.parametrize("num_examples", [0, -5, math.nan, math.inf, 1001, True, "100"])
def test_bad_example_counts_are_rejected(num_examples: object) -> None:
    reason = validate_update(reference(), honest(), num_examples,  # type: ignore[arg-type]
                             max_update_norm=None, max_examples=1000)
    assert reason is not None and reason.startswith("num-examples = "), reason


def test_no_norm_bound_lets_a_large_finite_update_pass() -> None:
    update = changed(fc__weight=torch.full((3, 4), 1e6))()
    assert validate_update(reference(), update, 10, max_update_norm=None, max_examples=1000) is None


def test_update_norm_is_the_l2_distance_over_float_arrays() -> None:
    assert update_norm(reference(), honest()) == pytest.approx(math.sqrt(15 * 0.01))
