"""Trainable connectors mapping a student feature to the shape of a teacher feature.

One connector per compared pair, chosen from the two shapes (batch axis excluded):
identity when they match, a 1x1 convolution for maps ``[B, C, H, W]`` / ``[B, C, T]`` of
equal positions, a linear layer for vectors ``[B, D]``. Other mismatches (different
positions or ranks) fail with the two shapes; pool the maps first
(``feature_hint.pool: true``) to compare across modalities.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

__all__ = ["build_connector"]


def build_connector(
    student_shape: Sequence[int], teacher_shape: Sequence[int], where: str = "connector"
) -> nn.Module:
    """Connector from a student feature of shape ``[B, *student_shape[1:]]`` to the
    teacher's ``[B, *teacher_shape[1:]]`` (see module doc)."""
    s, t = tuple(student_shape[1:]), tuple(teacher_shape[1:])
    if s == t:
        return nn.Identity()
    if len(s) == len(t) == 1:
        return nn.Linear(s[0], t[0])
    if len(s) == len(t) and len(s) in (2, 3) and s[1:] == t[1:]:
        conv = nn.Conv1d if len(s) == 2 else nn.Conv2d
        return conv(s[0], t[0], kernel_size=1)
    raise ValueError(
        f"{where}: no connector from student shape [B, {', '.join(map(str, s))}] to teacher "
        f"shape [B, {', '.join(map(str, t))}]: a 1x1 conv needs equal positions and rank, a "
        "linear layer vectors; tap layers of equal resolution or set pool: true"
    )
