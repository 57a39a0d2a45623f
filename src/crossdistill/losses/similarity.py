"""Batch-similarity transfer terms: similarity-preserving KD (SP) and probabilistic
knowledge transfer (PKT).

Both compare how the samples of a batch relate to each other (a ``[B, B]`` matrix per
side), so the student and teacher representations may have different sizes and
modalities. By default they read the student embedding and the frozen teacher's own
embedding (``teacher_raw_embedding``); ``student_feature`` / ``teacher_feature`` read a
tapped feature of ``distill.features`` instead (flattened per sample). The teacher side
is detached. One scalar per batch (``per_sample = False``): quality weights do not apply.
"""

from __future__ import annotations

import torch
from torch import Tensor

from crossdistill.losses import functional
from crossdistill.losses.base import LossInputs, LossTerm, register_loss

TEACHER_FIELDS = ("teacher_embedding", "teacher_raw_embedding")


class _BatchSimilarityTerm(LossTerm):
    """Student and teacher representations ``[B, D_s]``, ``[B, D_t]`` (teacher detached)."""

    requires = ("student_embedding", "teacher_raw_embedding")
    per_sample = False

    def __init__(
        self,
        teacher_field: str = "teacher_raw_embedding",
        student_feature: str | None = None,
        teacher_feature: str | None = None,
    ) -> None:
        super().__init__()
        if teacher_field not in TEACHER_FIELDS:
            raise ValueError(
                f"{self.name}.teacher_field must be one of {TEACHER_FIELDS}, got {teacher_field!r}"
            )
        self.teacher_field = teacher_field
        self.student_feature = student_feature
        self.teacher_feature = teacher_feature
        # instance attributes: the composer asks exactly for what is read
        self.requires = tuple(
            field
            for field, feature in (
                ("student_embedding", student_feature),
                (teacher_field, teacher_feature),
            )
            if feature is None
        )
        self.student_features = (student_feature,) if student_feature is not None else ()
        self.teacher_features = (teacher_feature,) if teacher_feature is not None else ()

    def _pair(self, inputs: LossInputs) -> tuple[Tensor, Tensor]:
        if self.student_feature is None:
            s = inputs.student_embedding
        else:
            s = inputs.student_features[self.student_feature]
        if self.teacher_feature is None:
            t = getattr(inputs, self.teacher_field)
        else:
            t = inputs.teacher_features[self.teacher_feature]
        if s.shape[0] != t.shape[0]:
            raise ValueError(
                f"{self.name}: student batch {s.shape[0]} != teacher batch {t.shape[0]} "
                f"(student {tuple(s.shape)}, teacher {tuple(t.shape)})"
            )
        return s.flatten(1), t.detach().flatten(1)


@register_loss("sp")
class SimilarityPreservingTerm(_BatchSimilarityTerm):
    """Similarity-preserving KD (Tung & Mori, ICCV 2019).

    ``G = normalize_rows(Q Q^T)`` for the flattened representations ``Q [B, D]`` of each
    side, ``L = ||G_s - G_t||_F^2 / B^2`` (one scalar per batch, summed over pairs of
    layers in the paper; one pair here, or one term per pair in the config). The paper
    applies it to the last block's maps with ``gamma = 3000`` (CIFAR-10), the weight of
    ``conf/distill/sp.yaml``; ours reads the embeddings by default (any modality pair).

    Args:
        teacher_field: ``'teacher_raw_embedding'`` (the frozen teacher's embedding) or
            ``'teacher_embedding'`` (projected ``P(t)``).
        student_feature: name of a tapped student feature to use instead of the embedding.
        teacher_feature: name of a tapped teacher feature to use instead of
            ``teacher_field``.
        eps: floor of the row norms of ``Q Q^T`` (the paper: ``F.normalize``'s 1e-12).

    Degenerate inputs: a batch of 1 gives ``G = [[1]]`` on both sides (loss 0); a zero row
    has a zero row and column of ``G``; duplicated rows give equal rows; tiny inputs have
    ``|Q Q^T|`` below ``eps`` and are divided by ``eps`` (``G ~ 0``, bounded gradients).
    """

    def __init__(
        self,
        teacher_field: str = "teacher_raw_embedding",
        student_feature: str | None = None,
        teacher_feature: str | None = None,
        eps: float = functional.NORM_EPS,
    ) -> None:
        super().__init__(teacher_field, student_feature, teacher_feature)
        self.eps = eps

    def _similarity(self, q: Tensor) -> Tensor:
        return functional.normalize(q @ q.t(), self.eps)

    def forward(self, inputs: LossInputs) -> Tensor:
        s, t = self._pair(inputs)
        batch = s.shape[0]
        return (self._similarity(s) - self._similarity(t)).pow(2).sum() / batch**2


@register_loss("pkt")
class ProbabilisticKnowledgeTransferTerm(_BatchSimilarityTerm):
    """Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018).

    Cosine-similarity kernel ``K_ij = (cos(q_i, q_j) + 1) / 2`` on each side, conditional
    probabilities ``P_ij = K_ij / sum_j K_ij`` (per row, diagonal included), and
    ``L = mean_{i,j} P^t_ij log((P^t_ij + eps) / (P^s_ij + eps))`` (the KL(teacher ||
    student) of the authors' code, averaged over the ``B x B`` entries, ``eps = 1e-7``).
    The paper trains by PKT alone or beside CE without a fixed weight; weight 30000 is
    RepDistiller's benchmark (Tian et al., ICLR 2020) of this form (``conf/distill/pkt.yaml``).

    Ours differs in the normalisation before the cosine: ``q / max(|q|, 1e-3)``
    (``functional.NORM_EPS``) instead of the authors' ``q / (|q| + 1e-7)``, whose gradient
    reaches ``1e7`` on a zero or tiny row. Arguments as for ``sp``, and:

    Args:
        eps: the ``eps`` of the log ratio (1e-7 in the paper).
        norm_eps: floor of the norms before the cosine.

    Degenerate inputs: a zero or tiny row normalises to ~0 (cosine 0, kernel 1/2 with every
    row); a batch of 1 gives ``P = [[1]]`` on both sides (loss 0); duplicated rows give
    equal rows. Every kernel value is >= 0 and every row sum >= 1/2 (its diagonal), so
    the probabilities are finite.
    """

    def __init__(
        self,
        teacher_field: str = "teacher_raw_embedding",
        student_feature: str | None = None,
        teacher_feature: str | None = None,
        eps: float = 1e-7,
        norm_eps: float = functional.NORM_EPS,
    ) -> None:
        super().__init__(teacher_field, student_feature, teacher_feature)
        self.eps = eps
        self.norm_eps = norm_eps

    def _probabilities(self, q: Tensor) -> Tensor:
        unit = functional.normalize(q, self.norm_eps)
        kernel = (unit @ unit.t() + 1.0) / 2.0
        return kernel / kernel.sum(1, keepdim=True)

    def forward(self, inputs: LossInputs) -> Tensor:
        s, t = self._pair(inputs)
        p_s, p_t = self._probabilities(s), self._probabilities(t)
        return (p_t * torch.log((p_t + self.eps) / (p_s + self.eps))).mean()
