"""Multi-layer FitNets hints between tapped student and teacher features."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from crossdistill.losses.base import LossInputs, LossTerm, register_loss
from crossdistill.losses.pairs import parse_feature_pairs
from crossdistill.models.connectors import build_connector


@register_loss("feature_hint")
class FeatureHintTerm(LossTerm):
    """FitNets hints (Romero et al., 2015) on any number of feature pairs.

    ``l_i = sum_k mean_e (C_k(S_k)_i - T_k,i)^2`` over the pairs ``k`` of a student feature
    ``S_k`` and a teacher feature ``T_k`` (names of ``distill.features.student`` /
    ``.teacher``); ``mean_e`` averages the elements of one sample. ``C_k`` is a trainable
    connector built from the two shapes when the module is built
    (:func:`crossdistill.models.connectors.build_connector`: identity, 1x1 conv or linear).
    The teacher features come from the frozen teacher (no gradient).

    Args:
        pairs: ``[{student: <name>, teacher: <name>}, ...]``.
        pool: average each map over its positions first (``[B, C, ...] -> [B, C]``), so
            maps of different resolutions or modalities are compared by a linear connector.

    Degenerate inputs: the gradient is ``2 (C(S) - T) / n_elements`` times the connector
    weights, bounded by the inputs.
    """

    requires = ("student_features", "teacher_features")
    needs_feature_shapes = True

    def __init__(self, pairs: Sequence[Mapping[str, str]], pool: bool = False) -> None:
        super().__init__()
        self.pairs = parse_feature_pairs(pairs, "feature_hint.pairs")
        self.pool = bool(pool)
        self.student_features = tuple(dict.fromkeys(s for s, _ in self.pairs))
        self.teacher_features = tuple(dict.fromkeys(t for _, t in self.pairs))
        self.connectors = nn.ModuleList()

    def _prepare(self, x: Tensor) -> Tensor:
        return x.flatten(2).mean(2) if self.pool and x.dim() > 2 else x

    def bind_feature_shapes(
        self, student: Mapping[str, tuple[int, ...]], teacher: Mapping[str, tuple[int, ...]]
    ) -> None:
        if len(self.connectors):
            return
        for k, (s_name, t_name) in enumerate(self.pairs):
            s_shape, t_shape = tuple(student[s_name]), tuple(teacher[t_name])
            if self.pool:
                s_shape, t_shape = s_shape[:2], t_shape[:2]
            where = f"feature_hint pair {k} (student {s_name!r}, teacher {t_name!r})"
            self.connectors.append(build_connector(s_shape, t_shape, where))

    def forward(self, inputs: LossInputs) -> Tensor:
        if len(self.connectors) != len(self.pairs):
            raise RuntimeError(
                "feature_hint has no connectors yet: bind_feature_shapes() must run first "
                "(DistillModule does it when it is built)"
            )
        total: Tensor | None = None
        for connector, (s_name, t_name) in zip(self.connectors, self.pairs, strict=True):
            s = connector(self._prepare(inputs.student_features[s_name]))
            t = self._prepare(inputs.teacher_features[t_name]).detach()
            if s.shape != t.shape:
                raise ValueError(
                    f"feature_hint: student {s_name!r} after its connector has shape "
                    f"{tuple(s.shape)}, teacher {t_name!r} {tuple(t.shape)}; the shapes "
                    "changed since the module was built"
                )
            value = (s - t).pow(2).flatten(1).mean(1)
            total = value if total is None else total + value
        return total
