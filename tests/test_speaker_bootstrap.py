"""Speaker bootstrap of verification metrics: weighted EER/minDCF by hand, draws, paired
intervals; the per-trial scores file (round trip, the evaluator and a fast_dev_run)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from crossdistill.analysis.speaker_bootstrap import (
    MetricDraws,
    RunScores,
    SortedTrials,
    TrialList,
    bootstrap_runs,
    paired_bootstrap,
    speaker_errors,
    speaker_weights,
    weighted_errors,
)
from crossdistill.data.datamodules.verification import VerificationData
from crossdistill.data.readers.voxceleb.layout import Utterance
from crossdistill.data.readers.voxceleb.trials import Trial
from crossdistill.metrics.trial_scores import load_trial_scores, parse_metric, scores_path
from crossdistill.metrics.verification import compute_eer, compute_min_dcf
from crossdistill.modules.verification import VerificationEvaluator

# speakers A=0, B=1, C=2: three target trials and three non-target ones
#   score  label  speakers
#   0.9    T      A-A
#   0.7    N      A-B
#   0.6    T      B-B
#   0.4    N      B-C
#   0.3    T      C-C
#   0.2    N      A-C
SCORES = np.array([0.9, 0.7, 0.6, 0.4, 0.3, 0.2])
LABELS = np.array([1, 0, 1, 0, 1, 0])
ENROLL = np.array([0, 0, 1, 1, 2, 0])
TEST = np.array([0, 1, 1, 2, 2, 2])


def test_speaker_draws_weight_trials_by_their_speakers_counts():
    counts = np.array([[2, 1, 0], [0, 1, 2]])  # draw 1: A twice, B once; draw 2: B, C twice
    trials = SortedTrials.of(SCORES, LABELS)
    assert trials.target_order.tolist() == [0, 2, 4]  # A-A, B-B, C-C by score
    assert trials.nontarget_order.tolist() == [1, 3, 5]  # A-B, B-C, A-C
    target, nontarget = speaker_weights(counts, trials, ENROLL, TEST)
    # target trial: its speaker's count; non-target: the product of its two speakers' counts
    assert target.tolist() == [[2, 1, 0], [0, 1, 2]]
    assert nontarget.tolist() == [[2 * 1, 1 * 0, 2 * 0], [0 * 1, 1 * 2, 0 * 2]]


def test_weighted_eer_and_min_dcf_by_hand():
    trials = SortedTrials.of(SCORES, LABELS)
    # all counts 1: (FAR, FRR) from thr=+inf down: (0,1) (0,2/3) (1/3,2/3) (1/3,1/3) ...
    # FAR = FRR first at the 3rd trial: EER 1/3.
    # draw A,A,B: target weights A-A 2, B-B 1 (N_t = 3); non-target A-B 2 (N_n = 2):
    #   (0,1) -> 0.9: (0, 1/3) -> 0.7: (1, 1/3): FAR - FRR goes -1/3 -> +2/3, crossing at
    #   t = 1/3 of that step: EER = 0 + 1/3 * (1 - 0) = 1/3
    # draw B,C,C: targets B-B 1, C-C 2 (N_t = 3); non-target B-C 1*2 = 2 (N_n = 2):
    #   0.6: (0, 2/3) -> 0.4: (1, 2/3): FAR - FRR -2/3 -> +1/3, t = 2/3: EER = 2/3
    # draw A,A,A: no non-target trial is left: NaN
    counts = np.array([[1, 1, 1], [2, 1, 0], [0, 1, 2], [3, 0, 0]])
    eer, min_dcf = speaker_errors(trials, counts, ENROLL, TEST, p_target=0.5)
    assert eer[:3] == pytest.approx([1 / 3, 1 / 3, 2 / 3], abs=1e-12)
    assert np.isnan(eer[3]) and np.isnan(min_dcf[3])
    # p_target 0.5, costs 1: DCF = (0.5 FRR + 0.5 FAR) / 0.5 = FRR + FAR, minimum over points
    # all 1: 1, 2/3, 1, 2/3, 1, 2/3, 1 -> 2/3; draw A,A,B: 1, 1/3, 4/3, 1, ... -> 1/3;
    # draw B,C,C: 1, 1, 1, 2/3, 5/3, 1, 1 -> 2/3
    assert min_dcf[:3] == pytest.approx([2 / 3, 1 / 3, 2 / 3], abs=1e-12)
    # the same with explicit trial weights in list order (A-A, A-B, B-B, B-C, C-C, A-C)
    weights = np.array([[2, 2, 1, 0, 0, 0], [0, 0, 1, 2, 2, 0]])
    assert weighted_errors(trials, weights, p_target=0.5)[0] == pytest.approx([1 / 3, 2 / 3])


def test_weights_equal_repeated_trials_of_the_metrics_module():
    """A trial of weight w counts like the trial written w times (ties included)."""
    rng = np.random.default_rng(0)
    for _ in range(30):
        n = int(rng.integers(6, 40))
        labels = rng.integers(0, 2, n)
        labels[:2] = [0, 1]
        scores = np.round(rng.normal(size=n) + labels, 1)  # rounding makes ties
        weights = rng.integers(0, 4, (3, n))
        weights[:, :2] = 1
        eer, dcf = weighted_errors(SortedTrials.of(scores, labels), weights, p_target=0.05)
        for row in range(3):
            repeated = np.repeat(np.arange(n), weights[row])
            s, lab = torch.tensor(scores[repeated]), torch.tensor(labels[repeated])
            assert eer[row] == pytest.approx(compute_eer(s, lab)[0], abs=1e-12)
            assert dcf[row] == pytest.approx(compute_min_dcf(s, lab, 0.05)[0], abs=1e-12)


def test_weights_must_be_counts():
    with pytest.raises(ValueError, match="weights must be integers .* got float64"):
        weighted_errors(SortedTrials.of(SCORES, LABELS), np.ones((1, 6)))


def _synthetic_runs(n_speakers: int, gap: float, seeds=(0, 1, 2)):
    """Runs of two 'rows' on one trial list: targets score 1 + noise (row 'ours': + gap),
    non-targets noise, per seed its own noise."""
    rng = np.random.default_rng(n_speakers)
    enroll = np.repeat(np.arange(n_speakers), 20)
    other = (enroll + rng.integers(1, n_speakers, enroll.size)) % n_speakers
    labels = np.tile(np.r_[np.ones(10, int), np.zeros(10, int)], n_speakers)
    test = np.where(labels == 1, enroll, other)
    trials = TrialList.of(
        np.arange(enroll.size), labels, enroll, test, [f"id{k:04d}" for k in range(n_speakers)]
    )
    speaker_level = rng.normal(size=n_speakers)[enroll]  # some speakers are harder
    runs = {}
    for seed in seeds:
        noise = np.random.default_rng(100 + seed).normal(size=enroll.size)
        for row, extra in (("base", 0.0), ("ours", gap)):
            scores = labels * (1.0 + extra + 0.5 * speaker_level) + noise
            runs[f"{row}{seed}"] = RunScores(trials, scores)
    return runs


def _paired(runs, metric="eer", draws=400):
    out = bootstrap_runs(runs, draws=draws, seed=0)
    seeds = sorted(int(k[4:]) for k in out if k.startswith("ours"))
    return paired_bootstrap(
        {s: out[f"ours{s}"] for s in seeds}, {s: out[f"base{s}"] for s in seeds}, metric, speakers=0
    )


def test_interval_contains_the_point_and_shrinks_with_more_speakers():
    few, many = _paired(_synthetic_runs(12, 0.3)), _paired(_synthetic_runs(120, 0.3))
    for diff in (few, many):
        assert diff.n == 3 and diff.draws == 400
        assert diff.low <= diff.mean <= diff.high
        assert diff.mean < 0  # a larger target score lowers the EER
    assert many.high - many.low < 0.6 * (few.high - few.low)
    assert many.resolved and many.format(100, 1).endswith("(n=3, 0 spk), resolved")


def test_identical_rows_give_exactly_zero():
    runs = _synthetic_runs(12, 0.0)
    for metric in ("eer", "min_dcf"):
        diff = _paired(runs, metric)
        assert (diff.mean, diff.low, diff.high) == (0.0, 0.0, 0.0) and not diff.resolved


def test_every_run_on_a_list_gets_the_same_draws():
    """Row and baseline on the same trial list see the same speaker draws, whatever the
    order in which runs are bootstrapped; a seed's point is the metrics module's value."""
    runs = _synthetic_runs(10, 0.2, seeds=(0,))
    forward = bootstrap_runs(runs, draws=50, seed=3)
    backward = bootstrap_runs(dict(reversed(list(runs.items()))), draws=50, seed=3)
    assert np.array_equal(forward["ours0"].draws["eer"], backward["ours0"].draws["eer"])
    scores = torch.tensor(runs["ours0"].scores)
    labels = torch.tensor(runs["ours0"].trials.label)
    assert forward["ours0"].point["eer"] == compute_eer(scores, labels)[0]
    # one seed: the seed resampling is trivial, the interval covers the speakers
    one = paired_bootstrap({0: forward["ours0"]}, {0: forward["base0"]}, "eer", 10)
    assert one.n == 1 and one.low < one.high


def test_seeds_are_resampled_within_each_draw():
    """Per-draw differences constant over the draws (no speaker noise) but different per
    seed: the interval comes from resampling the seeds alone."""
    diffs = {0: -0.1, 1: 0.0, 2: 0.1}
    zero = MetricDraws({"eer": 0.0}, {"eer": np.zeros(4000)})
    method = {s: MetricDraws({"eer": d}, {"eer": np.full(4000, d)}) for s, d in diffs.items()}
    diff = paired_bootstrap(method, dict.fromkeys(diffs, zero), "eer", speakers=5)
    assert diff.mean == pytest.approx(0.0)
    # the mean of 3 seeds drawn from {-.1, 0, .1} is -0.1 with probability 1/27 = 3.7 %
    # (seed 0 three times; about 148 of 4000 draws), more than the 2.5 % tail, so the
    # interval is [-0.1, +0.1]; the next values, -0.0667 / +0.0667, have 3/27 each
    assert diff.low == pytest.approx(-0.1, abs=1e-9)
    assert diff.high == pytest.approx(0.1, abs=1e-9)
    narrower = paired_bootstrap(method, dict.fromkeys(diffs, zero), "eer", 5, confidence=0.8)
    # 80 %: the 10 % quantile; P(mean <= -0.0667) = 4/27 = 14.8 % > 10 % > 3.7 %
    assert narrower.low == pytest.approx(-0.2 / 3, abs=1e-9)


def test_metric_names_map_to_passes():
    assert parse_metric("test/eer") == ("test", "eer", "")
    assert parse_metric("test/min_dcf_snr10") == ("test", "min_dcf", "snr10")
    with pytest.raises(ValueError, match="'test/acc' is not a verification metric"):
        parse_metric("test/acc")


# ------------------------------------------------------------------- the scores file
class _Data(VerificationData):
    """Six utterances of three speakers and their trials (all splits alike)."""

    def __init__(self) -> None:
        self.items = [
            Utterance(f"id{s}/v0/{j}.wav", f"id{s}", "v0") for s in range(3) for j in range(2)
        ]
        paths = [u.path for u in self.items]
        pairs = [(0, 1), (0, 2), (0, 4), (2, 3), (2, 5), (4, 5), (1, 3), (3, 4)]
        self.trial_list = [Trial(int(a // 2 == b // 2), paths[a], paths[b]) for a, b in pairs]

    def trials(self, split):
        return self.trial_list

    def eval_utterances(self, split):
        return self.items

    def noisy_eval_input(self, batch, snr_db, seed, kind="white", split=None):
        return batch["student_input"] + snr_db  # a different 'utterance' per SNR


def test_evaluator_writes_scores_that_give_its_metrics(tmp_path: Path, monkeypatch):
    table = torch.tensor(
        [[1.0, 0.1], [0.9, 0.3], [0.2, 1.0], [0.4, 0.8], [-1.0, 0.2], [-0.7, -0.5]]
    )
    embed = SimpleNamespace(
        embed=lambda x: table[x[:, 0].long() % 6] + x[:, 1:2] * 0.01,
        teacher_embedding_for_matching=lambda batch: None,
    )
    data = _Data()
    evaluator = VerificationEvaluator(
        data, noise_snr_db=[10.0], matching_k=[], scores_dir=str(tmp_path / "scores")
    )
    index = torch.arange(6)
    batch = {
        "student_input": torch.stack([index.float(), torch.zeros(6)], 1),
        "index": index,
        "label": index // 2,
    }
    evaluator.step(embed, batch, "test")
    metrics = evaluator.compute("test")
    saved = load_trial_scores(scores_path(tmp_path, "test"))
    assert saved.trial.tolist() == list(range(8)) and saved.label.tolist() == [
        t.label for t in data.trial_list
    ]
    assert saved.speakers.tolist() == ["id0", "id1", "id2"]
    assert saved.enroll_speaker.tolist() == [0, 0, 0, 1, 1, 2, 0, 1]
    assert saved.test_speaker.tolist() == [0, 1, 2, 1, 2, 2, 1, 2]
    assert set(saved.scores) == {"", "snr10"}
    labels = torch.tensor(saved.label)
    for name, suffix in (("", ""), ("snr10", "_snr10")):
        scores = torch.tensor(saved.pass_scores(name))
        assert compute_eer(scores, labels)[0] == metrics[f"test/eer{suffix}"]
        assert compute_min_dcf(scores, labels)[0] == metrics[f"test/min_dcf{suffix}"]
    evaluator.step(embed, batch, "val")
    evaluator.compute("val")
    assert not scores_path(tmp_path, "val").exists()  # scores_splits: test only
    # under DDP only rank 0 writes (every rank computes the same scores)
    scores_path(tmp_path, "test").unlink()
    monkeypatch.setattr(pl.utilities.rank_zero_only, "rank", 1)
    evaluator.step(embed, batch, "test")
    assert evaluator.compute("test") == metrics
    assert not scores_path(tmp_path, "test").exists()
    with pytest.raises(KeyError, match="no scores of pass 'snr0'"):
        saved.pass_scores("snr0")


def test_fast_dev_run_writes_the_scores_file(tiny_face_voice):
    from crossdistill.train import train

    summary = train(tiny_face_voice("face_voice/no_kd", "debug=fast_dev_run"))
    run_dir = Path(summary["run_dir"])
    saved = load_trial_scores(scores_path(run_dir, "test"))
    logged = json.loads((run_dir / "metrics.json").read_text())["student"]
    assert set(saved.scores) == {"", "snr20", "snr10", "snr0"}
    labels = torch.tensor(saved.label)
    for name, suffix in (("", ""), ("snr10", "_snr10")):
        eer = compute_eer(torch.tensor(saved.pass_scores(name)), labels)[0]
        assert np.float32(eer) == np.float32(logged[f"test/eer{suffix}"])  # logged as float32
