"""Loss-term interface and registry.

A loss term is a small ``nn.Module`` registered by name. It declares which fields of
:class:`LossInputs` it reads; the distillation module computes only what the configured
terms need, and the composer checks that every required field is present.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import ClassVar

import torch
from torch import Tensor, nn

_LOW_PRECISION = (torch.float16, torch.bfloat16)


@dataclass
class LossInputs:
    """What one training step hands to the loss terms (``B`` = batch size)."""

    labels: Tensor  # [B] integer class labels
    student_logits: Tensor | None = None  # [B, C] training logits (a margin head's margin on)
    student_plain_logits: Tensor | None = None  # [B, C] margin-free, as the teacher's logits
    student_embedding: Tensor | None = None  # [B, D] student embedding s
    teacher_logits: Tensor | None = None  # [B, C] the frozen teacher's own classifier
    teacher_embedding: Tensor | None = None  # [B, D] projected teacher embedding P(t)
    teacher_raw_embedding: Tensor | None = None  # [B, D_t] teacher embedding before P
    teacher_shared_logits: Tensor | None = None  # [B, C] student classifier applied to P(t)
    student_feature_map: Tensor | None = None  # [B, C, ...] an intermediate student map
    teacher_feature_map: Tensor | None = None  # [B, C, ...] an intermediate teacher map
    sample_weights: Tensor | None = None  # [B] per-sample quality weights

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def float32(self) -> LossInputs:
        """These inputs with every float16/bfloat16 tensor upcast to float32."""
        low = {
            name: value.float()
            for name in self.field_names()
            if isinstance(value := getattr(self, name), Tensor) and value.dtype in _LOW_PRECISION
        }
        return replace(self, **low) if low else self


class LossTerm(nn.Module):
    """Base class: ``forward`` returns a per-sample loss ``[B]`` or, if
    ``per_sample = False``, a scalar (relational terms over the whole batch).

    Terms compute in float32: calling a term upcasts half/bf16 inputs and turns autocast
    off (under ``precision=bf16-mixed`` a cosine ``1 - cos`` or an RKD angle in bf16 keeps
    2-3 significant digits); gradients flow back to the inputs in their own dtype.
    """

    name: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]] = ()
    per_sample: ClassVar[bool] = True
    #: distillation terms are scaled by quality weights; the supervised CE is not.
    uses_sample_weights: ClassVar[bool] = True

    def __call__(self, inputs: LossInputs) -> Tensor:
        with torch.autocast(inputs.labels.device.type, enabled=False):
            return super().__call__(inputs.float32())

    def forward(self, inputs: LossInputs) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError


LOSS_TERMS: dict[str, type[LossTerm]] = {}


def register_loss(name: str):
    """Class decorator: make a :class:`LossTerm` available to configs under ``name``."""

    def wrap(cls: type[LossTerm]) -> type[LossTerm]:
        if name in LOSS_TERMS:
            raise KeyError(f"loss term {name!r} is registered twice")
        cls.name = name
        LOSS_TERMS[name] = cls
        return cls

    return wrap


def build_loss_term(name: str, **params) -> LossTerm:
    """Instantiate a registered term; unknown names and parameters fail loudly."""
    if name not in LOSS_TERMS:
        raise KeyError(f"unknown loss term {name!r}; registered terms: {sorted(LOSS_TERMS)}")
    cls = LOSS_TERMS[name]
    try:
        return cls(**params)
    except TypeError as err:
        raise TypeError(f"bad parameters for loss term {name!r} ({cls.__name__}): {err}") from err
