"""Where the randomness that protects an owner's privacy comes from: the run's seed, or the OS.

A simulation is one trusted process tree: every draw of an owner's round is seeded from
(run seed, owner, round) (:func:`round_seed`), so a run is reproducible from ``--seed`` bit for bit.

A deployed node must not do that: the run's seed is the coordinator's and the owner's name travels in
every reply, so the coordinator could compute the seed, regenerate the DP noise and subtract it. At a
deployed node there is no seed (:func:`owner_seed` returns None) and:

* every bit of DP-SGD's Gaussian noise, of Poisson sampling and of the scaling statistics' noise comes
  straight from the OS CSPRNG (``os.urandom``: Linux ``getrandom``), fresh for every draw; nothing is
  seeded, kept or sent, so neither the coordinator nor a replay of the round can predict or repeat it
  (:func:`os_uniform`, :func:`os_standard_normal`, :class:`OsRandom`);
* draws that protect nothing (shuffling without DP, augmentation, dropout) take a fresh seed from
  :mod:`secrets` (:func:`plain_seed`): unknown to the coordinator, but fed to torch's Mersenne
  Twister, which is why it is not used for the draws above. Torch's CPU generator keeps only the low
  32 bits of a seed (``manual_seed(s)`` and ``manual_seed(s + 2**32)`` give the same stream) and its
  state follows from its outputs: someone who sees pure-noise coordinates of an update (a dead unit
  the coordinator chose) could search 2**32 seeds or solve for the state. Noise drawn from the OS has
  no state to recover.

What this does not claim: the Gaussian is sampled by Box-Muller in float64 and rounded to the model's
dtype, as torch's own sampler does; floating-point attacks on such samplers (Mironov 2012; Jin et al.
2022, arXiv:2112.05307) are out of scope (Opacus' ``secure_mode`` counters them but needs
``torchcsprng``, which is not installed). Whoever controls the node's machine or its OS entropy
(a local admin) is outside this guarantee too.
"""

from __future__ import annotations

import math
import os
import secrets

import numpy as np

_UNIT = 2.0 ** -53


def round_seed(seed: int, owner: int, server_round: int) -> int:
    """A distinct, reproducible seed per (run seed, owner, round) for sampling and noise (simulation only)."""
    return int(np.random.SeedSequence([seed, owner, server_round]).generate_state(1)[0])


def owner_seed(run_seed: int, owner: int, server_round: int, *, simulated: bool) -> int | None:
    """The seed of an owner's round: :func:`round_seed` in a simulation, None (draw from the OS) at a deployed node.

    Parameters
    ----------
    run_seed
        The run's ``--seed`` (the coordinator's: never used at a deployed node).
    owner
        The owner's numeric id.
    server_round
        The round (0 for a release outside training, such as the scaling statistics).
    simulated
        True for a simulated owner (a trusted process tree), False at a deployed node.
    """
    return round_seed(run_seed, owner, server_round) if simulated else None


def plain_seed(seed: int | None, offset: int = 0) -> int:
    """A seed for draws that protect nothing (shuffling, augmentation, dropout).

    ``seed + offset`` in a simulation; with no seed (a deployed node) a fresh 63-bit one from
    :mod:`secrets` each call, unknown to anyone else (a torch generator keeps 32 bits of it: never use it
    for noise or sampling, see the module's docstring).
    """
    return seed + offset if seed is not None else secrets.randbits(63)


def gaussian_source(seed: int | None) -> np.random.Generator | OsRandom:
    """A numpy generator for a release's Gaussian noise: seeded in a simulation, the OS CSPRNG without a seed."""
    return np.random.default_rng(seed) if seed is not None else OsRandom()


def os_uniform(count: int) -> np.ndarray:
    """``count`` independent uniforms in [0, 1) with 53 random bits each, every bit from ``os.urandom``."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    words = np.frombuffer(os.urandom(8 * count), dtype=np.uint64)
    return (words >> np.uint64(11)).astype(np.float64) * _UNIT


def os_standard_normal(count: int) -> np.ndarray:
    """``count`` independent standard normal draws (float64, Box-Muller) from :func:`os_uniform`'s uniforms."""
    pairs = (count + 1) // 2
    u = os_uniform(2 * pairs)
    radius = np.sqrt(-2.0 * np.log1p(-u[:pairs]))  # 1 - u is in (0, 1]: the log is finite
    angle = 2.0 * math.pi * u[pairs:]
    return np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:count]


class OsRandom:
    """The part of :class:`numpy.random.Generator` a release uses, with every bit from the OS CSPRNG.

    It has no seed and no state: two instances, or two calls, never repeat each other.
    """

    def normal(self, loc: float = 0.0, scale: float = 1.0, size: int | tuple[int, ...] | None = None,
               ) -> np.ndarray:
        """Gaussian draws of mean ``loc`` and standard deviation ``scale``, shaped ``size``."""
        if not (math.isfinite(scale) and scale >= 0):
            raise ValueError(f"scale must be a finite number >= 0, got {scale!r}")
        shape = () if size is None else (size,) if isinstance(size, int) else tuple(size)
        return loc + scale * os_standard_normal(math.prod(shape)).reshape(shape)
