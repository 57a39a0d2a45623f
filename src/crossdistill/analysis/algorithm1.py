"""MFH Algorithm 1: find the teacher's modality-general decisive channels by permutation.

For each channel ``j`` of the teacher's input (or of a feature layer), permute it across
samples and measure how far the teacher's logits move away from the student's logits on
the intact paired input: ``score_j = mean_m MSE(T(x_a with column j permuted), S(x_b))``,
min-max normalised to [0, 1]. Channels the student also relies on score high.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

TeacherFn = Callable[[Tensor], Tensor]


def _minmax(scores: Tensor) -> Tensor:
    lo = scores.min(-1, keepdim=True).values
    hi = scores.max(-1, keepdim=True).values
    return (scores - lo) / (hi - lo).clamp_min(1e-12)


@torch.no_grad()
def permutation_scores(
    teacher_fn: TeacherFn,
    features: Tensor,
    student_logits: Tensor,
    n_repeats: int = 100,
    generator: torch.Generator | None = None,
    vectorize: bool = False,
    normalize: bool = True,
    event_dims: int = 0,
) -> Tensor:
    """Algorithm-1 scores ``[..., D]`` for ``features [..., N, D, *event]``.

    ``teacher_fn`` maps features to teacher logits ``[..., N, C]``; ``student_logits
    [..., N, C]`` are fixed. ``event_dims`` trailing dims (e.g. H, W of an image channel)
    move together with their channel. With ``vectorize=True`` (vectors only) all ``D``
    permuted copies go through ``teacher_fn`` at once as ``[..., D, N, D]``.
    """
    if n_repeats < 1:
        raise ValueError(f"n_repeats must be >= 1, got {n_repeats}")
    if vectorize and event_dims:
        raise ValueError("vectorize=True needs vector features (event_dims=0)")
    shape = features.shape
    lead = shape[: features.ndim - 2 - event_dims]
    n, d = shape[len(lead)], shape[len(lead) + 1]
    if student_logits.shape[-2] != n:
        raise ValueError(
            f"teacher features have {n} samples but student logits {student_logits.shape[-2]}"
        )
    flat = features.reshape(*lead, n, d, -1)  # [..., N, D, R]
    cols = flat.transpose(-2, -3)  # [..., D, N, R]
    scores = torch.zeros(lead + (d,), dtype=torch.float64)
    for _ in range(n_repeats):
        perms = torch.stack([torch.randperm(n, generator=generator) for _ in range(d)])
        index = perms[..., None].expand(cols.shape)
        permuted = torch.gather(cols, -2, index)  # [..., D, N, R]: channel j, rows permuted
        if vectorize:
            x = features.unsqueeze(-3).expand(*lead, d, n, d).clone()
            x.diagonal(dim1=-3, dim2=-1).copy_(permuted[..., 0].transpose(-1, -2))
            mse = (teacher_fn(x) - student_logits.unsqueeze(-3)).pow(2).mean((-1, -2))
            scores += mse.double()
            continue
        for j in range(d):
            x = flat.clone()
            x[..., :, j, :] = permuted[..., j, :, :]
            mse = (teacher_fn(x.reshape(shape)) - student_logits).pow(2).mean((-1, -2))
            scores[..., j] += mse.double()
    scores /= n_repeats
    return _minmax(scores) if normalize else scores


def top_channels(scores: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` highest-scoring channels (``[..., k]``), best first."""
    if not 1 <= k <= scores.shape[-1]:
        raise ValueError(f"k must be in 1..{scores.shape[-1]}, got {k}")
    return scores.argsort(dim=-1, descending=True)[..., :k]


def recovery_rate(selected: Tensor, true_channels: Tensor | list[int]) -> float:
    """Fraction of ``selected`` channels that are truly shared (the paper's overlap-tag acc)."""
    true = set(int(c) for c in true_channels)
    return sum(int(c) in true for c in selected.flatten()) / max(selected.numel(), 1)
