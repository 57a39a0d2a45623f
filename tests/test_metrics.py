"""Verification (EER, minDCF) and cross-modal matching metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.interpolate import interp1d
from scipy.optimize import brentq
from sklearn.metrics import roc_curve

from crossdistill.metrics.identification import closed_set_identification
from crossdistill.metrics.matching import CrossModalMatchingAccuracy, matching_accuracy
from crossdistill.metrics.verification import (
    EqualErrorRate,
    MinDCF,
    compute_eer,
    compute_min_dcf,
    cosine_scores,
    indexed_cosine_scores,
    score_trials,
)


def _trials(seed: int, n: int, p_target: float = 0.3, ties: bool = False):
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < p_target).astype(np.int64)
    labels[0], labels[1] = 1, 0  # both classes present
    scores = rng.normal(size=n) + 1.5 * labels
    if ties:
        scores = np.round(scores * 2) / 2  # coarse grid: many ties across classes
    return scores, labels


def _sklearn_eer(scores, labels) -> float:
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    return brentq(lambda x: 1.0 - x - interp1d(fpr, tpr)(x), 0.0, 1.0, xtol=1e-14)


def _sklearn_min_dcf(scores, labels, p_target=0.01, c_miss=1.0, c_fa=1.0) -> float:
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    dcf = c_miss * (1 - tpr) * p_target + c_fa * fpr * (1 - p_target)
    dcf = np.append(dcf, c_miss * p_target)  # reject all
    return dcf.min() / min(c_miss * p_target, c_fa * (1 - p_target))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n", [7, 50, 400])
@pytest.mark.parametrize("ties", [False, True])
def test_eer_matches_sklearn_roc(seed, n, ties):
    scores, labels = _trials(seed, n, ties=ties)
    eer, thr = compute_eer(torch.tensor(scores), torch.tensor(labels))
    assert eer == pytest.approx(_sklearn_eer(scores, labels), abs=1e-9)
    # threshold: the largest threshold where FAR >= FRR
    far = (scores[labels == 0] >= thr).mean()
    frr = (scores[labels == 1] < thr).mean()
    assert far >= frr
    # EER lies between the discrete error rates around the crossing
    higher = scores[scores > thr]
    if higher.size:
        t_up = higher.min()
        far_up = (scores[labels == 0] >= t_up).mean()
        frr_up = (scores[labels == 1] < t_up).mean()
        assert min(far_up, frr) - 1e-12 <= eer <= max(far, frr_up) + 1e-12


@pytest.mark.parametrize("seed", [0, 3])
@pytest.mark.parametrize("ties", [False, True])
def test_min_dcf_matches_sklearn_and_speechbrain(seed, ties):
    from speechbrain.utils import metric_stats

    sb_min_dcf = metric_stats.minDCF

    scores, labels = _trials(seed, 300, ties=ties)
    for p_target, c_miss, c_fa in [(0.01, 1.0, 1.0), (0.05, 2.0, 1.0), (0.3, 1.0, 1.0)]:
        val, thr = compute_min_dcf(
            torch.tensor(scores), torch.tensor(labels), p_target, c_miss, c_fa
        )
        assert val == pytest.approx(_sklearn_min_dcf(scores, labels, p_target, c_miss, c_fa))
        # SpeechBrain: un-normalised, accepts score > thr; same operating points here
        sb_val, _ = sb_min_dcf(
            torch.tensor(scores[labels == 1]),
            torch.tensor(scores[labels == 0]),
            c_miss=c_miss,
            c_fa=c_fa,
            p_target=p_target,
        )
        raw, _ = compute_min_dcf(
            torch.tensor(scores), torch.tensor(labels), p_target, c_miss, c_fa, normalize=False
        )
        assert raw == pytest.approx(sb_val, rel=1e-5, abs=1e-7)
        c_def = min(c_miss * p_target, c_fa * (1 - p_target))
        assert val == pytest.approx(raw / c_def)
        # the returned threshold realises the minimum
        if np.isfinite(thr):
            p_miss = (scores[labels == 1] < thr).mean()
            p_fa = (scores[labels == 0] >= thr).mean()
            assert (c_miss * p_miss * p_target + c_fa * p_fa * (1 - p_target)) / c_def == (
                pytest.approx(val)
            )


def test_eer_close_to_speechbrain():
    from speechbrain.utils import metric_stats

    sb_eer = metric_stats.EER

    scores, labels = _trials(5, 200)
    eer, _ = compute_eer(torch.tensor(scores), torch.tensor(labels))
    sb, _ = sb_eer(torch.tensor(scores[labels == 1]), torch.tensor(scores[labels == 0]))
    # SpeechBrain takes (FAR + FRR) / 2 at the nearest discrete point (no interpolation)
    n_min = min((labels == 1).sum(), (labels == 0).sum())
    assert abs(eer - sb) <= 1.0 / n_min


def test_edge_cases():
    # all scores equal: one tie step from (0, 1) to (1, 0) -> 0.5
    eer, thr = compute_eer(torch.zeros(10), torch.tensor([1, 0] * 5))
    assert eer == pytest.approx(0.5) and thr == 0.0
    assert compute_min_dcf(torch.zeros(10), torch.tensor([1, 0] * 5))[0] == pytest.approx(1.0)
    # perfectly separated
    s = torch.tensor([0.9, 0.8, 0.7, 0.1, 0.2])
    y = torch.tensor([1, 1, 1, 0, 0])
    eer, thr = compute_eer(s, y)
    assert eer == 0.0 and 0.2 < thr <= 0.7
    assert compute_min_dcf(s, y)[0] == 0.0
    # perfectly wrong
    assert compute_eer(-s, y)[0] == pytest.approx(1.0)
    # 2 trials
    assert compute_eer(torch.tensor([1.0, 0.0]), torch.tensor([1, 0]))[0] == 0.0
    assert compute_eer(torch.tensor([0.0, 1.0]), torch.tensor([1, 0]))[0] == pytest.approx(1.0)
    assert compute_eer(torch.tensor([0.5, 0.5]), torch.tensor([True, False]))[0] == 0.5
    # bad input
    with pytest.raises(ValueError, match="both target"):
        compute_eer(torch.rand(5), torch.ones(5))
    with pytest.raises(ValueError, match="both target"):
        compute_min_dcf(torch.rand(5), torch.zeros(5))
    with pytest.raises(ValueError, match="same number"):
        compute_eer(torch.rand(5), torch.ones(4))
    with pytest.raises(ValueError, match="1 \\(target\\) or 0"):
        compute_eer(torch.rand(3), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="finite"):
        compute_eer(torch.tensor([0.0, float("nan")]), torch.tensor([0, 1]))


def test_torchmetrics_accumulate_over_batches():
    scores, labels = _trials(7, 120)
    s, y = torch.tensor(scores, dtype=torch.float32), torch.tensor(labels)
    eer_m, dcf_m = EqualErrorRate(), MinDCF(p_target=0.05)
    for chunk in range(0, 120, 50):
        eer_m.update(s[chunk : chunk + 50], y[chunk : chunk + 50])
        dcf_m.update(s[chunk : chunk + 50], y[chunk : chunk + 50])
    assert eer_m.compute().item() == pytest.approx(compute_eer(s, y)[0], abs=1e-6)
    assert dcf_m.compute().item() == pytest.approx(compute_min_dcf(s, y, 0.05)[0], abs=1e-6)
    assert eer_m._reductions["scores"] is not None  # list state reduced by "cat"
    eer_m.reset()
    with pytest.raises(ValueError, match="before any update"):
        eer_m.compute()
    val, thr = EqualErrorRate(return_threshold=True)(s, y)
    assert val.item() == pytest.approx(compute_eer(s, y)[0], abs=1e-6)


def test_cosine_scores():
    embs = {
        "a": torch.tensor([1.0, 0.0]),
        "b": torch.tensor([0.0, 2.0]),
        "c": torch.tensor([3.0, 3.0]),
    }
    out = cosine_scores(embs, [("a", "b"), (1, "a", "c"), ("c", "c")])
    np.testing.assert_allclose(out.numpy(), [0.0, 1 / np.sqrt(2), 1.0], atol=1e-6)
    with pytest.raises(KeyError, match="'zz'"):
        cosine_scores(embs, [("a", "zz")])


def _clustered(n_ids: int, per_id: int, dim: int, noise: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    protos = torch.linalg.qr(torch.randn(dim, dim, generator=g))[0][:n_ids]
    labels = torch.arange(n_ids).repeat_interleave(per_id)
    voice = protos[labels] + noise * torch.randn(len(labels), dim, generator=g)
    face = protos[labels] + noise * torch.randn(len(labels), dim, generator=g)
    return voice, face, labels


@pytest.mark.parametrize("k", [2, 5])
def test_matching_perfect_and_random(k):
    voice, face, labels = _clustered(10, 20, 16, 0.05, seed=0)
    assert matching_accuracy(voice, labels, face, labels, k=k) == 1.0
    g = torch.Generator().manual_seed(1)
    rv, rf = torch.randn(2000, 16, generator=g), torch.randn(2000, 16, generator=g)
    rl = torch.randint(0, 50, (2000,), generator=g)
    acc = matching_accuracy(rv, rl, rf, rl, k=k, num_repeats=2)
    assert abs(acc - 1.0 / k) < 0.04
    # degenerate (all equal) embeddings: ties count 1/k
    z = torch.ones(40, 4)
    lab = torch.arange(40) % 8
    assert matching_accuracy(z, lab, z, lab, k=k) == pytest.approx(1.0 / k)


def test_matching_seeded_metric_and_errors():
    voice, face, labels = _clustered(6, 5, 8, 0.8, seed=3)
    a = matching_accuracy(voice, labels, face, labels, seed=11)
    assert a == matching_accuracy(voice, labels, face, labels, seed=11)
    m = CrossModalMatchingAccuracy(k=2, seed=11)
    m.update(voice[:10], face[:10], labels[:10])
    m.update(voice[10:], face[10:], labels[10:])
    assert m.compute().item() == pytest.approx(a)
    with pytest.raises(ValueError, match="at least 3 gallery identities"):
        matching_accuracy(voice, labels, face[:10], labels[:10], k=3)
    with pytest.raises(ValueError, match="no gallery item"):
        matching_accuracy(voice, labels, face[:20], labels[:20])
    kept = matching_accuracy(voice, labels, face[:20], labels[:20], skip_missing=True)
    assert 0.0 <= kept <= 1.0


# --------------------------------------------------------------------------- trial scoring
def _unit(cos: float) -> list[float]:
    return [cos, float(np.sqrt(1.0 - cos**2))]


def test_score_trials_by_hand():
    # enrolment row 0; test rows at cosines 0.9, 0.1 (targets) and 0.5, -0.5 (non-targets)
    emb = torch.tensor([[1.0, 0.0], *(_unit(c) for c in (0.9, 0.1, 0.5, -0.5))])
    enroll, test = torch.zeros(4, dtype=torch.long), torch.arange(1, 5)
    labels = torch.tensor([1, 1, 0, 0])
    torch.testing.assert_close(
        indexed_cosine_scores(emb, emb, enroll, test),
        torch.tensor([0.9, 0.1, 0.5, -0.5], dtype=torch.float64))
    # descending: T .9, N .5, T .1, N -.5 -> FAR = FRR = 0.5 at threshold 0.5;
    # p_target 0.5: DCF/0.5 = FRR + FAR, smallest 0.5 (threshold 0.9 or 0.1)
    got = score_trials(emb, emb, enroll, test, labels, p_target=0.5)
    assert (got.eer, got.min_dcf, got.num_scored, got.num_trials) == (0.5, 0.5, 4, 4)
    # without the 0.5 non-target (row 3 not embedded) the targets are all above: EER 0
    seen = torch.tensor([True, True, True, False, True])
    got = score_trials(emb, emb, enroll, test, labels, seen, p_target=0.5)
    assert (got.eer, got.num_scored) == (0.0, 3)
    # only targets left: not scorable
    seen[4] = False
    assert np.isnan(score_trials(emb, emb, enroll, test, labels, seen).eer)


def test_closed_set_identification_by_hand():
    # A: enrol video v0 = [1, 0], query v1 = [0.9, 0.1] -> A (right)
    # B: enrol video v0 = [0, 1], query v1 = [0.8, 0.2] -> A (wrong)
    emb = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.8, 0.2]])
    ids, videos = ["A", "A", "B", "B"], ["v0", "v1", "v0", "v1"]
    seen = torch.ones(4, dtype=torch.bool)
    assert closed_set_identification(emb, seen, ids, videos) == 0.5
    seen[3] = False
    assert closed_set_identification(emb, seen, ids, videos) == 1.0
    seen[2] = False  # B not enrolled: one identity left, nothing to identify among
    assert closed_set_identification(emb, seen, ids, videos) is None
