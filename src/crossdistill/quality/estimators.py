"""Per-sample quality estimators: higher value = better input (our C2KD interpretation).

An estimator is called as ``estimator(batch, inputs) -> Tensor [B]`` with the training
``batch`` dict and the step's :class:`~crossdistill.losses.base.LossInputs`, and declares
``requires``: the ``LossInputs`` fields it reads (the module must compute them), and
``batch_keys``: the batch keys it reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from crossdistill.losses.base import LossInputs

__all__ = [
    "ESTIMATORS",
    "BatchFieldQuality",
    "QualityEstimator",
    "SNRQuality",
    "TeacherEmbeddingNorm",
    "snr",
    "teacher_embedding_norm",
]


class QualityEstimator:
    """Base class; subclasses implement :meth:`__call__`."""

    requires: tuple[str, ...] = ()
    batch_keys: tuple[str, ...] = ()

    def __call__(
        self, batch: Mapping[str, Any], inputs: LossInputs | None = None
    ) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class TeacherEmbeddingNorm(QualityEstimator):
    """``q_i = ||t_i||_p`` of the *raw* teacher embedding (MagFace / AdaFace: face
    recognisers give low-quality faces a small feature norm).

    Args:
        field: ``LossInputs`` field holding the embedding (``teacher_raw_embedding``).
        p: norm order.
        log: return ``log(norm + eps)`` (compresses very large norms).
        eps: used with ``log``.
    """

    def __init__(
        self, field: str = "teacher_raw_embedding", p: float = 2.0, log: bool = False,
        eps: float = 1e-8,
    ) -> None:
        if field not in LossInputs.field_names():
            raise ValueError(
                f"TeacherEmbeddingNorm.field must be a LossInputs field "
                f"{LossInputs.field_names()}, got {field!r}"
            )
        self.field = field
        self.p = p
        self.log = log
        self.eps = eps
        self.requires = (field,)

    def __call__(self, batch: Mapping[str, Any], inputs: LossInputs | None = None) -> Tensor:
        emb = getattr(inputs, self.field, None) if inputs is not None else None
        if emb is None:
            raise ValueError(
                f"TeacherEmbeddingNorm needs LossInputs.{self.field}, which this step lacks"
            )
        q = emb.detach().flatten(1).norm(p=self.p, dim=1)
        return (q + self.eps).log() if self.log else q


class BatchFieldQuality(QualityEstimator):
    """Read a per-sample quality from the batch (e.g. ``teacher_quality``, ``student_quality``).

    Args:
        field: batch key holding a ``[B]`` tensor.
        higher_is_better: if False, the value is negated (e.g. a noise level).
        clip: optional ``(low, high)`` clamp applied first.
    """

    def __init__(
        self,
        field: str = "student_quality",
        higher_is_better: bool = True,
        clip: tuple[float, float] | list[float] | None = None,
    ) -> None:
        if clip is not None and (len(clip) != 2 or clip[0] >= clip[1]):
            raise ValueError(f"{type(self).__name__}.clip must be [low, high], got {clip!r}")
        self.field = field
        self.higher_is_better = higher_is_better
        self.clip = None if clip is None else (float(clip[0]), float(clip[1]))
        self.batch_keys = (field,)

    def __call__(self, batch: Mapping[str, Any], inputs: LossInputs | None = None) -> Tensor:
        if self.field not in batch:
            raise KeyError(
                f"{type(self).__name__} reads batch[{self.field!r}], which the batch lacks; "
                f"batch keys: {sorted(batch)}"
            )
        q = torch.as_tensor(batch[self.field]).detach().float().reshape(-1)
        if self.clip is not None:
            q = q.clamp(*self.clip)
        return q if self.higher_is_better else -q


class SNRQuality(BatchFieldQuality):
    """Signal-to-noise ratio in dB from the batch (speech student; default
    ``student_snr_db``). Clean speech (high SNR) counts as high quality.

    Args:
        field: batch key with the SNR in dB.
        clip: optional ``(low, high)`` dB clamp, e.g. ``[-5, 40]`` so that "infinitely
            clean" synthetic samples do not dominate the running statistics.
    """

    def __init__(
        self,
        field: str = "student_snr_db",
        clip: tuple[float, float] | list[float] | None = None,
    ) -> None:
        super().__init__(field=field, higher_is_better=True, clip=clip)


def teacher_embedding_norm(embedding: Tensor, p: float = 2.0) -> Tensor:
    """Functional form of :class:`TeacherEmbeddingNorm`: ``||t_i||_p`` for ``[B, D]``."""
    return embedding.detach().flatten(1).norm(p=p, dim=1)


def snr(batch: Mapping[str, Any], field: str = "student_snr_db") -> Tensor:
    """Functional form of :class:`SNRQuality`: the ``[B]`` SNR (dB) read from the batch."""
    return SNRQuality(field)(batch)


#: estimator classes by short name (``QualityWeighter(estimator="snr")`` also works)
ESTIMATORS: dict[str, type[QualityEstimator]] = {
    "teacher_embedding_norm": TeacherEmbeddingNorm,
    "snr": SNRQuality,
    "batch_field": BatchFieldQuality,
}
