"""DSKD-style dimensional-structure terms (our interpretation).

* ``channel_independence``: decorrelate the channels of the student embedding over the
  batch (Barlow-Twins-style), or match the teacher's channel correlation matrix.
* ``spatial_uniformity``: spread the energy of a tapped intermediate feature map evenly
  over its positions (``KL(a || uniform)``), or the Wang-Isola uniformity variant.

Degenerate inputs give a finite loss and bounded gradients: a batch of 1 or a constant
channel has zero standardised values (hence zero correlations); an all-zero or tiny map
counts as uniform.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from crossdistill.losses import functional
from crossdistill.losses.base import LossInputs, LossTerm, register_loss

CI_TARGETS = ("identity", "teacher")
CI_REDUCTIONS = ("mean", "sum")
CI_TEACHER_FIELDS = ("teacher_embedding", "teacher_raw_embedding")
SU_MODES = ("kl", "wang_isola")
SU_SIDES = ("student", "teacher")


def channel_correlation(x: Tensor, eps: float = 1e-5) -> Tensor:
    """Correlation matrix ``[D, D]`` of ``x [B, D]`` over the batch (biased variance).

    Each channel is standardised as ``(x - mean) / sqrt(var + eps)``; constant channels
    (and any channel of a batch of 1) become 0, so their correlations are 0, never NaN.
    """
    x = x.flatten(1)
    z = (x - x.mean(0, keepdim=True)) / (x.var(0, unbiased=False, keepdim=True) + eps).sqrt()
    return z.t() @ z / x.shape[0]


@register_loss("channel_independence")
class ChannelIndependenceTerm(LossTerm):
    """Off-diagonal channel correlations of the student embedding, one scalar per batch.

    ``target='identity'``: ``L = reduce_{i != j} C_s[i, j]^2``.
    ``target='teacher'``: ``L = reduce_{i != j} (C_s[i, j] - C_t[i, j])^2`` with ``C_t`` from
    ``teacher_field`` (same dimension as the student: use the projected embedding, or a
    raw teacher embedding of equal size).

    Args:
        target: ``'identity'`` or ``'teacher'``.
        teacher_field: teacher embedding used when ``target='teacher'``.
        detach_teacher: stop gradients into the teacher correlation (``target='teacher'``).
        reduction: ``'mean'`` over the ``D (D - 1)`` off-diagonal entries or ``'sum'``.
        eps: added to the per-channel variance before standardising.

    Degenerate inputs: batch of 1, duplicated rows, zero or tiny embeddings give zero
    correlations and gradients of at most ``~1 / sqrt(eps)`` (316 for the default).
    """

    requires = ("student_embedding",)
    per_sample = False

    def __init__(
        self,
        target: str = "identity",
        teacher_field: str = "teacher_embedding",
        detach_teacher: bool = True,
        reduction: str = "mean",
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if target not in CI_TARGETS:
            raise ValueError(
                f"channel_independence.target must be one of {CI_TARGETS}, got {target!r}"
            )
        if teacher_field not in CI_TEACHER_FIELDS:
            raise ValueError(
                "channel_independence.teacher_field must be one of "
                f"{CI_TEACHER_FIELDS}, got {teacher_field!r}"
            )
        if reduction not in CI_REDUCTIONS:
            raise ValueError(
                f"channel_independence.reduction must be one of {CI_REDUCTIONS}, got {reduction!r}"
            )
        self.target = target
        self.teacher_field = teacher_field
        self.detach_teacher = detach_teacher
        self.reduction = reduction
        self.eps = eps
        if target == "teacher":
            self.requires = ("student_embedding", teacher_field)

    def forward(self, inputs: LossInputs) -> Tensor:
        s = inputs.student_embedding
        c = channel_correlation(s, self.eps)
        d = c.shape[0]
        if self.target == "teacher":
            t = getattr(inputs, self.teacher_field)
            if self.detach_teacher:
                t = t.detach()
            if t.flatten(1).shape[1] != d:
                raise ValueError(
                    f"channel_independence target=teacher needs {self.teacher_field} with "
                    f"{d} channels like the student, got {tuple(t.shape)}; use "
                    "teacher_field=teacher_embedding (projected) or target=identity"
                )
            c = c - channel_correlation(t, self.eps)
        off = ~torch.eye(d, dtype=torch.bool, device=c.device)
        sq = c.pow(2)[off]
        if sq.numel() == 0:  # one channel: nothing to decorrelate
            return s.sum() * 0.0
        return sq.mean() if self.reduction == "mean" else sq.sum()


@register_loss("spatial_uniformity")
class SpatialUniformityTerm(LossTerm):
    """Uniform spatial spread of a named feature map ``[B, C, *positions]``.

    The map is a tapped feature (``distill.features.<side>.<feature>``, e.g.
    ``encoder.backbone.layer3`` of a timm ResNet or ``encoder.ecapa.mfa`` of ECAPA).

    ``mode='kl'`` (default, per sample): ``e_p = mean_c |F_{c,p}|^power``, ``a = e / sum_p e``
    and ``l_i = KL(a || uniform) = log P - H(a)`` (``P`` positions; 0 if and only if the
    energy is spread evenly). ``normalize=True`` divides by ``log P`` (values in [0, 1]).

    ``mode='wang_isola'`` (one scalar per batch, quality weights do not apply):
    ``log mean_{i != j} exp(-t ||z_i - z_j||^2)`` of the L2-normalised position-averaged
    features ``z_i = normalise(mean_p F_{:, p})`` (Wang & Isola, 2020). A batch of 1 gives 0.

    Args:
        mode: ``'kl'`` or ``'wang_isola'``.
        feature: name of the feature map (a key of ``distill.features.<side>``).
        side: ``'student'`` (default) or ``'teacher'`` (a frozen map: no gradient).
        power: exponent of the energy (2 = squared activations, as in the notes); with
            ``power < 1`` the gradient at an exactly zero activation is infinite.
        normalize: ``mode='kl'`` only, divide by ``log P``.
        t: Wang-Isola temperature.
        eps: floor added to each position's energy (keeps ``log a`` finite).
        min_activation: activation scale below which a map has no spatial structure.
            ``'kl'``: a map whose mean energy is below ``min_activation ** power`` is padded
            uniformly up to that mean, so it tends to uniform (loss 0) as it fades instead
            of keeping a scale-free ``a`` with gradients ``~1 / scale``. ``'wang_isola'``:
            floor of the norm of the pooled feature. Gradients stay below
            ``~1 / min_activation``.

    Degenerate inputs: an all-zero or tiny map is uniform (loss 0, gradient 0 at zero);
    ``'wang_isola'``: batch of 1 -> 0, duplicated or zero maps give bounded gradients.
    """

    requires = ("student_features",)
    per_sample = True

    def __init__(
        self,
        mode: str = "kl",
        feature: str = "map",
        side: str = "student",
        power: float = 2.0,
        normalize: bool = False,
        t: float = 2.0,
        eps: float = 1e-12,
        min_activation: float = functional.NORM_EPS,
    ) -> None:
        super().__init__()
        if mode not in SU_MODES:
            raise ValueError(f"spatial_uniformity.mode must be one of {SU_MODES}, got {mode!r}")
        if side not in SU_SIDES:
            raise ValueError(f"spatial_uniformity.side must be one of {SU_SIDES}, got {side!r}")
        if power <= 0:
            raise ValueError(f"spatial_uniformity.power must be > 0, got {power}")
        self.mode = mode
        self.feature = feature
        self.side = side
        self.power = power
        self.normalize = normalize
        self.t = t
        self.eps = eps
        self.min_activation = min_activation
        self.requires = (f"{side}_features",)
        if side == "student":
            self.student_features = (feature,)
        else:
            self.teacher_features = (feature,)
        self.per_sample = mode == "kl"

    def forward(self, inputs: LossInputs) -> Tensor:
        fmap = getattr(inputs, f"{self.side}_features")[self.feature]
        if fmap.dim() < 3:
            raise ValueError(
                f"spatial_uniformity needs the {self.side} feature {self.feature!r} of shape "
                f"[B, C, H, W] or [B, C, T], got {tuple(fmap.shape)} (tap a map, not a vector)"
            )
        flat = fmap.flatten(2)  # [B, C, P]
        if self.mode == "wang_isola":
            return self._wang_isola(flat)
        n_pos = flat.shape[2]
        energy = flat.abs().pow(self.power).mean(1) + self.eps  # [B, P]
        total = energy.sum(-1, keepdim=True)
        # a faint map is padded uniformly up to a total of P * min_activation^power: the
        # same a = energy / total above that floor, a bounded Jacobian below it
        floor = n_pos * self.min_activation**self.power
        pad = (floor - total).clamp_min(0.0) / n_pos
        a = (energy + pad) / (total + n_pos * pad)
        kl = torch.xlogy(a, a).sum(-1) + math.log(n_pos)
        kl = kl.clamp_min(0.0)  # rounding can give -1e-8 for a uniform map
        if self.normalize and n_pos > 1:
            kl = kl / math.log(n_pos)
        return kl

    def _wang_isola(self, flat: Tensor) -> Tensor:
        b = flat.shape[0]
        if b < 2:
            return flat.sum() * 0.0
        z = functional.normalize(flat.mean(2), self.min_activation)
        sq = (z[:, None, :] - z[None, :, :]).pow(2).sum(-1)
        off = ~torch.eye(b, dtype=torch.bool, device=z.device)
        vals = -self.t * sq[off]
        return torch.logsumexp(vals, 0) - math.log(vals.numel())
