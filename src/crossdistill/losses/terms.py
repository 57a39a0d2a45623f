"""The standard loss terms: supervised cross-entropy, logit KD and hard feature L2."""

from __future__ import annotations

from torch import Tensor

from crossdistill.losses import functional as LF
from crossdistill.losses.base import LossInputs, LossTerm, register_loss


@register_loss("ce")
class CrossEntropyTerm(LossTerm):
    """Supervised cross-entropy of the student's logits with the labels."""

    requires = ("student_logits", "labels")
    uses_sample_weights = False

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, inputs: LossInputs) -> Tensor:
        return LF.cross_entropy(inputs.student_logits, inputs.labels, self.label_smoothing)


@register_loss("kd")
class LogitKDTerm(LossTerm):
    """Logit distillation, KL(teacher || student) at temperature T (Hinton et al., 2015).

    ``reduction='elementwise_mean'`` with ``scale_by_t2=False`` and T=1 is exactly the
    loss of the Modality Focusing Hypothesis code (torch ``KLDivLoss()`` default).
    """

    requires = ("student_logits", "teacher_logits")

    def __init__(
        self, temperature: float = 4.0, reduction: str = "batchmean", scale_by_t2: bool = True
    ) -> None:
        super().__init__()
        if reduction not in LF.KD_REDUCTIONS:
            raise ValueError(f"kd.reduction must be one of {LF.KD_REDUCTIONS}, got {reduction!r}")
        self.temperature = temperature
        self.reduction = reduction
        self.scale_by_t2 = scale_by_t2

    def forward(self, inputs: LossInputs) -> Tensor:
        return LF.kd_kl(
            inputs.student_logits,
            inputs.teacher_logits.detach(),
            self.temperature,
            self.reduction,
            self.scale_by_t2,
        )


@register_loss("hard_l2")
class HardL2Term(LossTerm):
    """FitNets-style hard constraint: squared L2 between s and the (projected) teacher P(t).

    With ``detach_teacher=False`` the projection head is trained by this term too.
    """

    requires = ("student_embedding", "teacher_embedding")

    def __init__(self, reduction: str = "mean", detach_teacher: bool = False) -> None:
        super().__init__()
        self.reduction = reduction
        self.detach_teacher = detach_teacher

    def forward(self, inputs: LossInputs) -> Tensor:
        target = inputs.teacher_embedding
        if self.detach_teacher:
            target = target.detach()
        return LF.squared_error(inputs.student_embedding, target, self.reduction)
