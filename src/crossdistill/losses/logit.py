"""Logit baselines beyond Hinton KD: decoupled KD (DKD) and DIST.

Both read the student's margin-free logits (``student_plain_logits``, see ``kd`` in
:mod:`crossdistill.losses.terms`) and the frozen teacher's logits (detached).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from crossdistill.losses import functional
from crossdistill.losses.base import LossInputs, LossTerm, register_loss


def _check_temperature(where: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{where} must be > 0, got {value}")


@register_loss("dkd")
class DecoupledKDTerm(LossTerm):
    """Decoupled KD (Zhao, Cui, Song, Qiu, Liang; CVPR 2022): ``alpha TCKD + beta NCKD``.

    With ``p = softmax(z / T)`` for student and teacher and ``g`` the true class:

    - TCKD (target class): ``T^2 KL(b_t || b_s)`` over the binary distribution
      ``b = [p_g, 1 - p_g]``;
    - NCKD (non-target classes): ``T^2 KL(p^_t || p^_s)`` over ``p^ = softmax`` of the
      logits without class ``g`` (the distribution among the wrong classes).

    Per sample; the batch mean equals the authors' loss (``kl_div(..., sum) / B``).
    Defaults are their CIFAR-100 setting: ``alpha = 1, beta = 8, T = 4`` (ImageNet:
    ``beta = 0.5, T = 1``). Not implemented: their linear warm-up of the DKD weight over
    the first 20 epochs (``min(epoch / 20, 1)``); the composer's weights are constant.
    Differs numerically only: ``log(1 - p_g)`` is a logsumexp over the non-target logits
    (the authors take ``log`` of a sum of probabilities, ``-inf`` once ``p_g``
    saturates), and the target class is removed exactly instead of by ``- 1000`` on the
    logit (the same value while logits stay below ~1000 T).

    Args:
        alpha, beta: weights of TCKD and NCKD.
        temperature: T (> 0).

    Degenerate inputs: any finite logits give bounded gradients (softmax differences
    times ``T``); with 2 classes NCKD is 0 (one non-target class). Needs >= 2 classes.
    """

    requires = ("student_plain_logits", "teacher_logits", "labels")

    def __init__(self, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0) -> None:
        super().__init__()
        _check_temperature("dkd.temperature", temperature)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.temperature = float(temperature)

    def parts(self, inputs: LossInputs) -> tuple[Tensor, Tensor]:
        """Per-sample ``(TCKD, NCKD)``, each already times ``T^2``."""
        student, teacher = inputs.student_plain_logits, inputs.teacher_logits.detach()
        if student.shape[-1] < 2:
            raise ValueError(f"dkd needs at least 2 classes, got logits {tuple(student.shape)}")
        t = self.temperature
        target = F.one_hot(inputs.labels, student.shape[-1]).bool()
        tckd = _binary_kl(teacher / t, student / t, target)
        nckd = _kl(
            _log_softmax_without(teacher / t, target), _log_softmax_without(student / t, target)
        )
        return tckd * t**2, nckd * t**2

    def forward(self, inputs: LossInputs) -> Tensor:
        tckd, nckd = self.parts(inputs)
        return self.alpha * tckd + self.beta * nckd


def _log_softmax_without(logits: Tensor, target: Tensor) -> Tensor:
    """``log_softmax`` over the non-target classes; the target column is set to 0 (its
    probability is 0 and the callers mask it)."""
    masked = logits.masked_fill(target, float("-inf"))
    return masked.log_softmax(-1).masked_fill(target, 0.0)


def _kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """``sum_j p_j (log p_j - log q_j)`` over the last dim (masked columns: both 0, give 0)."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def _binary_kl(teacher: Tensor, student: Tensor, target: Tensor) -> Tensor:
    """KL between the ``[p_g, 1 - p_g]`` distributions of the two sides, from log-probs."""

    def log_pair(logits: Tensor) -> Tensor:
        total = logits.logsumexp(-1)
        log_gt = logits.masked_fill(~target, float("-inf")).logsumexp(-1) - total
        log_rest = logits.masked_fill(target, float("-inf")).logsumexp(-1) - total
        return torch.stack([log_gt, log_rest], -1)

    return _kl(log_pair(teacher), log_pair(student))


@register_loss("dist")
class DISTTerm(LossTerm):
    """DIST (Huang, You, Wang, Qian, Xu; NeurIPS 2022): relations of the predictions.

    With ``Y = softmax(z / tau)`` ``[B, C]`` for student and teacher and
    ``rho(u, v) = cos(u - mean u, v - mean v)`` (Pearson correlation):

    ``L = tau^2 (beta (1 - mean_i rho(Y_s[i, :], Y_t[i, :]))
    + gamma (1 - mean_c rho(Y_s[:, c], Y_t[:, c])))``,

    the inter-class relation (per sample, over the classes) and the intra-class relation
    (per class, over the batch). Defaults ``beta = gamma = 1, tau = 1`` are the paper's
    ImageNet setting (CIFAR-100: ``tau = 4``). One scalar per batch (``per_sample =
    False``: the intra term couples the samples), so quality weights do not apply.

    Differs from the authors' code (``rho = <u, v> / (|u| |v| + 1e-8)``) by a floor on each
    norm: ``rho = <u, v> / (max(|u|, f) max(|v|, f) + eps)``, ``f = norm_floor = 1e-3``
    (``functional.NORM_EPS``). Pearson is scale-invariant, so its gradient grows like
    ``1 / |u|``: near-constant predictions (all logits equal, centred to rounding noise of
    ~1e-9) gave gradients of 1e6 and more. Only rows/columns whose centred softmax is
    shorter than ``f`` change (their ``rho`` shrinks by ``|u| / f``: predictions that vary
    by less than ~1e-3 carry no usable relation); ``norm_floor=0`` is the authors' formula.

    Degenerate inputs: constant rows/columns (equal logits, a batch of 1 for the intra
    term) centre to ~0, so their ``rho`` is ~0 (loss ~1 for that part), with gradients at
    most ``~1 / f`` per element.
    """

    requires = ("student_plain_logits", "teacher_logits")
    per_sample = False

    def __init__(
        self,
        beta: float = 1.0,
        gamma: float = 1.0,
        tau: float = 1.0,
        norm_floor: float = functional.NORM_EPS,
        eps: float = 1e-8,
    ) -> None:
        super().__init__()
        _check_temperature("dist.tau", tau)
        self.beta = float(beta)
        self.gamma = float(gamma)
        self.tau = float(tau)
        self.norm_floor = float(norm_floor)
        self.eps = float(eps)

    def pearson(self, a: Tensor, b: Tensor) -> Tensor:
        """Pearson correlation of the rows of ``a`` and ``b`` ``[N, K] -> [N]``."""
        a = a - a.mean(-1, keepdim=True)
        b = b - b.mean(-1, keepdim=True)
        floor = self.norm_floor
        norms = functional.safe_norm(a).clamp_min(floor) * functional.safe_norm(b).clamp_min(floor)
        return (a * b).sum(-1) / (norms + self.eps)

    def parts(self, inputs: LossInputs) -> tuple[Tensor, Tensor]:
        """``(inter, intra)`` relation losses, each already times ``tau^2``."""
        y_s = (inputs.student_plain_logits / self.tau).softmax(-1)
        y_t = (inputs.teacher_logits.detach() / self.tau).softmax(-1)
        inter = 1 - self.pearson(y_s, y_t).mean()
        intra = 1 - self.pearson(y_s.T, y_t.T).mean()
        return inter * self.tau**2, intra * self.tau**2

    def forward(self, inputs: LossInputs) -> Tensor:
        inter, intra = self.parts(inputs)
        return self.beta * inter + self.gamma * intra
