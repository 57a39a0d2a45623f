"""The standard loss terms: supervised cross-entropy, logit KD and hard feature L2."""

from __future__ import annotations

from torch import Tensor

from crossdistill.losses import functional
from crossdistill.losses.base import LossInputs, LossTerm, register_loss


@register_loss("ce")
class CrossEntropyTerm(LossTerm):
    """Supervised cross-entropy of the student's logits with the labels.

    Degenerate inputs: any finite logits give the gradient ``softmax - onehot`` (<= 1).
    """

    requires = ("student_logits", "labels")
    uses_sample_weights = False

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, inputs: LossInputs) -> Tensor:
        return functional.cross_entropy(inputs.student_logits, inputs.labels, self.label_smoothing)


@register_loss("kd")
class LogitKDTerm(LossTerm):
    """Logit distillation, KL(teacher || student) at temperature T (Hinton et al., 2015).

    ``reduction='elementwise_mean'`` with ``scale_by_t2=False`` and T=1 is exactly the
    loss of the Modality Focusing Hypothesis code (torch ``KLDivLoss()`` default).

    Reads the student's *margin-free* logits (``student_plain_logits``): the teacher's
    logits carry no margin, so with an angular-margin head (AAM/ArcFace) the two sides are
    compared the same way, and a student identical to its teacher has zero loss.

    Degenerate inputs: any finite logits give the gradient ``(softmax_s - softmax_t) / T``
    (times ``T^2`` with ``scale_by_t2``), at most ``max(T, 1 / T)`` per element.
    """

    requires = ("student_plain_logits", "teacher_logits")

    def __init__(
        self, temperature: float = 4.0, reduction: str = "batchmean", scale_by_t2: bool = True
    ) -> None:
        super().__init__()
        if reduction not in functional.KD_REDUCTIONS:
            raise ValueError(
                f"kd.reduction must be one of {functional.KD_REDUCTIONS}, got {reduction!r}"
            )
        self.temperature = temperature
        self.reduction = reduction
        self.scale_by_t2 = scale_by_t2

    def forward(self, inputs: LossInputs) -> Tensor:
        return functional.kd_kl(
            inputs.student_plain_logits,
            inputs.teacher_logits.detach(),
            self.temperature,
            self.reduction,
            self.scale_by_t2,
        )


@register_loss("hard_l2")
class HardL2Term(LossTerm):
    """Hard feature constraint: squared L2 between s and the (projected) teacher P(t).

    ``normalize=True`` (default) compares the L2-normalised embeddings:
    ``l_i = |s_i/|s_i| - P(t_i)/|P(t_i)||^2 = 2 - 2 cos(s_i, P(t_i))`` (the squared chord,
    in [0, 4]), i.e. the margin-0 counterpart of ``feature_margin``: the hard-vs-soft
    constraint comparison of C2KD. ``normalize=False`` is the raw FitNets MSE
    ``mean_d (s - P(t))^2``.

    Why normalised by default: the projection head P is trainable (``detach_teacher=False``)
    and the face->voice student classifies with a scale-invariant AAM/cosine head, so
    the raw MSE is minimised by shrinking both s and P(t) towards 0 at no cost to the
    classifier, and stops constraining the direction that the classifier reads (a reported
    run: norms fell 4x while the cosine stayed at 0.77; the toy problem of
    ``tests/test_loss_gradients.py``: both norms fall to 0.4x in 300 SGD steps). On unit
    vectors there is no scale to shrink. (With a linear classifier, as in text->image, CE
    needs the scale and the toy norms do not shrink; the normalised default suits both.)

    Args:
        reduction: over features, ``'sum'`` or ``'mean'``; ``None`` (default) picks
            ``'sum'`` when normalised (``2 - 2 cos``) and ``'mean'`` otherwise (FitNets MSE).
        detach_teacher: stop gradients into ``P(t)`` (by default this term trains P too).
        normalize: compare unit vectors (default) or the raw embeddings.
        eps: floor of the norms in the normalisation (gradients at most ``~2 / eps``).

    Degenerate inputs: normalised, a zero or tiny embedding normalises to ~0 (distance 1)
    with gradients at most ``~2 / eps``; raw, the gradient is ``2 (s - P(t))``, bounded by
    the inputs.
    """

    requires = ("student_embedding", "teacher_embedding")

    def __init__(
        self,
        reduction: str | None = None,
        detach_teacher: bool = False,
        normalize: bool = True,
        eps: float = functional.NORM_EPS,
    ) -> None:
        super().__init__()
        if reduction is None:
            reduction = "sum" if normalize else "mean"
        if reduction not in ("mean", "sum"):
            raise ValueError(f"hard_l2.reduction must be 'mean' or 'sum', got {reduction!r}")
        self.reduction = reduction
        self.detach_teacher = detach_teacher
        self.normalize = normalize
        self.eps = eps

    def forward(self, inputs: LossInputs) -> Tensor:
        s = inputs.student_embedding
        target = inputs.teacher_embedding
        if self.detach_teacher:
            target = target.detach()
        if self.normalize and s.shape == target.shape:  # else squared_error names the fix
            s, target = functional.normalize(s, self.eps), functional.normalize(target, self.eps)
        return functional.squared_error(s, target, self.reduction)
