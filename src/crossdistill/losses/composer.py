"""Weighted sum of configured loss terms, each logged under its own name."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from crossdistill.losses.base import LossInputs, build_loss_term
from crossdistill.losses.functional import weighted_mean


class NonFiniteLossError(FloatingPointError):
    """A loss term produced NaN or infinity."""


class LossComposer(nn.Module):
    """``total = sum_k weight_k * term_k``; built from ``{key: {weight, type?, **params}}``.

    The key is the registered term name unless ``type`` names it (so one term type can
    appear twice, e.g. two KD temperatures). Terms with weight 0 are not computed.
    """

    def __init__(self, spec: Mapping[str, Mapping[str, Any]]) -> None:
        super().__init__()
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

    @property
    def required_fields(self) -> set[str]:
        return {f for term in self.terms.values() for f in term.requires}

    def forward(self, inputs: LossInputs) -> tuple[Tensor, dict[str, Tensor]]:
        parts: dict[str, Tensor] = {}
        total: Tensor | None = None
        for key, term in self.terms.items():
            missing = [f for f in term.requires if getattr(inputs, f) is None]
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
