"""Paired differences over seeds against a hand computation."""

from __future__ import annotations

import math

import pytest

from crossdistill.analysis.paired import paired_difference


def test_paired_interval_by_hand():
    # differences 1, 2, 3: mean 2, sample std 1, t(0.975, df=2) = 4.302653 (tables)
    diff = paired_difference({0: 11.0, 1: 22.0, 2: 33.0}, {0: 10.0, 1: 20.0, 2: 30.0})
    half = 4.302653 / math.sqrt(3)
    assert (diff.mean, diff.n) == (2.0, 3)
    assert diff.low == pytest.approx(2.0 - half, abs=1e-5)
    assert diff.high == pytest.approx(2.0 + half, abs=1e-5)
    assert not diff.resolved  # [-0.48, 4.48] contains 0
    assert diff.format(digits=2) == "+2.00 [-0.48, +4.48] (n=3), not resolved"


def test_pairing_removes_the_shared_seed_effect():
    # huge seed-to-seed spread, constant +1 gain: unpaired stds overlap, paired is exact
    base = {0: 10.0, 1: 50.0, 2: 90.0, 3: 30.0}
    diff = paired_difference({s: v + 1.0 for s, v in base.items()}, base)
    assert diff.low == pytest.approx(1.0) and diff.high == pytest.approx(1.0)
    assert diff.resolved


def test_only_common_finite_seeds_are_paired():
    diff = paired_difference({0: 1.0, 1: float("nan"), 2: 3.0, 5: 9.0}, {0: 0.0, 1: 0.0, 2: 0.0})
    assert diff.n == 2 and diff.mean == 2.0
    single = paired_difference({0: 1.0}, {0: 0.5})
    assert single.n == 1 and not single.resolved and "no interval" in single.format()
    assert paired_difference({}, {0: 1.0}).format() == "—"
