"""Loss functions on plain tensors.

Every function returns a *per-sample* loss of shape ``[...]`` for inputs of shape
``[..., C]`` (or ``[..., D]``), so the same code serves one model (``[B, C]``) and a stack
of independent models trained at once (``[S, B, C]``). Reductions happen in the composer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

#: Floor of a norm that a loss divides by (L2 normalisation, distance normalisers): an
#: embedding shorter than this has no usable direction. The Jacobian of
#: ``x / max(|x|, NORM_EPS)`` is at most ``1 / NORM_EPS = 1e3``, so scale-invariant terms
#: keep bounded gradients on zero or tiny inputs, while every unit-scale embedding (norms
#: of 1 to 100) is normalised exactly as without a floor.
NORM_EPS = 1e-3


def safe_norm(x: Tensor, dim: int = -1, keepdim: bool = False) -> Tensor:
    """L2 norm over ``dim`` whose gradient is the unit vector, or 0 (not NaN) where x = 0."""
    sq = x.pow(2).sum(dim, keepdim=keepdim)
    zero = sq == 0
    return torch.where(zero, 0.0, torch.where(zero, 1.0, sq).sqrt())


def normalize(x: Tensor, eps: float = NORM_EPS) -> Tensor:
    """``x / max(|x|, eps)`` over the last dim (``F.normalize`` with a usable floor)."""
    return F.normalize(x, dim=-1, eps=eps)


def cross_entropy(logits: Tensor, labels: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Per-sample cross-entropy for logits ``[..., C]`` and integer labels ``[...]``."""
    flat = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        labels.reshape(-1),
        reduction="none",
        label_smoothing=label_smoothing,
    )
    return flat.reshape(labels.shape)


KD_REDUCTIONS = ("batchmean", "elementwise_mean")


def kd_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float = 1.0,
    reduction: str = "batchmean",
    scale_by_t2: bool = True,
) -> Tensor:
    """Per-sample KL(softmax(t/T) || softmax(s/T)) (Hinton et al. logit distillation).

    ``reduction='batchmean'`` gives the textbook per-sample KL (sum over classes), whose
    batch mean equals ``KLDivLoss(reduction='batchmean')``. ``'elementwise_mean'`` divides
    by the number of classes as well, so its batch mean equals torch's default
    ``KLDivLoss()`` ('mean'), which is what the Modality Focusing Hypothesis code uses.
    ``scale_by_t2`` multiplies by T^2 so gradients keep their size across temperatures.
    """
    if reduction not in KD_REDUCTIONS:
        raise ValueError(f"kd reduction must be one of {KD_REDUCTIONS}, got {reduction!r}")
    if temperature <= 0:
        raise ValueError(f"kd temperature must be > 0, got {temperature}")
    log_p_s = F.log_softmax(student_logits / temperature, dim=-1)
    p_t = F.softmax(teacher_logits / temperature, dim=-1)
    # xlogy gives 0 * log 0 = 0, as KLDivLoss does.
    kl = (torch.xlogy(p_t, p_t) - p_t * log_p_s).sum(dim=-1)
    if reduction == "elementwise_mean":
        kl = kl / student_logits.shape[-1]
    if scale_by_t2:
        kl = kl * temperature**2
    return kl


def squared_error(student: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """Per-sample squared L2 distance; ``'mean'`` averages over features (MSELoss-like)."""
    if student.shape != target.shape:
        raise ValueError(
            f"hard L2 needs equal shapes, got student {tuple(student.shape)} and target "
            f"{tuple(target.shape)}; add a projection head (projection=mlp or linear)"
        )
    sq = (student - target).pow(2)
    if reduction == "mean":
        return sq.mean(dim=-1)
    if reduction == "sum":
        return sq.sum(dim=-1)
    raise ValueError(f"hard_l2 reduction must be 'mean' or 'sum', got {reduction!r}")


def weighted_mean(values: Tensor, weights: Tensor | None = None) -> Tensor:
    """Mean over the last dim, ``sum(w * l) / sum(w)`` when weights are given."""
    if weights is None:
        return values.mean(dim=-1)
    return (values * weights).sum(dim=-1) / weights.sum(dim=-1).clamp_min(1e-12)
