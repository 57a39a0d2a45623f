"""A small configurable CNN encoder (images with ``dims=2``, signals / spectrogram frames
with ``dims=1``).

``blocks.<i>`` is ``[conv-BN-ReLU] * convs_per_block`` + pooling (halves the resolution),
one block per entry of ``channels``; then global average pooling and an embedding layer.
Feature maps are tapped as ``encoder.blocks.<i>`` (``[B, C_i, H / 2^(i+1), W / 2^(i+1)]``;
``[B, C_i, T / 2^(i+1)]`` for ``dims=1``). With ``channels=[6, 16]``, ``pool=max`` it is a
LeNet-style net.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

POOLS = ("max", "avg", "none")


class SmallCNN(nn.Module):
    """Conv blocks + global pooling + embedding: ``forward(x [B, C, (H,) W]) -> [B, D]``.

    Args:
        in_channels: input channels (1 = grey / radar / audio, 3 = RGB).
        channels: output channels of each block (``blocks.0``, ``blocks.1``, ...).
        embedding_dim: size of the embedding layer; ``None`` = no layer (``channels[-1]``).
        dims: 2 (images ``[B, C, H, W]``) or 1 (signals ``[B, C, T]``).
        kernel_size: convolution kernel size.
        convs_per_block: conv-BN-ReLU units per block.
        pool: pooling at the end of each block (``max`` | ``avg`` | ``none``).
        dropout: dropout before the embedding layer.
    """

    def __init__(
        self,
        in_channels: int = 3,
        channels: Sequence[int] = (16, 32, 64),
        embedding_dim: int | None = 64,
        dims: int = 2,
        kernel_size: int = 3,
        convs_per_block: int = 1,
        pool: str = "max",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if dims not in (1, 2):
            raise ValueError(f"dims must be 1 (signals) or 2 (images), got {dims}")
        if pool not in POOLS:
            raise ValueError(f"pool={pool!r} is not valid; use one of {list(POOLS)}")
        if not channels or min(channels) < 1:
            raise ValueError(f"channels must be a non-empty list of positive ints, got {channels}")
        conv = nn.Conv1d if dims == 1 else nn.Conv2d
        norm = nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d
        pooling = {
            "max": nn.MaxPool1d if dims == 1 else nn.MaxPool2d,
            "avg": nn.AvgPool1d if dims == 1 else nn.AvgPool2d,
        }
        self.in_channels = int(in_channels)
        self.dims = dims
        blocks = []
        previous = self.in_channels
        for width in channels:
            layers: list[nn.Module] = []
            for _ in range(convs_per_block):
                layers += [
                    conv(previous, width, kernel_size, padding=kernel_size // 2, bias=False),
                    norm(width),
                    nn.ReLU(inplace=True),
                ]
                previous = width
            if pool != "none":
                layers.append(pooling[pool](2, ceil_mode=True))
            blocks.append(nn.Sequential(*layers))
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool1d(1) if dims == 1 else nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        if embedding_dim is None:
            self.embedding = nn.Identity()
            self.embedding_dim = int(channels[-1])
        else:
            self.embedding = nn.Linear(int(channels[-1]), int(embedding_dim))
            self.embedding_dim = int(embedding_dim)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == self.dims + 1 and self.in_channels == 1:  # [B, (H,) W]: add the channel
            x = x.unsqueeze(1)
        if x.dim() != self.dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"SmallCNN(dims={self.dims}, in_channels={self.in_channels}) expects input "
                f"[B, {self.in_channels}, {'H, W' if self.dims == 2 else 'T'}], got "
                f"{list(x.shape)}"
            )
        return self.embedding(self.dropout(self.pool(self.blocks(x)).flatten(1)))
