"""Accuracies of classification runs bootstrapped over their test samples.

Each draw resamples the test samples with replacement; runs tested on the same samples
(same indices and labels: the same :func:`sample_list_key`) get the same draws, so their
per-draw differences are paired. :func:`crossdistill.analysis.speaker_bootstrap.paired_bootstrap`
then resamples the seeds on top.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from crossdistill.analysis.speaker_bootstrap import MetricDraws, draw_speakers, seeded_for


@dataclass(frozen=True)
class SampleRun:
    """One run's test: its sample list (``key``, ``size``) and, per metric kind
    (``top1``, ``top5``), whether each sample was classified correctly."""

    key: str
    size: int
    correct: dict[str, np.ndarray]


def sample_list_key(index: np.ndarray, label: np.ndarray) -> str:
    """Identifies a test sample list: two runs with the same key saw the same samples."""
    digest = hashlib.sha256()
    for part in (index, label):
        digest.update(np.ascontiguousarray(part, dtype=np.int64).tobytes())
    return digest.hexdigest()[:16]


def bootstrap_accuracies(
    runs: Mapping[str, SampleRun], draws: int = 2000, seed: int = 0
) -> dict[str, MetricDraws]:
    """Every run's accuracy per kind on all its samples (``point``) and under each of
    ``draws`` resamplings of the samples, the same resamplings for runs on the same list."""
    out: dict[str, MetricDraws] = {}
    groups: dict[str, list[str]] = {}
    for name, run in runs.items():
        groups.setdefault(run.key, []).append(name)
    for key, names in groups.items():
        size = runs[names[0]].size
        counts = draw_speakers(size, draws, seeded_for(key, seed)).astype(np.float64)
        for name in names:
            correct = {k: v.astype(np.float64) for k, v in runs[name].correct.items()}
            out[name] = MetricDraws(
                point={k: float(v.mean()) for k, v in correct.items()},
                draws={k: counts @ v / size for k, v in correct.items()},
            )
    return out
