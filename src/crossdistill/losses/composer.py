"""Weighted sum of configured loss terms, each logged under its own name.

The spec is the ``distill`` config: ``{key: {weight, type?, **params}}`` plus the reserved
key ``features: {student: {name: path}, teacher: {name: path}}`` (not a term) naming the
intermediate outputs that terms read (see 'Tapping features' in docs/architecture.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from crossdistill.losses.base import LossInputs, build_loss_term
from crossdistill.losses.functional import weighted_mean
from crossdistill.models.taps import TapSpec, parse_tap

#: reserved key of the distill config: the module paths of the named features
FEATURES_KEY = "features"
SIDES = ("student", "teacher")


class NonFiniteLossError(FloatingPointError):
    """A loss term produced NaN or infinity."""


class LossComposer(nn.Module):
    """``total = sum_k weight_k * term_k``; built from ``{key: {weight, type?, **params}}``.

    The key is the registered term name unless ``type`` names it (so one term type can
    appear twice, e.g. two KD temperatures). Terms with weight 0 are not computed.
    ``features`` (reserved) maps feature names to module paths per side; only the names a
    term reads are kept, in :attr:`feature_taps`.
    """

    def __init__(self, spec: Mapping[str, Mapping[str, Any]]) -> None:
        super().__init__()
        spec = dict(spec)
        declared = _declared_features(spec.pop(FEATURES_KEY, None))
        self.terms = nn.ModuleDict()
        self.weights: dict[str, float] = {}
        for key, raw in spec.items():
            params = dict(raw or {})
            weight = float(params.pop("weight", 1.0))
            term_type = params.pop("type", key)
            if not math.isfinite(weight):
                raise ValueError(f"distill.{key}.weight must be finite, got {weight}")
            if weight == 0.0:
                continue
            self.terms[key] = build_loss_term(term_type, **params)
            self.weights[key] = weight
        if not self.terms:
            raise ValueError("the loss has no term with a non-zero weight (check `distill`)")
        #: ``{side: {name: TapSpec}}`` of the features the terms read
        self.feature_taps: dict[str, dict[str, TapSpec]] = {side: {} for side in SIDES}
        for key, term in self.terms.items():
            for side in SIDES:
                for name in getattr(term, f"{side}_features"):
                    if name not in declared[side]:
                        raise ValueError(
                            f"loss term {key!r} reads {side} feature {name!r}, which "
                            f"distill.{FEATURES_KEY}.{side} does not define (defined: "
                            f"{sorted(declared[side])}); add "
                            f"distill.{FEATURES_KEY}.{side}.{name}=<module path>"
                        )
                    self.feature_taps[side][name] = parse_tap(
                        name, declared[side][name], f"distill.{FEATURES_KEY}.{side}"
                    )

    @property
    def required_fields(self) -> set[str]:
        """``LossInputs`` fields the terms read (``<side>_features`` when a term reads a
        named feature of that side)."""
        fields = {f for term in self.terms.values() for f in term.requires}
        fields |= {f"{side}_features" for side in SIDES if self.feature_taps[side]}
        return fields

    @property
    def needs_feature_shapes(self) -> bool:
        return any(term.needs_feature_shapes for term in self.terms.values())

    def bind_feature_shapes(
        self, student: Mapping[str, tuple[int, ...]], teacher: Mapping[str, tuple[int, ...]]
    ) -> None:
        """Hand the feature shapes of one dry forward to the terms (they build connectors)."""
        for term in self.terms.values():
            term.bind_feature_shapes(student, teacher)

    def forward(self, inputs: LossInputs) -> tuple[Tensor, dict[str, Tensor]]:
        parts: dict[str, Tensor] = {}
        total: Tensor | None = None
        for key, term in self.terms.items():
            missing = [f for f in term.requires if getattr(inputs, f) is None]
            for side in SIDES:
                recorded = getattr(inputs, f"{side}_features")
                missing += [
                    f"{side}_features[{name!r}]"
                    for name in getattr(term, f"{side}_features")
                    if name not in recorded
                ]
            if missing:
                raise ValueError(f"loss term {key!r} needs {missing}, which this step lacks")
            value = term(inputs)
            if term.per_sample:
                weights = inputs.sample_weights if term.uses_sample_weights else None
                value = weighted_mean(value, weights)
            if not torch.isfinite(value).all():
                raise NonFiniteLossError(
                    f"loss term {key!r} is {value.item() if value.numel() == 1 else value}; "
                    "stopping (lower the learning rate or check the inputs)"
                )
            parts[key] = value.detach()
            weighted = self.weights[key] * value
            total = weighted if total is None else total + weighted
        parts["total"] = total.detach()
        return total, parts


def _declared_features(node: Any) -> dict[str, Mapping[str, Any]]:
    """``distill.features`` as ``{side: {name: spec}}``; unknown sides fail."""
    node = node or {}
    where = f"distill.{FEATURES_KEY}"
    if not isinstance(node, Mapping) or set(node) - set(SIDES):
        raise ValueError(f"{where} must map {list(SIDES)} to {{name: module path}}, got {node!r}")
    declared = {}
    for side in SIDES:
        names = node.get(side) or {}
        if not isinstance(names, Mapping):
            raise ValueError(f"{where}.{side} must map names to module paths, got {names!r}")
        declared[side] = dict(names)
    return declared
