"""Heads on top of an encoder embedding: classifiers and the teacher projection head.

Every classifier has the signature ``forward(embedding, labels=None) -> logits``; margin
classifiers apply their margin only when ``labels`` are given (training), so evaluation
logits are plain (scaled) cosines.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LinearClassifier(nn.Module):
    """Affine classifier ``W e + b``."""

    def __init__(self, embedding_dim: int, num_classes: int, bias: bool = True) -> None:
        super().__init__()
        self.fc = nn.Linear(embedding_dim, num_classes, bias=bias)

    def forward(self, embedding: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.fc(embedding)


class CosineClassifier(nn.Module):
    """``scale * cos(e, w_c)``: normalised embedding against normalised class prototypes."""

    def __init__(self, embedding_dim: int, num_classes: int, scale: float = 16.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.xavier_uniform_(self.weight)
        self.scale = scale

    def cosine(self, embedding: Tensor) -> Tensor:
        return F.linear(F.normalize(embedding, dim=-1), F.normalize(self.weight, dim=-1))

    def forward(self, embedding: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.scale * self.cosine(embedding)


class AdditiveAngularMarginClassifier(CosineClassifier):
    """ArcFace / AAM-softmax: ``s * cos(theta_y + m)`` for the true class while training.

    Used by SpeechBrain's and WeSpeaker's speaker-recognition recipes (m=0.2, s=30).
    """

    def __init__(
        self, embedding_dim: int, num_classes: int, margin: float = 0.2, scale: float = 30.0
    ) -> None:
        super().__init__(embedding_dim, num_classes, scale)
        self.margin = margin

    def forward(self, embedding: Tensor, labels: Tensor | None = None) -> Tensor:
        cos = self.cosine(embedding)
        if labels is None or self.margin == 0.0:
            return self.scale * cos
        cos_y = cos.gather(1, labels[:, None]).clamp(-1 + 1e-7, 1 - 1e-7)
        theta = torch.acos(cos_y)
        # past theta > pi - m, cos(theta + m) stops being monotonic: use the ArcFace fallback
        target = torch.where(
            theta + self.margin < math.pi,
            torch.cos(theta + self.margin),
            cos_y - self.margin * math.sin(self.margin),
        )
        return self.scale * cos.scatter(1, labels[:, None], target)


class ProjectionHead(nn.Module):
    """Trainable map from the frozen teacher's embedding to the student's embedding space.

    ``hidden_dim=None`` gives one linear layer; otherwise Linear-BN-ReLU-Linear.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int | None = None) -> None:
        super().__init__()
        if hidden_dim is None:
            self.net: nn.Module = nn.Linear(in_dim, out_dim)
        else:
            self.net = nn.Sequential(
                nn.Linear(in_dim, hidden_dim),
                nn.BatchNorm1d(hidden_dim),
                nn.ReLU(inplace=True),
                nn.Linear(hidden_dim, out_dim),
            )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
