"""Relational knowledge distillation (Park, Kim, Lu, Cho; CVPR 2019).

Both terms compare *relations inside the batch* rather than individual embeddings, so the
student and teacher embeddings may have different sizes (``teacher_field`` may be the raw
teacher embedding). They return one scalar per batch (``per_sample = False``); quality
weights therefore do not apply to them.

Defaults follow the authors' code (github.com/lenscloth/RKD): the teacher is detached,
distances are Euclidean and divided by their mean over the off-diagonal pairs, the
angle term uses all ``B^3`` triples (degenerate ones contribute cosine 0 on both sides),
and the penalty is ``smooth_l1`` with ``beta = 1`` (= Huber with ``delta = 1``) averaged
over the whole ``B x B`` (resp. ``B^3``) tensor, diagonal included.

Numerics differ from the authors' code on degenerate batches only. Both relations are
scale-invariant, so gradients grow like ``1 / scale`` on a collapsed batch: the
normalisers here have a floor of ``1e-3`` (``functional.NORM_EPS``) instead of 1e-12
(gradients up to 1e10 on tiny embeddings or two identical rows), edges between identical
rows are masked in the angle term, and distances are computed from differences (exact 0
between identical rows).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from crossdistill.losses import functional
from crossdistill.losses.base import LossInputs, LossTerm, register_loss

TEACHER_FIELDS = ("teacher_embedding", "teacher_raw_embedding")
RKD_PENALTIES = ("smooth_l1", "huber", "mse")


def _penalty(student: Tensor, teacher: Tensor, kind: str, beta: float) -> Tensor:
    if kind == "smooth_l1":
        return F.smooth_l1_loss(student, teacher, beta=beta)
    if kind == "huber":
        return F.huber_loss(student, teacher, delta=beta)
    return F.mse_loss(student, teacher)


def pairwise_distances(x: Tensor) -> Tensor:
    """Euclidean distance matrix ``[B, B]``, exactly 0 between identical rows.

    From the differences, not from ``|a|^2 + |b|^2 - 2 a.b`` (RKD's code): that cancels to
    noise of ``~3e-4 |x|`` for identical rows (a distance that is not there); here the
    gradient is the unit vector ``(x_i - x_j) / d_ij``, and 0 where ``d_ij = 0``.
    """
    return torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")


class _RelationalTerm(LossTerm):
    requires = ("student_embedding", "teacher_embedding")
    per_sample = False

    def __init__(
        self,
        teacher_field: str = "teacher_embedding",
        detach_teacher: bool = True,
        loss: str = "smooth_l1",
        beta: float = 1.0,
    ) -> None:
        super().__init__()
        if teacher_field not in TEACHER_FIELDS:
            raise ValueError(
                f"{self.name}.teacher_field must be one of {TEACHER_FIELDS}, got {teacher_field!r}"
            )
        if loss not in RKD_PENALTIES:
            raise ValueError(f"{self.name}.loss must be one of {RKD_PENALTIES}, got {loss!r}")
        if beta <= 0:
            raise ValueError(f"{self.name}.beta must be > 0, got {beta}")
        self.teacher_field = teacher_field
        # instance attribute: the composer asks exactly for the configured teacher field
        self.requires = ("student_embedding", teacher_field)
        self.detach_teacher = detach_teacher
        self.loss = loss
        self.beta = beta

    def _pair(self, inputs: LossInputs) -> tuple[Tensor, Tensor]:
        s = inputs.student_embedding
        t = getattr(inputs, self.teacher_field)
        if self.detach_teacher:
            t = t.detach()
        if s.shape[0] != t.shape[0]:
            raise ValueError(
                f"{self.name}: student batch {s.shape[0]} != teacher batch {t.shape[0]}"
            )
        return s.flatten(1), t.flatten(1)


@register_loss("rkd_distance")
class RKDDistanceTerm(_RelationalTerm):
    """Distance-wise RKD: ``penalty(d_s / mean d_s, d_t / mean d_t)`` over all pairs.

    Args:
        teacher_field: ``'teacher_embedding'`` (projected ``P(t)``) or
            ``'teacher_raw_embedding'`` (the frozen teacher's own embedding).
        detach_teacher: stop gradients into the teacher side (True in RKD).
        loss: ``'smooth_l1'`` (RKD), ``'huber'`` (same for ``beta = 1``) or ``'mse'``.
        beta: smooth-L1 ``beta`` / Huber ``delta``.
        normalize: divide each distance matrix by its mean off-diagonal distance.
        eps: floor of that normaliser: a batch collapsed to within ``eps`` has small
            normalised distances and gradients of at most ``~1 / eps``, instead of
            ``1 / mean distance`` (1e6 for embeddings of scale 1e-6).

    Degenerate inputs: a batch of 1 or all-equal rows give distances 0 (loss 0 if the
    teacher's are 0 too); zero, tiny or duplicated rows give gradients of at most ``~1 / eps``.
    """

    def __init__(
        self,
        teacher_field: str = "teacher_embedding",
        detach_teacher: bool = True,
        loss: str = "smooth_l1",
        beta: float = 1.0,
        normalize: bool = True,
        eps: float = functional.NORM_EPS,
    ) -> None:
        super().__init__(teacher_field, detach_teacher, loss, beta)
        self.normalize = normalize
        self.eps = eps

    def _distances(self, x: Tensor) -> Tensor:
        d = pairwise_distances(x)
        if self.normalize:
            b = x.shape[0]
            n_pairs = max(b * (b - 1), 1)
            d = d / (d.sum() / n_pairs).clamp_min(self.eps)
        return d

    def forward(self, inputs: LossInputs) -> Tensor:
        s, t = self._pair(inputs)
        return _penalty(self._distances(s), self._distances(t), self.loss, self.beta)


@register_loss("rkd_angle")
class RKDAngleTerm(_RelationalTerm):
    """Angle-wise RKD: ``penalty(cos angle_s(i,j,k), cos angle_t(i,j,k))`` over all triples.

    ``cos angle(i, j, k) = <e_i - e_j, e_k - e_j>`` of unit vectors (``j`` is the vertex).
    Arguments as for ``rkd_distance``, and:

    Args:
        eps: floor of the edge lengths ``|e_i - e_j|`` that are normalised; a shorter edge
            gives a shorter "unit" vector, so its cosines shrink to 0 continuously.

    Degenerate inputs: an edge between identical rows has no direction and is masked (its
    cosines are 0 with gradient 0); batch of 1, zero or tiny embeddings: gradients at most
    ``~1 / eps``.
    """

    def __init__(
        self,
        teacher_field: str = "teacher_embedding",
        detach_teacher: bool = True,
        loss: str = "smooth_l1",
        beta: float = 1.0,
        eps: float = functional.NORM_EPS,
    ) -> None:
        super().__init__(teacher_field, detach_teacher, loss, beta)
        self.eps = eps

    def _angles(self, x: Tensor) -> Tensor:
        diff = x.unsqueeze(0) - x.unsqueeze(1)  # [j, i] = e_i - e_j
        length = functional.safe_norm(diff, dim=2, keepdim=True)
        # F.normalize (floor 1e-12) gave gradients of 1e10 on two identical rows: mask the
        # undefined directions (exactly zero edges), floor the length of the others
        unit = torch.where(length > 0, diff / length.clamp_min(self.eps), 0.0)
        return torch.bmm(unit, unit.transpose(1, 2)).reshape(-1)  # [j, i, k]

    def forward(self, inputs: LossInputs) -> Tensor:
        s, t = self._pair(inputs)
        return _penalty(self._angles(s), self._angles(t), self.loss, self.beta)
