"""Loss-term interface and registry.

A loss term is a small ``nn.Module`` registered by name. It declares which fields of
:class:`LossInputs` it reads (``requires``) and which named intermediate features
(``student_features`` / ``teacher_features``; the module paths they tap are set by the
distill config's ``features`` key); the distillation module computes only what the
configured terms need, and the composer checks that every required field is present.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
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
    #: named intermediate student outputs (``distill.features.student``), e.g. [B, C, H, W]
    student_features: dict[str, Tensor] = field(default_factory=dict)
    #: named intermediate outputs of the frozen teacher (``distill.features.teacher``)
    teacher_features: dict[str, Tensor] = field(default_factory=dict)
    sample_weights: Tensor | None = None  # [B] per-sample quality weights
    indices: Tensor | None = None  # [B] int64 positions in the training set (batch["index"])

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def float32(self) -> LossInputs:
        """These inputs with every float16/bfloat16 tensor (features included) upcast to
        float32."""
        low: dict[str, Tensor | dict[str, Tensor]] = {}
        for name in self.field_names():
            value = getattr(self, name)
            if isinstance(value, Tensor) and value.dtype in _LOW_PRECISION:
                low[name] = value.float()
            elif isinstance(value, Mapping) and any(_is_low(v) for v in value.values()):
                low[name] = {k: v.float() if _is_low(v) else v for k, v in value.items()}
        return replace(self, **low) if low else self


def _is_low(value: object) -> bool:
    return isinstance(value, Tensor) and value.dtype in _LOW_PRECISION


class LossTerm(nn.Module):
    """Base class: ``forward`` returns a per-sample loss ``[B]`` or, if
    ``per_sample = False``, a scalar (relational terms over the whole batch).

    Terms compute in float32: calling a term upcasts half/bf16 inputs and turns autocast
    off (under ``precision=bf16-mixed`` a cosine ``1 - cos`` or an RKD angle in bf16 keeps
    2-3 significant digits); gradients flow back to the inputs in their own dtype.
    """

    name: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]] = ()
    #: names of the features the term reads from ``LossInputs.student_features`` /
    #: ``teacher_features`` (set per instance from the term's parameters)
    student_features: tuple[str, ...] = ()
    teacher_features: tuple[str, ...] = ()
    #: the term builds trainable parts from the feature shapes (:meth:`bind_feature_shapes`)
    needs_feature_shapes: ClassVar[bool] = False
    #: the term builds parts from the training-set size / embedding dims (:meth:`bind_data_sizes`)
    needs_data_sizes: ClassVar[bool] = False
    per_sample: ClassVar[bool] = True
    #: distillation terms are scaled by quality weights; the supervised CE is not.
    uses_sample_weights: ClassVar[bool] = True

    def __call__(self, inputs: LossInputs) -> Tensor:
        with torch.autocast(inputs.labels.device.type, enabled=False):
            return super().__call__(inputs.float32())

    def forward(self, inputs: LossInputs) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def bind_feature_shapes(
        self, student: Mapping[str, tuple[int, ...]], teacher: Mapping[str, tuple[int, ...]]
    ) -> None:
        """Called once when the module is built, with the shapes of the features this term
        reads (from one dry forward), before the optimizer exists: build connectors here."""

    def bind_data_sizes(self, sizes: DataSizes) -> None:
        """Called once when the module is built (when ``needs_data_sizes``), with sizes only
        the data know, before the optimizer exists: build heads and buffers here."""


@dataclass(frozen=True)
class DataSizes:
    """Sizes only the data and models know, bound to terms when the module is built."""

    num_train_samples: int  # N: length of the training dataset (range of ``indices``)
    #: last dim of each embedding field: ``student_embedding``, ``teacher_embedding`` and
    #: ``teacher_raw_embedding`` (the teacher ones only when there is a teacher)
    embedding_dims: Mapping[str, int] = field(default_factory=dict)


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
