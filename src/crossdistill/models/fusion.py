"""Late-fusion encoder over two modalities packed into one tensor (an image + audio teacher).

The input is ``[B, prod(image_shape) + prod(audio_shape)]``: the flattened image followed by
the flattened audio features (as :mod:`crossdistill.data.datamodules.avmnist` packs them).
Each part goes through its own :class:`~crossdistill.models.cnn.SmallCNN` branch; the two
branch embeddings are concatenated. Feature taps (``distill.features``):
``encoder.image.blocks.<i>`` / ``encoder.audio.blocks.<i>`` (branch maps) and
``encoder.fused`` (the concatenation ``[B, 2 * branch_dim]``: image channels first);
``crossdistill-diagnose layer=fused`` (a path inside the encoder) ranks those channels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from crossdistill.models.cnn import SmallCNN


class FusionEncoder(nn.Module):
    """Two SmallCNN branches + concatenation (+ optional linear embedding).

    Args:
        image_shape: ``[C, H, W]`` of the image part (wired from the data).
        audio_shape: ``[1, n_mels, frames]`` (2-D branch) or ``[n_mels, frames]`` (1-D).
        image_branch, audio_branch: :class:`SmallCNN` keyword arguments of each branch
            (``channels``, ``embedding_dim``, ...; ``in_channels`` / ``dims`` come from the
            shapes).
        embedding_dim: a linear layer on the concatenation; ``None`` = the concatenation.
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        audio_shape: Sequence[int],
        image_branch: Mapping[str, Any] | None = None,
        audio_branch: Mapping[str, Any] | None = None,
        embedding_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.image_shape = tuple(int(s) for s in image_shape)
        self.audio_shape = tuple(int(s) for s in audio_shape)
        if len(self.image_shape) != 3 or len(self.audio_shape) not in (2, 3):
            raise ValueError(
                f"FusionEncoder needs image_shape [C, H, W] and audio_shape [C, F, T] or "
                f"[F, T], got {list(self.image_shape)} and {list(self.audio_shape)}"
            )
        self.image_size = math.prod(self.image_shape)
        self.audio_size = math.prod(self.audio_shape)
        self.image = SmallCNN(in_channels=self.image_shape[0], dims=2, **dict(image_branch or {}))
        self.audio = SmallCNN(
            in_channels=self.audio_shape[0],
            dims=len(self.audio_shape) - 1,
            **dict(audio_branch or {}),
        )
        self.fused = nn.Identity()
        fused_dim = self.image.embedding_dim + self.audio.embedding_dim
        if embedding_dim is None:
            self.embedding = nn.Identity()
            self.embedding_dim = fused_dim
        else:
            self.embedding = nn.Linear(fused_dim, int(embedding_dim))
            self.embedding_dim = int(embedding_dim)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 2 or x.shape[1] != self.image_size + self.audio_size:
            raise ValueError(
                f"FusionEncoder expects [B, {self.image_size} + {self.audio_size}] (flattened "
                f"image {list(self.image_shape)} then audio {list(self.audio_shape)}), got "
                f"{list(x.shape)}"
            )
        image = x[:, : self.image_size].reshape(-1, *self.image_shape)
        audio = x[:, self.image_size :].reshape(-1, *self.audio_shape)
        fused = self.fused(torch.cat((self.image(image), self.audio(audio)), dim=1))
        return self.embedding(fused)
