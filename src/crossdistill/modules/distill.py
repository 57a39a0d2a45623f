"""Distillation: a frozen teacher, an optional trainable projection head and a student."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from pytorch_lightning.utilities.seed import isolate_rng
from torch import Tensor, nn

from crossdistill.cache import TeacherFeatureCache
from crossdistill.losses import DataSizes, LossComposer, LossInputs
from crossdistill.models.channel_mask import ChannelMask
from crossdistill.models.taps import FeatureRecorder
from crossdistill.modules.supervised import OptimizerFactory, SchedulerFactory, StudentModule

TEACHER_FIELDS = {
    "teacher_logits",
    "teacher_embedding",
    "teacher_raw_embedding",
    "teacher_shared_logits",
    "teacher_features",
}
#: what the student-only baseline (``StudentModule``) computes for the loss terms
STUDENT_MODULE_FIELDS = frozenset({"labels", "student_logits", "student_embedding"})


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode and no gradients, for good."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def tap_root(encoder: nn.Module, classifier: nn.Module) -> nn.Module:
    """The module feature paths are relative to: ``encoder.<...>`` / ``classifier.<...>``."""
    return nn.ModuleDict({"encoder": encoder, "classifier": classifier})


@contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Eval mode inside the block (no BatchNorm statistics updated), then as before."""
    modes = [(m, m.training) for module in modules for m in module.modules()]
    for module in modules:
        module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def quality_requires(quality: nn.Module | None) -> set[str]:
    """``LossInputs`` fields a quality weighter reads (it must declare ``requires``)."""
    if quality is None:
        return set()
    requires = getattr(quality, "requires", None)
    if requires is None:
        raise TypeError(
            f"quality {type(quality).__name__} must declare `requires` (the LossInputs fields "
            "it reads, e.g. crossdistill.quality.QualityWeighter)"
        )
    unknown = set(requires) - set(LossInputs.field_names())
    if unknown:
        raise ValueError(
            f"quality requires {sorted(unknown)}, not LossInputs fields {LossInputs.field_names()}"
        )
    return set(requires)


class DistillModule(StudentModule):
    """Student trained with configured loss terms against a frozen teacher.

    The teacher (a :class:`TeacherModule`'s encoder and classifier) stays in eval mode
    whatever ``train()`` is called with and never receives gradients. Only the fields that
    the configured terms and the quality weighter read (their ``requires``) are computed:
    the teacher runs only when one of them reads a teacher field. Without such a field the
    teacher may be ``None`` (a student trained with student-only terms, e.g. on tapped
    student features).

    Named intermediate features (the loss composer's ``feature_taps``) are recorded by
    forward hooks that exist only during a step's forward; paths are relative to
    :func:`tap_root` of each side (``encoder.<path>`` / ``classifier.<path>``). When a term
    builds connectors from the feature shapes, ``example_batch`` (a few training samples)
    is run once here, in eval mode and without gradients, so the connectors exist before
    the optimizer is made and are saved in checkpoints.

    ``teacher_cache``: a built :class:`TeacherFeatureCache` of the teacher embeddings of
    the *training* set (row = ``batch["index"]``); training steps then read the embedding
    from it instead of running the teacher (valid only when the teacher input is a function
    of the index; eval still runs the teacher). It holds embeddings only, so configs whose
    terms read teacher features are refused.

    ``num_train_samples``: the length of the training dataset, for terms that keep one
    row per training sample (``needs_data_sizes``, e.g. CRD's memory banks); they are
    bound here with it and the embedding dims, before the optimizer is made, and read
    ``batch["index"]`` (``LossInputs.indices``).
    """

    def __init__(
        self,
        encoder: nn.Module,
        classifier: nn.Module,
        num_classes: int,
        optimizer: OptimizerFactory,
        teacher_encoder: nn.Module | None,
        teacher_classifier: nn.Module | None,
        loss: LossComposer,
        projection: nn.Module | None = None,
        quality: nn.Module | None = None,
        scheduler: SchedulerFactory | None = None,
        top_k: int = 1,
        evaluator: nn.Module | None = None,
        teacher_cache: TeacherFeatureCache | None = None,
        example_batch: Mapping[str, Tensor] | None = None,
        num_train_samples: int | None = None,
        teacher_channel_mask: ChannelMask | None = None,
    ) -> None:
        super().__init__(
            encoder, classifier, num_classes, optimizer, scheduler, loss, top_k, evaluator
        )
        self.projection = projection
        self.quality = quality
        self.teacher_cache = teacher_cache
        #: the ``LossInputs`` fields a step computes
        self.needed = frozenset(self.loss.required_fields | quality_requires(quality))
        if (teacher_encoder is None or teacher_classifier is None) and self.needs_teacher:
            raise ValueError(
                "the loss terms or the quality weighter read "
                f"{sorted(self.needed & TEACHER_FIELDS)}, but no teacher was given"
            )
        self.teacher_encoder = freeze(teacher_encoder) if teacher_encoder is not None else None
        self.teacher_classifier = (
            freeze(teacher_classifier) if teacher_classifier is not None else None
        )
        #: keeps some channels of a teacher layer (teacher.keep_channels); its buffers are saved
        self.teacher_channel_mask = teacher_channel_mask
        if teacher_channel_mask is not None:
            if self.teacher_encoder is None:
                raise ValueError("teacher.keep_channels is set, but the run has no teacher")
            try:
                target = self.teacher_encoder.get_submodule(teacher_channel_mask.layer)
            except AttributeError as err:
                names = [n for n, _ in self.teacher_encoder.named_modules() if n]
                raise KeyError(
                    f"teacher.keep_channels.layer={teacher_channel_mask.layer!r} is not a layer "
                    f"of the teacher encoder; layers: {names}"
                ) from err
            target.register_forward_hook(teacher_channel_mask.hook)
        taps = self.loss.feature_taps
        self.student_taps = FeatureRecorder(
            tap_root(encoder, classifier), taps["student"], "distill.features.student"
        )
        self.teacher_taps = FeatureRecorder(
            tap_root(teacher_encoder, teacher_classifier) if self.teacher_encoder else nn.Module(),
            taps["teacher"],
            "distill.features.teacher",
        )
        if teacher_cache is not None and self.teacher_taps:
            raise ValueError(
                "teacher.cache_features stores embeddings only; the configured terms read "
                f"teacher features {sorted(taps['teacher'])}: set teacher.cache_features=false"
            )
        if "teacher_embedding" in self.needed and projection is None:
            t_dim = getattr(teacher_encoder, "embedding_dim", None)
            s_dim = getattr(encoder, "embedding_dim", None)
            if t_dim is not None and s_dim is not None and t_dim != s_dim:
                raise ValueError(
                    f"teacher embedding has {t_dim} dims and the student's {s_dim}: "
                    "choose a projection head (projection=linear or projection=mlp)"
                )
        if self.loss.needs_feature_shapes:
            if example_batch is None:
                raise ValueError(
                    "a loss term builds connectors from the feature shapes: give the "
                    "DistillModule an example_batch (builders.build_student_module does)"
                )
            self.loss.bind_feature_shapes(*self.feature_shapes(example_batch))
        sized = [term for term in self.loss.terms.values() if term.needs_data_sizes]
        if sized:
            if num_train_samples is None:
                raise ValueError(
                    f"loss terms {[t.name for t in sized]} keep one row per training sample: "
                    "give the DistillModule num_train_samples (builders.build_student_module "
                    "does)"
                )
            sizes = DataSizes(int(num_train_samples), self.embedding_dims())
            for term in sized:
                term.bind_data_sizes(sizes)

    @torch.no_grad()
    def embedding_dims(self) -> dict[str, int]:
        """Last dim of ``student_embedding`` and, with a teacher, ``teacher_raw_embedding``
        and ``teacher_embedding`` (the projection run once on zeros, in eval mode)."""
        dims = {"student_embedding": int(self.encoder.embedding_dim)}
        if self.teacher_encoder is not None:
            t_dim = int(self.teacher_encoder.embedding_dim)
            dims["teacher_raw_embedding"] = dims["teacher_embedding"] = t_dim
            if self.projection is not None:
                with isolate_rng(), eval_mode(self.projection):
                    projected = self.projection(torch.zeros(2, t_dim))
                dims["teacher_embedding"] = int(projected.shape[-1])
        return dims

    @property
    def needs_teacher(self) -> bool:
        return bool(self.needed & TEACHER_FIELDS)

    def train(self, mode: bool = True) -> DistillModule:
        super().train(mode)
        if self.teacher_encoder is not None:
            self.teacher_encoder.eval()
            self.teacher_classifier.eval()
        return self

    # -- features ------------------------------------------------------------------
    @torch.no_grad()
    def feature_shapes(
        self, batch: Mapping[str, Tensor]
    ) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
        """Shapes of the tapped student and teacher features for ``batch`` (one forward in
        eval mode, random streams untouched)."""
        with isolate_rng(), eval_mode(self.encoder, self.classifier):
            with self.student_taps.recording() as student:
                self.classifier(self.encoder(batch["student_input"]))
            teacher: dict[str, Tensor] = {}
            if self.teacher_taps:
                with self.teacher_taps.recording() as teacher:
                    self.teacher_classifier(self.teacher_encoder(batch["teacher_input"]))
        return (
            {name: tuple(x.shape) for name, x in student.items()},
            {name: tuple(x.shape) for name, x in teacher.items()},
        )

    # -- teacher -------------------------------------------------------------------
    def teacher_forward(
        self, x_a: Tensor, index: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None, dict[str, Tensor]]:
        """Frozen teacher ``(embedding, logits or None, features)`` for ``x_a``; the
        embedding is read from the cache in training steps when one is set (``index`` =
        training-set indices). Logits are computed when a term or the weighter reads them
        or a teacher feature taps the classifier."""
        want_logits = "teacher_logits" in self.needed
        if self.teacher_cache is not None and self.training and index is not None:
            t_emb = self.teacher_cache.lookup(index, device=x_a.device).to(x_a.dtype)
            with torch.no_grad():
                logits = self.teacher_classifier(t_emb) if want_logits else None
            return t_emb, logits, {}
        with torch.no_grad(), self.teacher_taps.recording() as features:
            t_emb = self.teacher_encoder(x_a)
            tapped_head = any(
                spec.path.split(".")[0] == "classifier" for spec in self.teacher_taps.specs.values()
            )
            logits = self.teacher_classifier(t_emb) if want_logits or tapped_head else None
        return t_emb, logits, features

    def teacher_logits(self, x_a: Tensor) -> Tensor:
        with torch.no_grad():
            return self.teacher_classifier(self.teacher_encoder(x_a))

    @torch.no_grad()
    def teacher_embedding_for_matching(self, batch: dict[str, Tensor]) -> Tensor | None:
        """The teacher embedding in the student's space for cross-modal matching:
        ``P(t)`` with a projection head, the raw ``t`` when a term aligns it with the student
        directly (reads ``teacher_embedding`` without a projection); ``None`` without
        ``batch["teacher_input"]``, a teacher, or anything aligning the two spaces."""
        if self.teacher_encoder is None or "teacher_input" not in batch:
            return None
        if self.projection is None and "teacher_embedding" not in self.loss.required_fields:
            return None
        t_emb = self.teacher_encoder(batch["teacher_input"])
        return self.projection(t_emb) if self.projection is not None else t_emb

    # -- one step ------------------------------------------------------------------
    def loss_inputs(self, batch: dict[str, Tensor]) -> LossInputs:
        needed = self.needed
        labels = batch["label"]
        with self.student_taps.recording() as student_features:
            s_emb = self.encoder(batch["student_input"])
            logits = self.classifier(s_emb, labels)
        inputs = LossInputs(
            labels=labels,
            student_logits=logits,
            student_embedding=s_emb,
            student_features=student_features,
        )
        if "student_plain_logits" in needed:  # margin-free, comparable with the teacher's
            inputs.student_plain_logits = self.classifier(s_emb)
        if self.needs_teacher:
            t_emb, t_logits, teacher_features = self.teacher_forward(
                batch["teacher_input"], batch.get("index")
            )
            inputs.teacher_raw_embedding = t_emb
            inputs.teacher_logits = t_logits
            inputs.teacher_features = teacher_features
            projected = self.projection(t_emb) if self.projection is not None else t_emb
            inputs.teacher_embedding = projected
            if "teacher_shared_logits" in needed:
                inputs.teacher_shared_logits = self.classifier(projected, labels)
        if "indices" in needed:
            if "index" not in batch:
                raise ValueError(
                    "a loss term reads the sample indices, but the batch has no 'index' (keys: "
                    f"{sorted(batch)}); the datamodule must give index = position in its "
                    "training dataset (docs/CONVENTIONS.md)"
                )
            inputs.indices = batch["index"]
        if self.quality is not None:
            inputs.sample_weights = self.quality(batch, inputs)
        return inputs
