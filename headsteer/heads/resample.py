"""Resamples of the training pairs for stability selection, seeded and reproducible.

Two schemes, each giving B samples of the N training pairs:

* ``halves`` (the default): B/2 random splits of the pairs into two disjoint halves of
  ⌊N/2⌋ pairs (Shah & Samworth's complementary pairs). Meinshausen & Bühlmann's
  stability selection and its error bound are stated for subsamples of size ⌊N/2⌋
  drawn without replacement; every pair lies in exactly half of the samples; and a
  fit on ⌊N/2⌋ pairs costs half a fit on N.
* ``bootstrap``: B draws of N pairs with replacement (Efron). A pair drawn twice is
  fitted as two rows, i.e. counted twice in the mean loss, as the bootstrap asks.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Literal, get_args

from headsteer.errors import ConfigError
from headsteer.tasks import Pair

ResamplingName = Literal["halves", "bootstrap"]
RESAMPLINGS: tuple[ResamplingName, ...] = get_args(ResamplingName)


def resample_pairs(pairs: Sequence[Pair], scheme: ResamplingName, n_samples: int, seed: int) -> list[tuple[Pair, ...]]:
    """``n_samples`` samples of ``pairs`` by ``scheme``; the same seed gives the same samples."""
    if scheme not in RESAMPLINGS:
        raise ConfigError(f"resampling must be one of {RESAMPLINGS}, got {scheme!r}")
    if not isinstance(n_samples, int) or n_samples < 1:
        raise ConfigError(f"the number of resamples must be an int >= 1, got {n_samples!r}")
    rng = random.Random(f"headsteer-resample-{seed}")  # a string seed: stable across Python versions
    pairs = list(pairs)
    if scheme == "bootstrap":
        return [tuple(rng.choice(pairs) for _ in pairs) for _ in range(n_samples)]
    if n_samples % 2:
        raise ConfigError(f"complementary halves come in pairs: the number of resamples must be even, got {n_samples}")
    half = len(pairs) // 2
    if half < 1:
        raise ConfigError(f"halves of {len(pairs)} training pair(s) are empty; give at least 2")
    samples = []
    for _ in range(n_samples // 2):
        order = rng.sample(pairs, len(pairs))
        samples += [tuple(order[:half]), tuple(order[half : 2 * half])]  # an odd N leaves one pair out of both
    return samples
