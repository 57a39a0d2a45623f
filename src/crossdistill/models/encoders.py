"""Small generic encoders. An encoder maps an input batch to an embedding ``[B, D]`` and
exposes ``embedding_dim``; modality-specific encoders (timm, speechbrain, text) live in
their own modules and follow the same contract."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


class IdentityEncoder(nn.Module):
    """The input vector is the embedding (a linear model = this + a linear classifier)."""

    def __init__(self, input_dim: int) -> None:
        super().__init__()
        self.embedding_dim = input_dim

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1)


class MLPEncoder(nn.Module):
    """Feed-forward encoder ``[Linear-ReLU] * len(hidden_dims)`` for vector inputs."""

    def __init__(self, input_dim: int, hidden_dims: Sequence[int] = (64,), dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = []
        prev = input_dim
        for width in hidden_dims:
            layers += [nn.Linear(prev, width), nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            prev = width
        self.net = nn.Sequential(*layers)
        self.embedding_dim = prev

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1))
