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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from crossdistill.losses.base import LossInputs, LossTerm, register_loss

TEACHER_FIELDS = ("teacher_embedding", "teacher_raw_embedding")
RKD_PENALTIES = ("smooth_l1", "huber", "mse")


def _penalty(student: Tensor, teacher: Tensor, kind: str, beta: float) -> Tensor:
    if kind == "smooth_l1":
        return F.smooth_l1_loss(student, teacher, beta=beta)
    if kind == "huber":
        return F.huber_loss(student, teacher, delta=beta)
    return F.mse_loss(student, teacher)


def pairwise_distances(x: Tensor, eps: float = 1e-12) -> Tensor:
    """Euclidean distance matrix ``[B, B]`` with an exact zero diagonal (as in RKD's code)."""
    sq = x.pow(2).sum(-1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * x @ x.t()).clamp_min(eps)
    d = d2.sqrt()
    eye = torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    return d.masked_fill(eye, 0.0)


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
        eps: floor of squared distances and of the normaliser (batch of 1 -> loss 0).
    """

    def __init__(
        self,
        teacher_field: str = "teacher_embedding",
        detach_teacher: bool = True,
        loss: str = "smooth_l1",
        beta: float = 1.0,
        normalize: bool = True,
        eps: float = 1e-12,
    ) -> None:
        super().__init__(teacher_field, detach_teacher, loss, beta)
        self.normalize = normalize
        self.eps = eps

    def _distances(self, x: Tensor) -> Tensor:
        d = pairwise_distances(x, self.eps)
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
    Arguments as for ``rkd_distance``.
    """

    @staticmethod
    def _angles(x: Tensor) -> Tensor:
        diff = x.unsqueeze(0) - x.unsqueeze(1)  # [j, i] = e_i - e_j
        unit = F.normalize(diff, p=2, dim=2)
        return torch.bmm(unit, unit.transpose(1, 2)).reshape(-1)  # [j, i, k]

    def forward(self, inputs: LossInputs) -> Tensor:
        s, t = self._pair(inputs)
        return _penalty(self._angles(s), self._angles(t), self.loss, self.beta)
