"""Augmentation of image rows: exact shifts with zero fill, noise, empty batches, determinism, config text."""

from __future__ import annotations

import pytest
import torch

from fedmodel.data.augment import AugmentSpec, augment_batch, parse_augment, shift_images
from fedmodel.errors import ConfigError


def bright(n: int, row: int, col: int, side: int = 5) -> torch.Tensor:
    """``n`` flattened ``side x side`` images, dark but for one pixel of value 1."""
    x = torch.zeros(n, side * side)
    x[:, row * side + col] = 1.0
    return x


def pixel(image: torch.Tensor, side: int = 5) -> tuple[int, int] | None:
    """Where the bright pixel is, or None when it was shifted out."""
    hits = torch.nonzero(image.reshape(side, side) == 1.0)
    return None if len(hits) == 0 else (int(hits[0, 0]), int(hits[0, 1]))


def test_shift_images_moves_by_the_offsets() -> None:
    x = bright(4, 2, 2)
    out = shift_images(x, torch.tensor([1, -2, 0, 2]), torch.tensor([0, 1, -1, 2]), (5, 5))
    assert [pixel(image) for image in out] == [(3, 2), (0, 3), (2, 1), (4, 4)]
    assert out.sum().item() == 4.0  # one pixel each, nothing else lit


def test_shift_images_fills_with_zeros() -> None:
    x = torch.arange(1.0, 10.0).reshape(1, 9)  # 3x3: 1 2 3 / 4 5 6 / 7 8 9
    out = shift_images(x, torch.tensor([1]), torch.tensor([-1]), (3, 3))
    assert out.reshape(3, 3).tolist() == [[0, 0, 0], [2, 3, 0], [5, 6, 0]]


def test_shift_out_of_the_image_leaves_it_dark() -> None:
    out = shift_images(bright(1, 0, 0), torch.tensor([-1]), torch.tensor([0]), (5, 5))
    assert pixel(out[0]) is None and out.sum().item() == 0.0


def test_augment_batch_shifts_each_example_within_range() -> None:
    generator = torch.Generator().manual_seed(3)
    out = augment_batch(bright(200, 2, 2), AugmentSpec(shift=1), generator)
    places = [pixel(image) for image in out]
    assert None not in places  # a shift of one pixel keeps the centre inside
    offsets = {(p[0] - 2, p[1] - 2) for p in places if p is not None}
    assert offsets == {(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)}
    assert out.sum().item() == 200.0


def test_augment_batch_is_deterministic_and_new() -> None:
    x = torch.rand(8, 16, generator=torch.Generator().manual_seed(0))
    spec = AugmentSpec(shift=1, noise=0.1)
    first = augment_batch(x, spec, torch.Generator().manual_seed(7))
    second = augment_batch(x, spec, torch.Generator().manual_seed(7))
    other = augment_batch(x, spec, torch.Generator().manual_seed(8))
    assert torch.equal(first, second) and not torch.equal(first, other)
    assert first.shape == x.shape and first.dtype == x.dtype and first.data_ptr() != x.data_ptr()


def test_noise_has_the_given_scale() -> None:
    x = torch.zeros(400, 25, dtype=torch.float64)
    out = augment_batch(x, AugmentSpec(noise=0.5), torch.Generator().manual_seed(1))
    assert out.dtype == torch.float64
    assert abs(out.std().item() - 0.5) < 0.02 and abs(out.mean().item()) < 0.02
    assert torch.count_nonzero(x) == 0  # the input is unchanged


def test_noop_returns_an_equal_copy() -> None:
    x = torch.rand(3, 9)
    out = augment_batch(x, AugmentSpec(), torch.Generator().manual_seed(0))
    assert torch.equal(out, x) and out.data_ptr() != x.data_ptr()


def test_empty_batch() -> None:
    out = augment_batch(torch.zeros(0, 25), AugmentSpec(shift=2, noise=0.1), torch.Generator().manual_seed(0))
    assert out.shape == (0, 25)


def test_rectangular_image_shape() -> None:
    x = torch.zeros(1, 6)
    x[0, 0] = 1.0  # 2x3, top-left
    spec = AugmentSpec(image_shape=(2, 3))
    out = shift_images(x, torch.tensor([1]), torch.tensor([2]), spec.shape_for(6))
    assert out.reshape(2, 3).tolist() == [[0, 0, 0], [0, 0, 1]]


def test_shape_must_fit_the_features() -> None:
    with pytest.raises(ConfigError, match="10 features are not a square image"):
        augment_batch(torch.zeros(2, 10), AugmentSpec(shift=1), torch.Generator())
    with pytest.raises(ConfigError, match="6 pixels; the data has 10 features"):
        AugmentSpec(image_shape=(2, 3)).shape_for(10)


def test_validate_lists_every_problem() -> None:
    with pytest.raises(ConfigError) as info:
        AugmentSpec(shift=-1, noise=float("nan"), image_shape=(0, 3)).validate()
    assert len(info.value.problems) == 3


@pytest.mark.parametrize(("text", "expected"), [
    ("none", AugmentSpec()),
    ("", AugmentSpec()),
    ("shift:1,noise:0.05", AugmentSpec(shift=1, noise=0.05)),
    (" Shift : 2 , shape : 28x28 ", AugmentSpec(shift=2, image_shape=(28, 28))),
    ("noise:0", AugmentSpec()),
])
def test_parse_augment(text: str, expected: AugmentSpec) -> None:
    assert parse_augment(text) == expected


@pytest.mark.parametrize(("text", "needle"), [
    ("shift", "expected key:value"),
    ("rotate:5", "expected key:value with key one of shift, noise, shape"),
    ("shift:1,shift:2", "'shift' is given twice"),
    ("shift:1.5", "shift '1.5'; expected a whole number"),
    ("noise:lots", "noise 'lots'; expected a number"),
    ("shift:-1", "expected a whole number of pixels >= 0"),
    ("noise:-0.1", "expected a finite number >= 0"),
    ("shape:28", "expected HEIGHTxWIDTH"),
])
def test_parse_augment_rejects(text: str, needle: str) -> None:
    with pytest.raises(ValueError, match="augment") as info:
        parse_augment(text)
    assert needle in str(info.value)
