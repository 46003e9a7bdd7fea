"""Checks on an owner's model update before it may reach aggregation.

An update that fails any check is rejected as a whole, with one reason naming what is wrong, so a
broken or malicious owner cannot touch the global model:

* the array names differ from the global model's (missing or unexpected names);
* an array has another shape or dtype than the global model's;
* an array holds NaN or infinity;
* the L2 norm of ``update - global`` over all floating-point arrays is above ``max_update_norm``;
* the example count (the aggregation weight) is not finite, <= 0 or above ``max_examples``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from flwr.app import ArrayRecord


def validate_update(
    reference: Mapping[str, torch.Tensor], update: ArrayRecord | Mapping[str, torch.Tensor], num_examples: float,
    *, max_update_norm: float | None, max_examples: int,
) -> str | None:
    """The reason to reject ``update`` (an owner's new weights) against the global model ``reference``, or None.

    ``max_update_norm`` None means no bound on the update's norm.
    """
    reason = _check_examples(num_examples, max_examples)
    if reason is not None:
        return reason
    reason = _check_names(reference, update)
    if reason is not None:
        return reason
    tensors, reason = _tensors(update)
    if tensors is None:
        return reason
    for check in (_check_types, _check_finite):
        reason = check(reference, tensors)
        if reason is not None:
            return reason
    if max_update_norm is not None:
        norm = update_norm(reference, tensors)
        if not norm <= max_update_norm:
            return f"update norm {norm:.6g} is above max-update-norm {max_update_norm:g}"
    return None


def update_norm(reference: Mapping[str, torch.Tensor], update: Mapping[str, torch.Tensor]) -> float:
    """L2 norm of ``update - reference`` over all floating-point arrays, computed in float64."""
    total = 0.0
    for key, ref in reference.items():
        if ref.is_floating_point():
            diff = update[key].to(torch.float64) - ref.to(torch.float64)
            total += float(torch.sum(diff * diff))
    return math.sqrt(total)


def _check_examples(num_examples: float, max_examples: int) -> str | None:
    if isinstance(num_examples, bool) or not isinstance(num_examples, (int, float)):
        return f"num-examples = {num_examples!r}: expected a number"
    if not math.isfinite(num_examples) or not 0 < num_examples <= max_examples:
        return f"num-examples = {num_examples!r}: expected a finite number in (0, {max_examples}]"
    return None


def _check_names(reference: Mapping[str, torch.Tensor], update: Mapping[str, object]) -> str | None:
    missing = [k for k in reference if k not in update]
    extra = [k for k in update if k not in reference]
    if not missing and not extra:
        return None
    parts = []
    if missing:
        parts.append(f"missing {', '.join(missing)}")
    if extra:
        parts.append(f"unexpected {', '.join(extra)}")
    return f"array names differ from the global model: {'; '.join(parts)}"


def _tensors(update: ArrayRecord | Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor] | None, str]:
    """The update as torch tensors (an ArrayRecord is decoded array by array)."""
    if not isinstance(update, ArrayRecord):
        bad = [k for k, v in update.items() if not isinstance(v, torch.Tensor)]
        if bad:
            return None, f"array {bad[0]!r} is not a tensor"
        return dict(update), ""
    out: dict[str, torch.Tensor] = {}
    for key, array in update.items():
        try:
            out[key] = torch.from_numpy(array.numpy())
        except Exception as exc:  # malformed bytes or a dtype torch lacks: the owner sent garbage
            return None, f"array {key!r} cannot be decoded ({type(exc).__name__}: {exc})"
    return out, ""


def _check_types(reference: Mapping[str, torch.Tensor], update: Mapping[str, torch.Tensor]) -> str | None:
    problems = []
    for key, ref in reference.items():
        got = update[key]
        if got.shape != ref.shape:
            problems.append(f"{key!r} has shape {tuple(got.shape)}, expected {tuple(ref.shape)}")
        elif got.dtype != ref.dtype:
            problems.append(f"{key!r} has dtype {_dtype(got.dtype)}, expected {_dtype(ref.dtype)}")
    return "wrong array: " + "; ".join(problems) if problems else None


def _check_finite(reference: Mapping[str, torch.Tensor], update: Mapping[str, torch.Tensor]) -> str | None:
    problems = []
    for key in reference:
        tensor = update[key]
        if not (tensor.is_floating_point() or tensor.is_complex()):
            continue
        if bool(torch.isnan(tensor).any()):
            problems.append(f"NaN in {key!r}")
        elif bool(torch.isinf(tensor).any()):
            problems.append(f"infinity in {key!r}")
    return "non-finite values: " + "; ".join(problems) if problems else None


def _dtype(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
