"""Paired differences of verification metrics bootstrapped over test speakers and seeds.

Scheme (docs/tables.md, "Speaker bootstrap"): one draw resamples the ``S`` test speakers
with replacement (speaker ``k`` drawn ``m_k`` times) and rebuilds the trial list as if each
copy were a speaker of its own: a target trial of speaker ``k`` counts ``m_k`` times, a
non-target trial between ``a`` and ``b`` counts ``m_a * m_b`` times (every copy of ``a``
against every copy of ``b``). EER / minDCF of a run under a draw are those of its scores
with these trial weights (:func:`weighted_errors`, the definitions of
:mod:`crossdistill.metrics.verification`). Runs tested on the same trial list (every seed
of a table on fixed data) see the *same* draws. Within each draw the seeds are resampled
too (with replacement, the same seeds for both rows), and the statistic is the mean over
the drawn seeds of ``row - baseline``; the interval is the percentile interval of that
statistic over the draws.

Cost: the scores of a run are sorted once. For a block of draws the trial weights of each
class are gathered in score order from the small ``[draws, speakers]`` table of counts and
summed up (two integer running sums); the EER crossing is then a binary search, and minDCF
a scan over the points whose false-acceptance rate stays below the accept-nothing cost
(about the first percent of the non-targets).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from crossdistill.analysis.paired import PairedDifference

BLOCK_BYTES = 16 * 2**20  # a block of draws: about this much per [draws, trials] int32 array


@dataclass(frozen=True)
class SortedTrials:
    """A run's trials sorted by decreasing score, split by class, and its operating points.

    ``target_order`` / ``nontarget_order``: positions (in the trial list) of the target /
    non-target trials by decreasing score. The operating points are the ends of the runs of
    equal scores (ties move together); at point ``p`` the first ``targets[p]`` targets and
    ``nontargets[p]`` non-targets (by score) are accepted. ``candidates``: the points that
    can attain minDCF (the last point before each increase of the non-target count, and the
    last point), in order."""

    target_order: np.ndarray
    nontarget_order: np.ndarray
    targets: np.ndarray
    nontargets: np.ndarray
    candidates: np.ndarray

    @classmethod
    def of(cls, scores: np.ndarray, labels: np.ndarray) -> SortedTrials:
        scores = np.asarray(scores, dtype=np.float64)
        labels = np.asarray(labels)
        if scores.ndim != 1 or scores.shape != labels.shape or not np.isfinite(scores).all():
            raise ValueError("scores must be finite, 1-d and as many as the labels")
        order = np.argsort(-scores, kind="stable")
        ordered, target = scores[order], labels[order] == 1
        ends = np.flatnonzero(np.append(ordered[1:] != ordered[:-1], True))
        targets = np.cumsum(target)[ends]
        nontargets = ends + 1 - targets
        grows = np.append(nontargets[1:] > nontargets[:-1], True)
        return cls(order[target], order[~target], targets, nontargets, np.flatnonzero(grows))


def weighted_errors(
    trials: SortedTrials,
    weights: np.ndarray,
    p_target: float = 0.01,
    c_miss: float = 1.0,
    c_fa: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """EER and normalised minDCF ``[draws]`` of the trials under each row of the integer
    ``weights`` (``[draws, trials]``, trial-list order; a weight = how often a trial counts).

    The operating points, ties and the EER interpolation are those of
    :func:`crossdistill.metrics.verification.compute_eer` / ``compute_min_dcf`` (all weights
    1 gives their values up to float rounding; weight ``w`` = the trial repeated ``w``
    times). A draw without target or without non-target weight gives NaN."""
    weights = np.asarray(weights)
    if not np.issubdtype(weights.dtype, np.integer):
        raise ValueError(
            f"weights must be integers (how often a trial counts), got {weights.dtype}"
        )
    return _errors(
        trials,
        weights[:, trials.target_order],
        weights[:, trials.nontarget_order],
        p_target,
        c_miss,
        c_fa,
    )


def _first_true(condition, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Per row, the first ``k`` in ``[lo, hi]`` where the monotone ``condition(k)`` holds
    (``hi`` where none does before it): a binary search on all rows at once."""
    lo, hi = lo.copy(), hi.copy()
    while True:
        open_ = lo < hi
        if not open_.any():
            return lo
        mid = (lo + hi) // 2
        holds = condition(mid) | ~open_
        hi = np.where(holds & open_, mid, hi)
        lo = np.where(holds, lo, mid + 1)


def _cumulative(weights: np.ndarray, max_weight: int) -> np.ndarray:
    """The running sums of the rows of integer ``weights`` (of a fresh array: summed in
    place when int32 cannot overflow, else in int64)."""
    if weights.dtype != np.int32 or weights.shape[1] * max_weight >= 2**31:
        weights = weights.astype(np.int64)
    return np.cumsum(weights, axis=1, out=weights)


def _errors(
    trials: SortedTrials,
    target_weights: np.ndarray,
    nontarget_weights: np.ndarray,
    p_target: float,
    c_miss: float,
    c_fa: float,
    max_weight: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`weighted_errors` from the weights of the targets and of the non-targets in
    :class:`SortedTrials` order (``[draws, n_targets]``, ``[draws, n_nontargets]``).

    Running sums per class give ``tp`` / ``fp`` at any operating point. EER: the first point
    with ``fp * N_t + tp * N_n >= N_t * N_n`` (FAR >= FRR; monotone, so a binary search),
    interpolated with the point before. minDCF: the candidate point minimising
    ``c_fa (1 - p) fp / N_n - c_miss p tp / N_t`` (accept-nothing = 0), among the candidates
    whose ``c_fa (1 - p) FAR`` does not already exceed the accept-nothing cost ``c_miss p``
    (about the first percent of the non-targets). ``max_weight``: a bound of the weights
    (default: their maximum), to sum in int32 where that cannot overflow."""
    if max_weight is None:
        max_weight = int(max(target_weights.max(initial=0), nontarget_weights.max(initial=0)))
    tp_sum = _cumulative(target_weights, max_weight)  # [draws, targets]: first j+1 summed
    fp_sum = _cumulative(nontarget_weights, max_weight)
    draws = np.arange(tp_sum.shape[0])

    def first(sums: np.ndarray, count: np.ndarray, rows: np.ndarray | slice) -> np.ndarray:
        """The weight of the first ``count`` trials of a class (0 for none)."""
        return np.where(count > 0, sums[rows, np.maximum(count - 1, 0)], 0)

    n_target = first(tp_sum, np.full_like(draws, tp_sum.shape[1]), draws).astype(np.float64)
    n_nontarget = first(fp_sum, np.full_like(draws, fp_sum.shape[1]), draws).astype(np.float64)
    defined = (n_target > 0) & (n_nontarget > 0)
    n_target[~defined], n_nontarget[~defined] = 1.0, 1.0  # placeholders, set to NaN below

    def counts(point: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(tp, fp) weights accepted at ``point`` (-1 = threshold +inf: none)."""
        at = np.maximum(point, 0)
        tp = np.where(point < 0, 0, first(tp_sum, trials.targets[at], draws))
        fp = np.where(point < 0, 0, first(fp_sum, trials.nontargets[at], draws))
        return tp, fp

    def rates(point: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tp, fp = counts(point)
        return fp / n_nontarget, 1.0 - tp / n_target

    def crossed(point: np.ndarray) -> np.ndarray:
        tp, fp = counts(point)
        return fp * n_target + tp * n_nontarget >= n_target * n_nontarget

    last = len(trials.targets) - 1  # accept all: always crossed
    k = _first_true(crossed, np.zeros_like(draws), np.full_like(draws, last))
    far1, frr1 = rates(k)
    far0, frr0 = rates(k - 1)
    d0, d1 = far0 - frr0, far1 - frr1
    with np.errstate(invalid="ignore", divide="ignore"):
        eer = far0 + (-d0 / (d1 - d0)) * (far1 - far0)

    candidates = trials.candidates

    def too_costly(c: np.ndarray) -> np.ndarray:
        point = candidates[np.minimum(c, len(candidates) - 1)]  # c = len only when decided
        return c_fa * (1.0 - p_target) * counts(point)[1] > c_miss * p_target * n_nontarget

    start, none = np.zeros_like(draws), np.full_like(draws, len(candidates))
    cut = max(1, int(_first_true(too_costly, start, none).max()))
    points = candidates[:cut]
    rows = slice(None)
    fp = first(fp_sum, trials.nontargets[points], rows)
    tp = first(tp_sum, trials.targets[points], rows)
    cost = (c_fa * (1.0 - p_target) / n_nontarget)[:, None] * fp
    cost -= (c_miss * p_target / n_target)[:, None] * tp
    best = np.argmin(cost, axis=1)
    k = np.where(cost[draws, best] < 0, points[best], -1)  # accept-nothing costs 0 here
    far, frr = rates(k)
    min_dcf = (c_miss * frr * p_target + c_fa * far * (1.0 - p_target)) / min(
        c_miss * p_target, c_fa * (1.0 - p_target)
    )
    eer[~defined] = math.nan
    min_dcf[~defined] = math.nan
    return eer, min_dcf


def speaker_weights(
    multiplicities: np.ndarray,
    trials: SortedTrials,
    enroll_speaker: np.ndarray,
    test_speaker: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The weights ``[draws, n]`` of the targets and of the non-targets of ``trials`` (in
    its order) under speaker multiplicities ``[draws, speakers]``: ``m[speaker]`` for a
    target trial, ``m[enrol] * m[test]`` for a non-target one (``enroll_speaker`` /
    ``test_speaker`` in trial-list order). Gathered from the small multiplicity table, so
    no ``[draws, trials]`` array is reordered."""
    target = multiplicities[:, enroll_speaker[trials.target_order]]
    nontarget = multiplicities[:, enroll_speaker[trials.nontarget_order]]
    nontarget *= multiplicities[:, test_speaker[trials.nontarget_order]]
    return target, nontarget


def speaker_errors(
    trials: SortedTrials,
    multiplicities: np.ndarray,
    enroll_speaker: np.ndarray,
    test_speaker: np.ndarray,
    p_target: float = 0.01,
    c_miss: float = 1.0,
    c_fa: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """EER and normalised minDCF ``[draws]`` of a run's trials under each row of speaker
    multiplicities ``[draws, speakers]`` (:func:`speaker_weights`; NaN for a draw that
    leaves no target or no non-target trial)."""
    target, nontarget = speaker_weights(multiplicities, trials, enroll_speaker, test_speaker)
    max_weight = int(multiplicities.max(initial=0)) ** 2
    return _errors(trials, target, nontarget, p_target, c_miss, c_fa, max_weight)


def draw_speakers(n_speakers: int, draws: int, rng: np.random.Generator) -> np.ndarray:
    """Multiplicities ``[draws, n_speakers]`` (int32) of ``n_speakers`` drawn with
    replacement."""
    counts = rng.multinomial(n_speakers, np.full(n_speakers, 1.0 / n_speakers), size=draws)
    return counts.astype(np.int32)


@dataclass(frozen=True)
class TrialList:
    """What a draw resamples: the trials' labels and speakers (shared by the runs tested
    on the same list), identified by :attr:`key`."""

    label: np.ndarray
    enroll_speaker: np.ndarray
    test_speaker: np.ndarray
    speakers: tuple[str, ...]
    key: str

    @classmethod
    def of(
        cls,
        trial: np.ndarray,
        label: np.ndarray,
        enroll_speaker: np.ndarray,
        test_speaker: np.ndarray,
        speakers: Sequence[str],
    ) -> TrialList:
        digest = hashlib.sha256()
        for part in (trial, label, enroll_speaker, test_speaker):
            digest.update(np.ascontiguousarray(part, dtype=np.int64).tobytes())
        digest.update("\n".join(speakers).encode())
        return cls(
            np.asarray(label),
            np.asarray(enroll_speaker),
            np.asarray(test_speaker),
            tuple(speakers),
            digest.hexdigest()[:16],
        )


@dataclass(frozen=True)
class RunScores:
    """One run's scores of one pass on a trial list, with its minDCF parameters."""

    trials: TrialList
    scores: np.ndarray
    p_target: float = 0.01
    c_miss: float = 1.0
    c_fa: float = 1.0


@dataclass(frozen=True)
class MetricDraws:
    """A run's EER and minDCF on the full trial list (``point``) and under each draw."""

    point: dict[str, float]
    draws: dict[str, np.ndarray]


def seeded_for(key: str, seed: int) -> np.random.Generator:
    """The draws of a trial list depend on the list and the seed only (not on the order
    in which runs are bootstrapped), so two rows on the same list get the same draws."""
    return np.random.default_rng([seed, int(key, 16)])


def bootstrap_runs(
    runs: Mapping[str, RunScores], draws: int = 2000, seed: int = 0
) -> dict[str, MetricDraws]:
    """``eer`` and ``min_dcf`` of every run on its full trial list (:func:`point_errors`)
    and under the same speaker draws per trial list.

    Runs are grouped by trial list; per list the draws come in blocks (``BLOCK_BYTES``),
    each block's trial weights shared by the runs on that list."""
    out: dict[str, MetricDraws] = {}
    groups: dict[str, list[str]] = {}
    for name, run in runs.items():
        groups.setdefault(run.trials.key, []).append(name)
    for key, names in groups.items():
        trials = runs[names[0]].trials
        multiplicities = draw_speakers(len(trials.speakers), draws, seeded_for(key, seed))
        ordered = {n: SortedTrials.of(runs[n].scores, trials.label) for n in names}
        results = {n: {"eer": np.empty(draws), "min_dcf": np.empty(draws)} for n in names}
        block = max(1, BLOCK_BYTES // (4 * max(1, len(trials.label))))
        for start in range(0, draws, block):
            stop = min(draws, start + block)
            for n in names:
                run = runs[n]
                eer, dcf = speaker_errors(
                    ordered[n],
                    multiplicities[start:stop],
                    trials.enroll_speaker,
                    trials.test_speaker,
                    run.p_target,
                    run.c_miss,
                    run.c_fa,
                )
                results[n]["eer"][start:stop] = eer
                results[n]["min_dcf"][start:stop] = dcf
        for n in names:
            out[n] = MetricDraws(point_errors(runs[n]), results[n])
    return out


def point_errors(run: RunScores) -> dict[str, float]:
    """EER and minDCF of the full trial list, by :mod:`crossdistill.metrics.verification`
    (the functions that computed the run's logged metrics)."""
    import torch  # here: reading a table does not load torch unless it bootstraps

    from crossdistill.metrics.verification import compute_eer, compute_min_dcf

    scores, labels = torch.from_numpy(run.scores), torch.from_numpy(run.trials.label)
    eer, _ = compute_eer(scores, labels)
    dcf, _ = compute_min_dcf(scores, labels, run.p_target, run.c_miss, run.c_fa)
    return {"eer": eer, "min_dcf": dcf}


@dataclass(frozen=True)
class BootstrapDifference(PairedDifference):
    """A paired difference whose interval is the percentile interval of a speaker (and
    seed) bootstrap; ``speakers``: test speakers per seed (the smallest list), ``draws``:
    the draws used (those where every run's metric was defined)."""

    speakers: int = 0
    draws: int = 0
    #: what ``speakers`` counts, as the cell names it (``spk``; ``samples`` for accuracies)
    unit: str = "spk"

    @property
    def resolved(self) -> bool:
        """The interval excludes zero (one seed suffices: the speakers are resampled)."""
        return self.n >= 1 and (self.low > 0 or self.high < 0)

    def format(self, scale: float = 1.0, digits: int = 1) -> str:
        """``+1.2 [-0.3, +2.7] (n=3, 300 spk), not resolved``."""
        if self.n == 0:
            return "—"
        verdict = "resolved" if self.resolved else "not resolved"
        return (
            f"{self.mean * scale:+.{digits}f} [{self.low * scale:+.{digits}f}, "
            f"{self.high * scale:+.{digits}f}] (n={self.n}, {self.speakers} {self.unit}), "
            f"{verdict}"
        )


def paired_bootstrap(
    method: Mapping[int, MetricDraws],
    baseline: Mapping[int, MetricDraws],
    metric: str,
    speakers: int,
    confidence: float = 0.95,
    seed: int = 0,
    unit: str = "spk",
) -> BootstrapDifference:
    """``method - baseline`` over the seeds both have: the mean of the per-seed point
    differences and the percentile interval, over the draws, of the mean over resampled
    seeds of the per-draw differences (the seeds' draws must be paired: same lists)."""
    seeds = sorted(set(method) & set(baseline))
    if not seeds:
        return BootstrapDifference(math.nan, math.nan, math.nan, 0, speakers, 0, unit)
    point = float(np.mean([method[s].point[metric] - baseline[s].point[metric] for s in seeds]))
    diffs = np.stack([method[s].draws[metric] - baseline[s].draws[metric] for s in seeds])
    n_seeds, n_draws = diffs.shape
    picks = np.random.default_rng(seed).integers(0, n_seeds, size=(n_draws, n_seeds))
    stat = diffs[picks, np.arange(n_draws)[:, None]].mean(axis=1)
    stat = stat[np.isfinite(stat)]
    if stat.size == 0:
        return BootstrapDifference(point, math.nan, math.nan, len(seeds), speakers, 0, unit)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(stat, [tail, 100 - tail])
    return BootstrapDifference(
        point, float(low), float(high), len(seeds), speakers, stat.size, unit
    )
