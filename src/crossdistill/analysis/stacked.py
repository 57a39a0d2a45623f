"""Many independent linear classifiers trained at once as one stacked model.

``S`` models ``Linear(d_in, C)`` become one weight ``[S, d_in, C]``; a full-batch step of
all of them is one batched matmul. Because the total loss is the *sum* of the models'
losses and SGD acts elementwise, each slice gets exactly the update it would get alone.
Models with fewer inputs are zero-padded: a zero input column gets zero gradient, so its
weight never matters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from crossdistill.losses import LossComposer, LossInputs


class StackedLinear(nn.Module):
    """``S`` independent affine maps: ``x [S, ..., N, d] -> [S, ..., N, C]``."""

    def __init__(self, weight: Tensor, bias: Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)  # [S, d, C]
        self.bias = nn.Parameter(bias)  # [S, C]

    @classmethod
    def from_linears(cls, linears: Sequence[nn.Linear], pad_to: int | None = None) -> StackedLinear:
        """Stack ``nn.Linear`` layers (their own init); zero-pad inputs up to ``pad_to``."""
        width = pad_to or max(lin.in_features for lin in linears)
        weights = []
        for lin in linears:
            w = torch.zeros(width, lin.out_features)
            w[: lin.in_features] = lin.weight.detach().T
            weights.append(w)
        bias = torch.stack([lin.bias.detach() for lin in linears])
        return cls(torch.stack(weights), bias)

    @property
    def num_models(self) -> int:
        return self.weight.shape[0]

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[1:-2]
        flat = x.reshape(x.shape[0], -1, x.shape[-1])  # [S, M, d]
        out = torch.baddbmm(self.bias[:, None, :], flat, self.weight)
        return out.reshape(x.shape[0], *lead, x.shape[-2], -1)

    def model(self, i: int) -> nn.Linear:
        """Model ``i`` as a plain ``nn.Linear`` (full padded width)."""
        lin = nn.Linear(self.weight.shape[1], self.weight.shape[2])
        with torch.no_grad():
            lin.weight.copy_(self.weight[i].T)
            lin.bias.copy_(self.bias[i])
        return lin


def accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-model accuracy ``[S]`` for logits ``[S, N, C]``."""
    return (logits.argmax(-1) == labels).float().mean(-1)


LossFn = Callable[[Tensor], Tensor]  # logits [S, N, C] -> per-model loss [S]


def composer_loss(
    composer: LossComposer, labels: Tensor, teacher_logits: Tensor | None = None
) -> LossFn:
    """A stacked loss computed by the same registered terms the Lightning modules use."""

    def loss(logits: Tensor) -> Tensor:
        total, _ = composer(
            LossInputs(
                labels=labels,
                student_logits=logits,
                student_plain_logits=logits,  # linear models: no margin
                teacher_logits=teacher_logits,
            )
        )
        return total

    return loss


def train_full_batch(
    model: StackedLinear,
    x: Tensor,
    loss_fn: LossFn,
    epochs: int = 1000,
    lr: float = 0.1,
    momentum: float = 0.0,
) -> StackedLinear:
    """Full-batch SGD of every stacked model for ``epochs`` steps."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    for _ in range(epochs):
        loss = loss_fn(model(x)).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model
