"""The statistics of every table: mean, sample std (n - 1) and n per cell; paired
differences to a baseline over seeds with a 95 % Student-t interval
(:func:`crossdistill.analysis.paired.paired_difference`)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass

from crossdistill.analysis.paired import PairedDifference, paired_difference

__all__ = ["PairedDifference", "Summary", "better_direction", "paired_difference", "summarize"]

# substrings of a metric name that say which direction is better (checked in this order)
_LOWER = ("eer", "dcf", "loss", "error", "err_", "mse", "mae")
_HIGHER = ("acc", "top", "match", "f1", "auc", "precision", "recall", "recovery", "map")


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation (n - 1; NaN for n < 2) and number of values."""

    mean: float
    std: float
    n: int

    def format(self, scale: float = 1.0, digits: int = 3) -> str:
        """``0.593 ± 0.010 (n=3)``; ``0.593 (n=1)``; ``—`` without values."""
        if self.n == 0:
            return "—"
        if self.n == 1:
            return f"{self.mean * scale:.{digits}f} (n=1)"
        return f"{self.mean * scale:.{digits}f} ± {self.std * scale:.{digits}f} (n={self.n})"


def summarize(values: Iterable[float | None]) -> Summary:
    """Summary of the finite values (``None`` and NaN are left out)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return Summary(math.nan, math.nan, 0)
    std = statistics.stdev(finite) if len(finite) > 1 else math.nan
    return Summary(statistics.fmean(finite), std, len(finite))


def better_direction(metric: str) -> str | None:
    """``"lower"`` (EER, minDCF, loss, error), ``"higher"`` (accuracy, matching, ...) or
    ``None`` when the name does not say."""
    name = metric.rsplit("/", 1)[-1].lower()
    if any(word in name for word in _LOWER):
        return "lower"
    if any(word in name for word in _HIGHER):
        return "higher"
    return None
