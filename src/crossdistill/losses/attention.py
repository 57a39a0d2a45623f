"""Map-to-map transfer terms on pairs of tapped feature maps: attention transfer (AT) and
neural selectivity transfer (NST).

Both read pairs of maps ``[B, C, T]`` (speech, sequences) or ``[B, C, H, W]`` (images)
named in ``distill.features`` (docs/architecture.md, "Tapping features"). The numbers of
channels may differ; the positions are matched by :func:`match_positions`: when the two
maps have different position grids, the one with more positions is average-pooled
(adaptive, 1-D or 2-D) to the other's grid. A ``[B, C, T]`` map and a ``[B, C, H, W]`` map
have no common grid; ``flatten_positions=True`` compares them as flattened (row-major)
position sequences, pooled 1-D.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from crossdistill.losses import functional
from crossdistill.losses.base import LossInputs, LossTerm, register_loss
from crossdistill.losses.pairs import parse_feature_pairs

_LAYOUTS = {3: "[B, C, T]", 4: "[B, C, H, W]"}


def _adaptive_pool(x: Tensor, size: tuple[int, ...]) -> Tensor:
    if len(size) == 1:
        return F.adaptive_avg_pool1d(x, size)
    return F.adaptive_avg_pool2d(x, size)


def check_map_pair(
    student: Tensor, teacher: Tensor, flatten_positions: bool, where: str, option: str
) -> None:
    """Raise one line naming ``where`` and the shapes unless the two tensors are maps
    ``[B, C, T]`` / ``[B, C, H, W]`` of one batch with a common position layout (or
    ``flatten_positions``; ``option`` is the config key that sets it)."""
    shapes = f"student {tuple(student.shape)}, teacher {tuple(teacher.shape)}"
    if student.dim() not in _LAYOUTS or teacher.dim() not in _LAYOUTS:
        raise ValueError(
            f"{where}: needs feature maps [B, C, T] or [B, C, H, W], got {shapes}; tap a "
            "module that outputs a map (before any global pooling)"
        )
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(f"{where}: the batch sizes differ ({shapes})")
    if not flatten_positions and student.dim() != teacher.dim():
        raise ValueError(
            f"{where}: student {_LAYOUTS[student.dim()]} {tuple(student.shape)} and teacher "
            f"{_LAYOUTS[teacher.dim()]} {tuple(teacher.shape)} have no common position grid; "
            f"set {option}=true to compare them as flattened position sequences"
        )


def match_positions(
    student: Tensor, teacher: Tensor, flatten_positions: bool, where: str, option: str
) -> tuple[Tensor, Tensor]:
    """The two maps ``[B, C, *positions]`` on one position grid.

    Equal grids are returned as they are. Otherwise the map with more positions (the
    teacher's on a tie) is pooled with adaptive average pooling to the other's grid.
    ``flatten_positions`` first flattens both to ``[B, C, N]``. Bad pairs raise
    (:func:`check_map_pair`).
    """
    check_map_pair(student, teacher, flatten_positions, where, option)
    if flatten_positions:
        student, teacher = student.flatten(2), teacher.flatten(2)
    s_grid, t_grid = tuple(student.shape[2:]), tuple(teacher.shape[2:])
    if s_grid == t_grid:
        return student, teacher
    if math.prod(s_grid) > math.prod(t_grid):
        return _adaptive_pool(student, t_grid), teacher
    return student, _adaptive_pool(teacher, s_grid)


class _MapPairTerm(LossTerm):
    """Pairs of tapped maps, the teacher's detached; ``_pair_loss`` gives ``[B]``."""

    requires = ("student_features", "teacher_features")

    def __init__(self, pairs: Sequence[Mapping[str, str]], flatten_positions: bool) -> None:
        super().__init__()
        self.pairs = parse_feature_pairs(pairs, f"{self.name}.pairs")
        self.flatten_positions = bool(flatten_positions)
        self.student_features = tuple(dict.fromkeys(s for s, _ in self.pairs))
        self.teacher_features = tuple(dict.fromkeys(t for _, t in self.pairs))

    def _pair_loss(self, student: Tensor, teacher: Tensor, where: str) -> Tensor:
        raise NotImplementedError  # pragma: no cover - interface

    def forward(self, inputs: LossInputs) -> Tensor:
        total: Tensor | None = None
        for k, (s_name, t_name) in enumerate(self.pairs):
            where = f"{self.name} pair {k} (student {s_name!r}, teacher {t_name!r})"
            value = self._pair_loss(
                inputs.student_features[s_name], inputs.teacher_features[t_name].detach(), where
            )
            total = value if total is None else total + value
        return total


@register_loss("at")
class AttentionTransferTerm(_MapPairTerm):
    """Attention transfer (Zagoruyko & Komodakis, ICLR 2017) over pairs of tapped maps.

    ``a(F) = normalize_L2(flatten(mean_c |F|^p))`` (a spatial attention map, one value per
    position) and ``l_i = sum_k mean_positions (a(S_k)_i - a(T_k)_i)^2`` over the pairs
    ``k`` of a student map ``S_k`` and a frozen-teacher map ``T_k``. This is the authors'
    code (and torchdistill's / RepDistiller's ``mode='code'``): the paper's Eq. 2 writes the
    unsquared L2 norm of the difference; the authors train with
    ``beta / 2 * sum_k mean_{batch, positions}(...)^2``, ``beta = 1000``, which is this
    term (batch-averaged by the composer) with weight 500 (``conf/distill/at.yaml``).

    Ours differs in the position matching: attention maps of different grids (cross-modal
    or different depths) are matched by average-pooling the larger ``mean_c |F|^p`` map
    to the smaller one's grid before normalising (RepDistiller pools the feature maps,
    assuming square images); see :func:`match_positions`.

    Args:
        pairs: ``[{student: <name>, teacher: <name>}, ...]``, names of
            ``distill.features.student`` / ``.teacher``.
        p: exponent of ``|F|`` (2 in the paper).
        flatten_positions: compare a ``[B, C, T]`` map with a ``[B, C, H, W]`` map as
            flattened (row-major) position sequences; otherwise such a pair is an error.
        eps: floor of the norm in ``normalize_L2``.

    Degenerate inputs: an all-zero (or tiny) map has an attention map of norm below
    ``eps``, which is divided by ``eps`` instead (-> ~0, no direction): finite loss,
    gradients of at most ``~1 / eps`` times the map's scale. A single position normalises
    to 1 on both sides (loss 0).
    """

    def __init__(
        self,
        pairs: Sequence[Mapping[str, str]],
        p: float = 2.0,
        flatten_positions: bool = False,
        eps: float = functional.NORM_EPS,
    ) -> None:
        super().__init__(pairs, flatten_positions)
        if p <= 0:
            raise ValueError(f"at.p must be > 0, got {p}")
        self.p = float(p)
        self.eps = eps

    def _pair_loss(self, student: Tensor, teacher: Tensor, where: str) -> Tensor:
        option = f"{self.name}.flatten_positions"
        check_map_pair(student, teacher, self.flatten_positions, where, option)
        s_att = student.abs().pow(self.p).mean(1, keepdim=True)  # [B, 1, *positions]
        t_att = teacher.abs().pow(self.p).mean(1, keepdim=True)
        s_att, t_att = match_positions(s_att, t_att, self.flatten_positions, where, option)
        s_att = functional.normalize(s_att.flatten(1), self.eps)
        t_att = functional.normalize(t_att.flatten(1), self.eps)
        return (s_att - t_att).pow(2).mean(1)


def _poly_kernel_mean(a: Tensor, b: Tensor) -> Tensor:
    """``mean_{i, j} (a_i . b_j)^2`` per sample for ``a [B, Ca, N]``, ``b [B, Cb, N]``."""
    return torch.bmm(a, b.transpose(1, 2)).pow(2).flatten(1).mean(1)


@register_loss("nst")
class NeuronSelectivityTransferTerm(_MapPairTerm):
    """Neuron selectivity transfer (Huang & Wang, 2017: "Like What You Like") over pairs
    of tapped maps.

    Each channel's activations over the positions, L2-normalised, is one sample ``f^i`` of
    a distribution per map; NST matches the student's and the teacher's distributions by
    the squared MMD with the polynomial kernel ``k(x, y) = (x . y)^2``:
    ``l = mean_{i,i'} k(s^i, s^i') + mean_{j,j'} k(t^j, t^j') - 2 mean_{i,j} k(s^i, t^j)``
    per sample, summed over the pairs. The channel counts may differ (they index the two
    sets); the positions are matched as for ``at`` (the larger map is average-pooled to the
    smaller one's grid, :func:`match_positions`).

    Paper: ``L = CE + lambda / 2 * L_MMD^2`` with a kernel-dependent ``lambda``; this is
    RepDistiller's form (the full MMD, batch-averaged), used there with weight 50
    (``conf/distill/nst.yaml``). The teacher-teacher part is a constant (frozen teacher)
    kept so that the value is the MMD itself (0 for equal distributions).

    Args:
        pairs: ``[{student: <name>, teacher: <name>}, ...]`` (as for ``at``).
        flatten_positions: as for ``at``.
        eps: floor of the channel norms.

    Degenerate inputs: an all-zero or tiny channel normalises to ~0 (kernel values 0 with
    it); gradients are at most ``~1 / eps`` times the map's scale.
    """

    def __init__(
        self,
        pairs: Sequence[Mapping[str, str]],
        flatten_positions: bool = False,
        eps: float = functional.NORM_EPS,
    ) -> None:
        super().__init__(pairs, flatten_positions)
        self.eps = eps

    def _pair_loss(self, student: Tensor, teacher: Tensor, where: str) -> Tensor:
        option = f"{self.name}.flatten_positions"
        student, teacher = match_positions(student, teacher, self.flatten_positions, where, option)
        s = functional.normalize(student.flatten(2), self.eps)  # [B, C_s, N]
        t = functional.normalize(teacher.flatten(2), self.eps)  # [B, C_t, N]
        return _poly_kernel_mean(s, s) + _poly_kernel_mean(t, t) - 2 * _poly_kernel_mean(s, t)
