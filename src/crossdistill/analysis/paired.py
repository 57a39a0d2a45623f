"""Paired comparison of a method with a baseline over seeds.

Same seed = same initialisation, data order and data draw, so the per-seed difference
``method - baseline`` removes the seed-to-seed variation both share. The 95 % interval is
Student's t over those differences (n - 1 degrees of freedom); when it contains zero the
difference is *not resolved* by these seeds and the methods are not ranked.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass

from scipy import stats


@dataclass(frozen=True)
class PairedDifference:
    """Mean of the per-seed differences, its 95 % t-interval and the number of pairs."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def resolved(self) -> bool:
        """The interval excludes zero (with n >= 2)."""
        return self.n >= 2 and (self.low > 0 or self.high < 0)

    def format(self, scale: float = 1.0, digits: int = 1) -> str:
        """``+1.2 [-0.3, +2.7] (n=3), not resolved`` (or ``, resolved``)."""
        if self.n == 0:
            return "—"
        if self.n == 1:
            return f"{self.mean * scale:+.{digits}f} (n=1, no interval)"
        verdict = "resolved" if self.resolved else "not resolved"
        return (
            f"{self.mean * scale:+.{digits}f} [{self.low * scale:+.{digits}f}, "
            f"{self.high * scale:+.{digits}f}] (n={self.n}), {verdict}"
        )


def paired_difference(
    method: Mapping[int, float], baseline: Mapping[int, float], confidence: float = 0.95
) -> PairedDifference:
    """``method - baseline`` over the seeds both have a finite value for."""
    diffs = [
        method[s] - baseline[s]
        for s in sorted(set(method) & set(baseline))
        if method[s] is not None
        and baseline[s] is not None
        and math.isfinite(method[s])
        and math.isfinite(baseline[s])
    ]
    n = len(diffs)
    if n == 0:
        return PairedDifference(math.nan, math.nan, math.nan, 0)
    mean = statistics.fmean(diffs)
    if n == 1:
        return PairedDifference(mean, math.nan, math.nan, 1)
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * statistics.stdev(diffs) / math.sqrt(n)
    return PairedDifference(mean, mean - half, mean + half, n)
