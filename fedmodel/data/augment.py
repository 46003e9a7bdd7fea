"""Optional augmentation of image-like rows inside the training loop: random shifts and Gaussian noise.

Each row of a batch is a flattened image (``height x width`` features). :func:`augment_batch`
shifts every image by its own random whole number of pixels on both axes (the uncovered border is
zero) and adds Gaussian noise, all drawn from the generator passed in, so that a seed gives the same
batch again. Config text: ``"shift:1,noise:0.05"``, ``"shift:2,shape:28x28"`` or ``"none"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedmodel.errors import ConfigError

if TYPE_CHECKING:  # torch loads on first use: RunConfig parses augment specs in every process
    import torch

_KEYS: tuple[str, ...] = ("shift", "noise", "shape")


@dataclass(frozen=True)
class AugmentSpec:
    """What :func:`augment_batch` does; the defaults do nothing.

    Attributes
    ----------
    shift
        Largest shift in pixels, on each axis, in either direction.
    noise
        Standard deviation of the Gaussian noise added to every feature (in feature units).
    image_shape
        (height, width) of an image; None takes a square image of ``sqrt(num_features)`` pixels a side.
    """

    shift: int = 0
    noise: float = 0.0
    image_shape: tuple[int, int] | None = None

    def validate(self) -> None:
        """Raise ConfigError listing every invalid value."""
        problems = []
        if isinstance(self.shift, bool) or not isinstance(self.shift, int) or self.shift < 0:
            problems.append(f"augment shift {self.shift!r}: expected a whole number of pixels >= 0")
        if isinstance(self.noise, bool) or not isinstance(self.noise, (int, float)) or not (
                math.isfinite(self.noise) and self.noise >= 0):
            problems.append(f"augment noise {self.noise!r}: expected a finite number >= 0")
        shape = self.image_shape
        if shape is not None and not (isinstance(shape, tuple) and len(shape) == 2 and all(
                isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape)):
            problems.append(f"augment image shape {shape!r}: expected (height, width), two positive whole numbers")
        if problems:
            raise ConfigError(problems)

    @property
    def is_noop(self) -> bool:
        """True when augmentation changes nothing."""
        return self.shift == 0 and self.noise == 0

    def shape_for(self, num_features: int) -> tuple[int, int]:
        """The (height, width) of images with ``num_features`` pixels; ConfigError when they do not fit."""
        if self.image_shape is not None:
            height, width = self.image_shape
            if height * width != num_features:
                raise ConfigError([f"augment image shape {height}x{width}: {height * width} pixels; "
                                   f"the data has {num_features} features"])
            return height, width
        side = math.isqrt(num_features)
        if side * side != num_features:
            raise ConfigError([f"augment: {num_features} features are not a square image; "
                               "give the image shape (shape:HxW)"])
        return side, side


def shift_images(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, image_shape: tuple[int, int]) -> torch.Tensor:
    """Shift each flattened image by its own offsets, filling the uncovered border with zeros.

    Parameters
    ----------
    x
        rows x (height * width).
    dy, dx
        Per row, whole-pixel offsets (int64): positive ``dy`` moves the image down, positive ``dx`` right.
    image_shape
        (height, width).

    Returns
    -------
    torch.Tensor
        A new tensor of the shape and dtype of ``x``.
    """
    import torch

    n = x.shape[0]
    height, width = image_shape
    reach = int(max(dy.abs().max().item(), dx.abs().max().item())) if n else 0
    images = torch.nn.functional.pad(x.reshape(n, height, width), (reach, reach, reach, reach))
    rows = torch.arange(height, device=x.device)[None, :] - dy.to(x.device)[:, None] + reach
    cols = torch.arange(width, device=x.device)[None, :] - dx.to(x.device)[:, None] + reach
    batch = torch.arange(n, device=x.device)[:, None, None]
    return images[batch, rows[:, :, None], cols[:, None, :]].reshape(n, height * width)


def augment_batch(x: torch.Tensor, spec: AugmentSpec, generator: torch.Generator, *,
                  background: float = 0.0) -> torch.Tensor:
    """Randomly shift each image in ``[-shift, shift]`` pixels on both axes, then add Gaussian noise.

    Parameters
    ----------
    x
        Floating-point rows x features, each row a flattened image; zero rows are allowed.
    spec
        The augmentation.
    generator
        The source of every random draw (offsets first, then noise), on the device of ``x`` or the CPU.
    background
        The value of an empty pixel (e.g. -1 for images scaled to [-1, 1]): the border uncovered by a
        shift is filled with it.

    Returns
    -------
    torch.Tensor
        A new tensor of the shape, dtype and device of ``x``.

    Raises
    ------
    ConfigError
        ``spec`` is invalid or does not fit the number of features.
    ValueError
        ``x`` is not a 2-D floating-point tensor.
    """
    import torch

    spec.validate()
    if x.ndim != 2 or not x.is_floating_point():
        raise ValueError(f"augment: x has shape {tuple(x.shape)} and dtype {x.dtype}; expected 2-D floating point")
    shape = spec.shape_for(x.shape[1])
    out = x.detach().clone()
    n = x.shape[0]
    where = generator.device
    if spec.shift > 0:
        dy = torch.randint(-spec.shift, spec.shift + 1, (n,), generator=generator, device=where)
        dx = torch.randint(-spec.shift, spec.shift + 1, (n,), generator=generator, device=where)
        out = shift_images(out - background, dy, dx, shape) + background
    if spec.noise > 0:
        noise = torch.randn(tuple(x.shape), generator=generator, device=where, dtype=x.dtype)
        out = out + spec.noise * noise.to(x.device)
    return out


def parse_augment(text: str) -> AugmentSpec:
    """The spec of a config text such as ``"shift:1,noise:0.05"``, ``"shape:28x28,shift:2"`` or ``"none"``.

    Raises
    ------
    ValueError
        The text names an unknown key, repeats one or gives a value out of range; the message says
        what is allowed.
    """
    cleaned = text.strip().lower()
    if cleaned in ("", "none"):
        return AugmentSpec()
    values: dict[str, str] = {}
    for part in cleaned.split(","):
        key, sep, value = (p.strip() for p in part.partition(":"))
        if not sep or key not in _KEYS or not value:
            raise ValueError(f"augment {text!r}: part {part.strip()!r}; expected key:value with key one of "
                             f"{', '.join(_KEYS)} (e.g. 'shift:1,noise:0.05'), or 'none'")
        if key in values:
            raise ValueError(f"augment {text!r}: {key!r} is given twice")
        values[key] = value
    spec = AugmentSpec(_whole("shift", values.get("shift", "0"), text), _number(values.get("noise", "0"), text),
                       _shape(values["shape"], text) if "shape" in values else None)
    try:
        spec.validate()
    except ConfigError as exc:
        raise ValueError(f"augment {text!r}: {'; '.join(exc.problems)}") from None
    return spec


def _whole(key: str, value: str, text: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"augment {text!r}: {key} {value!r}; expected a whole number") from None


def _number(value: str, text: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"augment {text!r}: noise {value!r}; expected a number") from None


def _shape(value: str, text: str) -> tuple[int, int]:
    height, sep, width = value.partition("x")
    if not sep:
        raise ValueError(f"augment {text!r}: shape {value!r}; expected HEIGHTxWIDTH, e.g. 28x28")
    return _whole("shape height", height, text), _whole("shape width", width, text)
