"""C2KD-style soft constraints (our interpretation).

* ``feature_margin``: feature-level soft constraint, a hinge on the distance between the
  student embedding ``s`` and the projected teacher embedding ``P(t)``.
* ``shared_classifier``: classifier-level soft constraint, the *student's* classifier ``W``
  applied to ``P(t)``. The student side ``CE(W s, y)`` is the standard ``ce`` term, so a
  method config lists both::

      ce: {weight: 1.0}
      shared_classifier: {weight: 1.0, lambda_t: 1.0}

  With the notes' total ``CE + b * (CE(W s, y) + lambda_t CE(W P(t), y))`` the ``ce``
  weight is the whole coefficient of ``CE(W s, y)`` and the effective coefficient of the
  teacher-side CE is ``shared_classifier.weight * lambda_t``.

Both terms are distillation terms: quality weights (``sample_weights``) scale them.
"""

from __future__ import annotations

from torch import Tensor

from crossdistill.losses import functional
from crossdistill.losses.base import LossInputs, LossTerm, register_loss

FEATURE_DISTANCES = ("cosine", "l2")


@register_loss("feature_margin")
class FeatureMarginTerm(LossTerm):
    """``l_i = max(0, d(s_i, P(t_i)) - margin)``, per sample.

    Args:
        margin: hinge margin ``m >= 0``; inside it the student is not pulled further.
        distance: ``'cosine'`` -> ``d = 1 - cos(s, P(t))`` (in [0, 2]); ``'l2'`` -> Euclidean
            distance between the L2-normalised embeddings (in [0, 2], equals
            ``sqrt(2 (1 - cos))``).
        detach_teacher: stop gradients into ``P(t)`` (by default the projection head is
            trained by this term, as with ``hard_l2``).
        eps: floor of the norms in the normalisation ``x / max(|x|, eps)``; it bounds the
            gradient by ``~1 / eps`` (the old 1e-8 gave 1e7 on a zero embedding).

    Degenerate inputs: a zero (or shorter than ``eps``) embedding normalises to ~0, so
    ``d = 1`` and gradients stay below ``~1 / eps``; ``s = P(t)`` gives ``d = 0``, gradient 0.
    """

    requires = ("student_embedding", "teacher_embedding")

    def __init__(
        self,
        margin: float = 0.2,
        distance: str = "cosine",
        detach_teacher: bool = False,
        eps: float = functional.NORM_EPS,
    ) -> None:
        super().__init__()
        if distance not in FEATURE_DISTANCES:
            raise ValueError(
                f"feature_margin.distance must be one of {FEATURE_DISTANCES}, got {distance!r}"
            )
        if margin < 0:
            raise ValueError(f"feature_margin.margin must be >= 0, got {margin}")
        self.margin = float(margin)
        self.distance = distance
        self.detach_teacher = detach_teacher
        self.eps = eps

    def forward(self, inputs: LossInputs) -> Tensor:
        s = inputs.student_embedding
        t = inputs.teacher_embedding
        if self.detach_teacher:
            t = t.detach()
        if s.shape != t.shape:
            raise ValueError(
                f"feature_margin needs equal shapes, got student {tuple(s.shape)} and teacher "
                f"{tuple(t.shape)}; add a projection head (projection=mlp or linear)"
            )
        s_n = functional.normalize(s, self.eps)
        t_n = functional.normalize(t, self.eps)
        # 'l2': the exact Euclidean norm, whose gradient is a unit vector (0 where s_n = t_n)
        d = (
            1.0 - (s_n * t_n).sum(-1)
            if self.distance == "cosine"
            else functional.safe_norm(s_n - t_n)
        )
        return (d - self.margin).clamp_min(0.0)


@register_loss("shared_classifier")
class SharedClassifierTerm(LossTerm):
    """``l_i = lambda_t * CE(W P(t_i), y_i)``: the student classifier on the projected teacher.

    ``teacher_shared_logits`` is computed by the module (the student's classifier, margin
    heads included, applied to ``P(t)``), so gradients reach both ``W`` and ``P``.

    Args:
        lambda_t: multiplier of the teacher-side CE, on top of the composer ``weight``.
        label_smoothing: as in ``ce``.

    Degenerate inputs: any finite logits (zero, tiny, duplicated) give the CE gradient
    ``lambda_t (softmax - onehot)``, at most ``lambda_t`` per element.
    """

    requires = ("teacher_shared_logits", "labels")

    def __init__(self, lambda_t: float = 1.0, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.lambda_t = float(lambda_t)
        self.label_smoothing = label_smoothing

    def forward(self, inputs: LossInputs) -> Tensor:
        ce = functional.cross_entropy(
            inputs.teacher_shared_logits, inputs.labels, self.label_smoothing
        )
        return self.lambda_t * ce
