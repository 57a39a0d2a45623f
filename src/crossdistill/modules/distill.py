"""Distillation: a frozen teacher, an optional trainable projection head and a student."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from crossdistill.cache import TeacherFeatureCache
from crossdistill.losses import LossComposer, LossInputs
from crossdistill.modules.supervised import OptimizerFactory, SchedulerFactory, StudentModule

TEACHER_FIELDS = {
    "teacher_logits",
    "teacher_embedding",
    "teacher_raw_embedding",
    "teacher_shared_logits",
    "teacher_feature_map",
}


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode and no gradients, for good."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


class DistillModule(StudentModule):
    """Student trained with configured loss terms against a frozen teacher.

    The teacher (a :class:`TeacherModule`'s encoder and classifier) stays in eval mode
    whatever ``train()`` is called with and never receives gradients. Only the fields
    that the configured terms read are computed.

    ``teacher_cache``: a built :class:`TeacherFeatureCache` of the teacher embeddings of
    the *training* set (row = ``batch["index"]``); training steps then read the embedding
    from it instead of running the teacher (valid only when the teacher input is a function
    of the index; eval still runs the teacher).
    """

    def __init__(
        self,
        encoder: nn.Module,
        classifier: nn.Module,
        num_classes: int,
        optimizer: OptimizerFactory,
        teacher_encoder: nn.Module,
        teacher_classifier: nn.Module,
        loss: LossComposer,
        projection: nn.Module | None = None,
        quality: nn.Module | None = None,
        scheduler: SchedulerFactory | None = None,
        top_k: int = 1,
        evaluator: nn.Module | None = None,
        teacher_cache: TeacherFeatureCache | None = None,
    ) -> None:
        super().__init__(
            encoder, classifier, num_classes, optimizer, scheduler, loss, top_k, evaluator
        )
        self.teacher_encoder = freeze(teacher_encoder)
        self.teacher_classifier = freeze(teacher_classifier)
        self.projection = projection
        self.quality = quality
        self.teacher_cache = teacher_cache
        needed = self.loss.required_fields
        if teacher_cache is not None and "teacher_feature_map" in needed:
            raise ValueError(
                "teacher.cache_features stores embeddings only; the configured "
                "terms need teacher_feature_map: disable the cache"
            )
        if "teacher_embedding" in needed and projection is None:
            t_dim = getattr(teacher_encoder, "embedding_dim", None)
            s_dim = getattr(encoder, "embedding_dim", None)
            if t_dim is not None and s_dim is not None and t_dim != s_dim:
                raise ValueError(
                    f"teacher embedding has {t_dim} dims and the student's {s_dim}: "
                    "choose a projection head (projection=linear or projection=mlp)"
                )

    def train(self, mode: bool = True) -> DistillModule:
        super().train(mode)
        self.teacher_encoder.eval()
        self.teacher_classifier.eval()
        return self

    def teacher_forward(
        self, x_a: Tensor, with_features: bool = False, index: Tensor | None = None
    ):
        """Frozen teacher embedding (and feature map) for ``x_a``; read from the cache in
        training steps when one is set (``index`` = training-set indices)."""
        if (
            self.teacher_cache is not None
            and self.training
            and index is not None
            and not with_features
        ):
            return self.teacher_cache.lookup(index, device=x_a.device).to(x_a.dtype), None
        with torch.no_grad():
            if with_features:
                return self.teacher_encoder.forward_with_features(x_a)
            return self.teacher_encoder(x_a), None

    def teacher_logits(self, x_a: Tensor) -> Tensor:
        with torch.no_grad():
            return self.teacher_classifier(self.teacher_encoder(x_a))

    def loss_inputs(self, batch: dict[str, Tensor]) -> LossInputs:
        needed = self.loss.required_fields
        labels = batch["label"]
        if "student_feature_map" in needed:
            s_emb, s_map = self.encoder.forward_with_features(batch["student_input"])
        else:
            s_emb, s_map = self.encoder(batch["student_input"]), None
        inputs = LossInputs(
            labels=labels,
            student_logits=self.classifier(s_emb, labels),
            student_embedding=s_emb,
            student_feature_map=s_map,
        )
        if "student_plain_logits" in needed:  # margin-free, comparable with the teacher's
            inputs.student_plain_logits = self.classifier(s_emb)
        if needed & TEACHER_FIELDS or self.quality is not None:
            with_map = "teacher_feature_map" in needed
            t_emb, t_map = self.teacher_forward(
                batch["teacher_input"], with_map, batch.get("index")
            )
            inputs.teacher_raw_embedding = t_emb
            inputs.teacher_feature_map = t_map
            if "teacher_logits" in needed:
                with torch.no_grad():
                    inputs.teacher_logits = self.teacher_classifier(t_emb)
            projected = self.projection(t_emb) if self.projection is not None else t_emb
            inputs.teacher_embedding = projected
            if "teacher_shared_logits" in needed:
                inputs.teacher_shared_logits = self.classifier(projected, labels)
        if self.quality is not None:
            inputs.sample_weights = self.quality(batch, inputs)
        return inputs
