"""Speaker-verification metrics: equal error rate (EER) and minimum detection cost (minDCF).

Conventions (shared by the functions and the torchmetrics classes):

* A trial has a real ``score`` (higher = more likely the same speaker) and a ``label``:
  1 = target (same identity), 0 = non-target. Labels may be int, float or bool tensors.
* A threshold ``thr`` **accepts** a trial when ``score >= thr``. For threshold ``thr``:
  ``FAR(thr) = #{non-target >= thr} / #non-target`` (false-acceptance / false-alarm rate) and
  ``FRR(thr) = #{target < thr} / #target`` (false-rejection / miss rate).
* The operating points are those of ``sklearn.metrics.roc_curve`` with
  ``drop_intermediate=False``: one point per *distinct* score (thresholds run down the
  sorted distinct scores) plus the "accept nothing" point ``thr = +inf`` (FAR 0, FRR 1).
  The last point (``thr`` = the lowest score) accepts everything (FAR 1, FRR 0).
* **Ties**: trials with the same score are always accepted or rejected together, so a
  tie between target and non-target scores is one step of the curve that moves FAR and
  FRR at once; linear interpolation along that step is the expected error of breaking
  the tie at random. All scores equal therefore gives EER = 0.5.
* **EER**: the curve ``(FAR, FRR)`` is walked from ``thr = +inf`` down; ``FAR - FRR``
  goes from -1 to +1. At the first point ``i`` where ``FAR_i >= FRR_i`` the crossing with
  ``FAR = FRR`` is linearly interpolated on the segment ``(i-1, i)``; the EER is the common
  value there. This equals the usual ``brentq(lambda x: 1 - x - interp1d(fpr, tpr)(x))``
  recipe, and lies between the two discrete (FAR, FRR) values around the crossing. The
  returned threshold is that of point ``i``: the largest threshold with ``FAR >= FRR``.
* **minDCF** (NIST SRE, SpeechBrain, WeSpeaker): ``DCF(thr) = c_miss * FRR(thr) * p_target
  + c_fa * FAR(thr) * (1 - p_target)``, normalised by the cost of the best trivial system
  ``min(c_miss * p_target, c_fa * (1 - p_target))`` (``normalize=True``, the default, as
  WeSpeaker and the NIST scoring tools report it). ``speechbrain.utils.metric_stats.minDCF``
  returns the *un*-normalised value (``normalize=False``). The minimum is taken over all
  operating points above (including accept-nothing, ``thr = +inf``, and accept-all); the
  returned threshold is the largest one attaining the minimum.
* Scores must be finite and both classes must be present; otherwise ``ValueError``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

__all__ = [
    "EqualErrorRate",
    "MinDCF",
    "TrialErrors",
    "compute_eer",
    "compute_min_dcf",
    "cosine_scores",
    "det_curve",
    "indexed_cosine_scores",
    "score_trials",
]


def _check_trials(scores: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    scores = torch.as_tensor(scores).detach()
    labels = torch.as_tensor(labels).detach()
    if scores.dim() != 1:
        scores = scores.reshape(-1)
    if labels.dim() != 1:
        labels = labels.reshape(-1)
    if scores.numel() != labels.numel():
        raise ValueError(
            f"scores and labels must have the same number of trials, got {scores.numel()} "
            f"scores and {labels.numel()} labels"
        )
    if not torch.is_floating_point(scores):
        scores = scores.double()
    if not torch.isfinite(scores).all():
        bad = scores[~torch.isfinite(scores)][:5].tolist()
        raise ValueError(f"scores must be finite, found {bad}")
    labels_f = labels.double()
    if not ((labels_f == 0) | (labels_f == 1)).all():
        bad = torch.unique(labels_f[(labels_f != 0) & (labels_f != 1)])[:5].tolist()
        raise ValueError(f"labels must be 1 (target) or 0 (non-target), found {bad}")
    n_target = int(labels_f.sum().item())
    n_nontarget = labels_f.numel() - n_target
    if n_target == 0 or n_nontarget == 0:
        raise ValueError(
            "EER/minDCF need both target (label 1) and non-target (label 0) trials, got "
            f"{n_target} target and {n_nontarget} non-target trials"
        )
    return scores.double(), labels_f


def det_curve(scores: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Operating points ``(far, frr, thresholds)`` (float64, decreasing thresholds).

    ``thresholds[0] = +inf`` (accept nothing); point ``k > 0`` accepts ``score >=
    thresholds[k]``, one point per distinct score (see the module docstring).
    """
    scores, labels = _check_trials(scores, labels)
    order = torch.argsort(scores, descending=True, stable=True)
    s = scores[order]
    lab = labels[order]
    cum_tp = torch.cumsum(lab, 0)
    cum_fp = torch.cumsum(1.0 - lab, 0)
    # last index of every run of equal scores (ties move together)
    last = torch.ones_like(s, dtype=torch.bool)
    last[:-1] = s[1:] != s[:-1]
    zero = s.new_zeros(1)
    tp = torch.cat([zero, cum_tp[last]])
    fp = torch.cat([zero, cum_fp[last]])
    thresholds = torch.cat([s.new_full((1,), float("inf")), s[last]])
    n_target = cum_tp[-1]
    n_nontarget = cum_fp[-1]
    far = fp / n_nontarget
    frr = 1.0 - tp / n_target
    return far, frr, thresholds


def compute_eer(scores: Tensor, labels: Tensor) -> tuple[float, float]:
    """Equal error rate and its threshold (interpolated crossing of FAR and FRR).

    Returns ``(eer, threshold)`` with ``eer`` in [0, 1]; see the module docstring.
    """
    far, frr, thresholds = det_curve(scores, labels)
    diff = far - frr  # -1 at thr=+inf, +1 at accept-all: a crossing always exists
    i = int(torch.nonzero(diff >= 0)[0].item())  # i >= 1 since diff[0] = -1
    d0, d1 = diff[i - 1].item(), diff[i].item()
    t = -d0 / (d1 - d0)  # d1 - d0 > 0
    eer = far[i - 1].item() + t * (far[i].item() - far[i - 1].item())
    return float(eer), float(thresholds[i].item())


def compute_min_dcf(
    scores: Tensor,
    labels: Tensor,
    p_target: float = 0.01,
    c_miss: float = 1.0,
    c_fa: float = 1.0,
    normalize: bool = True,
) -> tuple[float, float]:
    """Minimum detection cost and its threshold (``+inf`` if rejecting all is optimal).

    ``normalize=True`` divides by ``min(c_miss * p_target, c_fa * (1 - p_target))``.
    """
    if not 0.0 < p_target < 1.0:
        raise ValueError(f"minDCF p_target must be in (0, 1), got {p_target}")
    if c_miss <= 0 or c_fa <= 0:
        raise ValueError(f"minDCF costs must be > 0, got c_miss={c_miss}, c_fa={c_fa}")
    far, frr, thresholds = det_curve(scores, labels)
    dcf = c_miss * frr * p_target + c_fa * far * (1.0 - p_target)
    if normalize:
        dcf = dcf / min(c_miss * p_target, c_fa * (1.0 - p_target))
    best = dcf.min()
    # first index = largest threshold attaining the minimum
    i = int(torch.nonzero(dcf <= best)[0].item())
    return float(best.item()), float(thresholds[i].item())


def cosine_scores(
    emb_by_utt: Mapping[str, Tensor], trials: Iterable[Sequence[Any]]
) -> Tensor:
    """Cosine similarity for each trial, float32 ``[num_trials]`` on the embeddings' device.

    ``trials`` holds ``(enrol_id, test_id)`` pairs or VoxCeleb-style ``(label, enrol_id,
    test_id)`` triples (the label is ignored here; keep it for :func:`compute_eer`).
    An utterance id missing from ``emb_by_utt`` raises ``KeyError`` naming it.
    """
    pairs: list[tuple[str, str]] = []
    for k, trial in enumerate(trials):
        if len(trial) == 2:
            a, b = trial
        elif len(trial) == 3:
            _, a, b = trial
        else:
            raise ValueError(
                f"trial {k} is {trial!r}; expected (enrol, test) or (label, enrol, test)"
            )
        for utt in (a, b):
            if utt not in emb_by_utt:
                raise KeyError(f"trial {k}: utterance {utt!r} has no embedding")
        pairs.append((a, b))
    if not pairs:
        return torch.empty(0)
    ids = sorted({u for p in pairs for u in p})
    pos = {u: j for j, u in enumerate(ids)}
    emb = torch.stack([torch.as_tensor(emb_by_utt[u]).reshape(-1).float() for u in ids])
    emb = F.normalize(emb, dim=-1)
    left = torch.tensor([pos[a] for a, _ in pairs], device=emb.device)
    right = torch.tensor([pos[b] for _, b in pairs], device=emb.device)
    return (emb[left] * emb[right]).sum(-1)


def indexed_cosine_scores(
    enroll_emb: Tensor, test_emb: Tensor, enroll: Tensor, test: Tensor
) -> Tensor:
    """Cosine score (float64) of every trial ``(enroll[k], test[k])``: rows of the
    ``enroll_emb`` / ``test_emb`` tables ``[N, D]``."""
    e = F.normalize(enroll_emb[enroll].double(), dim=-1)
    t = F.normalize(test_emb[test].double(), dim=-1)
    return (e * t).sum(-1)


@dataclass(frozen=True)
class TrialErrors:
    """EER and normalised minDCF of a trial list (NaN when not scorable)."""

    eer: float
    min_dcf: float
    num_scored: int  # trials whose two samples were embedded
    num_trials: int


def score_trials(
    enroll_emb: Tensor,
    test_emb: Tensor,
    enroll: Tensor,
    test: Tensor,
    labels: Tensor,
    seen: Tensor | None = None,
    *,
    p_target: float = 0.01,
    c_miss: float = 1.0,
    c_fa: float = 1.0,
) -> TrialErrors:
    """EER and minDCF of the cosine scores of trials ``(enroll[k], test[k], labels[k])``
    (positions in the embedding tables). With ``seen`` (bool ``[N]``: which rows were
    embedded) only trials with both samples seen are scored; without both target and
    non-target trials among them the errors are NaN."""
    ok = seen[enroll] & seen[test] if seen is not None else torch.ones_like(labels, dtype=bool)
    num_scored, num_trials = int(ok.sum()), ok.numel()
    if not ok.any() or labels[ok].min() == labels[ok].max():
        return TrialErrors(math.nan, math.nan, num_scored, num_trials)
    scores = indexed_cosine_scores(enroll_emb, test_emb, enroll[ok], test[ok])
    eer, _ = compute_eer(scores, labels[ok])
    dcf, _ = compute_min_dcf(scores, labels[ok], p_target, c_miss, c_fa)
    return TrialErrors(eer, dcf, num_scored, num_trials)


class _TrialMetric(Metric):
    """Accumulates ``(scores, labels)``; list states concatenated across DDP ranks."""

    is_differentiable = False
    full_state_update = False
    higher_is_better = False

    def __init__(self, return_threshold: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.return_threshold = return_threshold
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")

    def update(self, scores: Tensor, labels: Tensor) -> None:
        scores = torch.as_tensor(scores, device=self.device).detach().reshape(-1)
        labels = torch.as_tensor(labels, device=self.device).detach().reshape(-1)
        if scores.numel() != labels.numel():
            raise ValueError(
                f"{type(self).__name__}.update: {scores.numel()} scores but "
                f"{labels.numel()} labels"
            )
        self.scores.append(scores.double())
        self.labels.append(labels.double())

    def _gathered(self) -> tuple[Tensor, Tensor]:
        if isinstance(self.scores, list) and len(self.scores) == 0:
            raise ValueError(f"{type(self).__name__}.compute called before any update")
        return dim_zero_cat(self.scores).cpu(), dim_zero_cat(self.labels).cpu()

    def _result(self, value: float, threshold: float) -> Tensor | tuple[Tensor, Tensor]:
        out = torch.tensor(value, dtype=torch.float32, device=self.device)
        if self.return_threshold:
            return out, torch.tensor(threshold, dtype=torch.float32, device=self.device)
        return out


class EqualErrorRate(_TrialMetric):
    """EER over all trials seen (see :func:`compute_eer`); a fraction in [0, 1].

    ``compute()`` returns a scalar tensor, or ``(eer, threshold)`` with
    ``return_threshold=True``.
    """

    def compute(self) -> Tensor | tuple[Tensor, Tensor]:
        return self._result(*compute_eer(*self._gathered()))


class MinDCF(_TrialMetric):
    """Minimum (normalised) detection cost over all trials seen (see :func:`compute_min_dcf`)."""

    def __init__(
        self,
        p_target: float = 0.01,
        c_miss: float = 1.0,
        c_fa: float = 1.0,
        normalize: bool = True,
        return_threshold: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(return_threshold=return_threshold, **kwargs)
        if not 0.0 < p_target < 1.0:
            raise ValueError(f"MinDCF p_target must be in (0, 1), got {p_target}")
        self.p_target = p_target
        self.c_miss = c_miss
        self.c_fa = c_fa
        self.normalize = normalize

    def compute(self) -> Tensor | tuple[Tensor, Tensor]:
        scores, labels = self._gathered()
        return self._result(
            *compute_min_dcf(
                scores, labels, self.p_target, self.c_miss, self.c_fa, self.normalize
            )
        )
