"""Quality estimators and the quality-based weighting of distillation terms."""

from crossdistill.quality.estimators import (
    ESTIMATORS,
    BatchFieldQuality,
    QualityEstimator,
    SNRQuality,
    TeacherEmbeddingNorm,
    snr,
    teacher_embedding_norm,
)
from crossdistill.quality.weighting import WEIGHT_RULES, QualityWeighter

__all__ = [
    "ESTIMATORS",
    "BatchFieldQuality",
    "QualityEstimator",
    "QualityWeighter",
    "SNRQuality",
    "TeacherEmbeddingNorm",
    "WEIGHT_RULES",
    "snr",
    "teacher_embedding_norm",
]
