"""Resamples for stability selection: complementary halves and the bootstrap, seeded."""

from collections import Counter

import pytest

import headsteer as hs
from headsteer.errors import ConfigError
from headsteer.heads.resample import resample_pairs

PAIRS = [hs.Pair(f"in{i}", f"out{i}") for i in range(10)]


def test_halves_are_disjoint_complementary_pairs_and_every_pair_is_in_half_of_them():
    samples = resample_pairs(PAIRS, "halves", 6, seed=3)
    assert len(samples) == 6 and all(len(s) == 5 and len(set(s)) == 5 for s in samples)
    for a, b in zip(samples[::2], samples[1::2]):
        assert set(a) | set(b) == set(PAIRS) and not set(a) & set(b)
    assert set(Counter(p for s in samples for p in s).values()) == {3}
    assert resample_pairs(PAIRS, "halves", 6, seed=3) == samples != resample_pairs(PAIRS, "halves", 6, seed=4)


def test_bootstrap_draws_n_pairs_with_replacement():
    samples = resample_pairs(PAIRS, "bootstrap", 20, seed=0)
    assert all(len(s) == 10 and set(s) <= set(PAIRS) for s in samples)
    assert any(len(set(s)) < 10 for s in samples)  # some pair is drawn twice (P(no repeat in 20 draws) ~ 1e-69)


def test_odd_halves_and_empty_halves_are_refused():
    with pytest.raises(ConfigError, match="must be even"):
        resample_pairs(PAIRS, "halves", 5, seed=0)
    with pytest.raises(ConfigError, match="halves of 1 training pair"):
        resample_pairs(PAIRS[:1], "halves", 2, seed=0)
    with pytest.raises(ConfigError, match="resampling must be one of"):
        resample_pairs(PAIRS, "jackknife", 2, seed=0)  # type: ignore[arg-type]
