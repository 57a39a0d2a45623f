"""Build datamodules, models, modules, loggers and trainers from a composed config.

Constructor arguments that only the data knows (input sizes, vocabulary size, number of
classes, embedding sizes) are wired here, so configs never repeat them.
"""

from __future__ import annotations

import inspect
import logging
import os
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import Logger
from pytorch_lightning.utilities.seed import isolate_rng
from torch import nn
from torch.utils.data import default_collate

from crossdistill.cache import TeacherFeatureCache
from crossdistill.data.datamodules.base import PairedDataModule, Side
from crossdistill.losses import LossComposer
from crossdistill.models.channel_mask import ChannelMask, refit_classifier
from crossdistill.models.heads import CosineClassifier
from crossdistill.modules import DistillModule, StudentModule, TeacherModule
from crossdistill.modules.distill import STUDENT_MODULE_FIELDS, TEACHER_FIELDS
from crossdistill.modules.enrol import enrolled_classifier
from crossdistill.utils import teacher_store
from crossdistill.utils.loggers import STUDENT, is_wandb, stage_overrides

log = logging.getLogger(__name__)


def _target_accepts(node: DictConfig, name: str) -> bool:
    target = hydra.utils.get_class(node["_target_"])
    params = inspect.signature(target.__init__).parameters
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def instantiate_wired(node: DictConfig, **wiring: Any) -> Any:
    """``instantiate(node)`` adding each ``wiring`` kwarg the target accepts and the config
    leaves unset (missing, ``???`` or ``auto``)."""
    extra = {}
    for key, value in wiring.items():
        if value is None or not _target_accepts(node, key):
            continue
        if key not in node or OmegaConf.is_missing(node, key) or node[key] == "auto":
            extra[key] = value
    return hydra.utils.instantiate(node, **extra)


def is_enabled(node: DictConfig | None) -> bool:
    """Optional groups (projection, quality) are off when empty or ``_target_`` is null."""
    return node is not None and len(node) > 0 and node.get("_target_") is not None


def build_datamodule(cfg: DictConfig) -> PairedDataModule:
    """``cfg.data`` instantiated, prepared and set up; it must be a ``PairedDataModule``."""
    datamodule = hydra.utils.instantiate(cfg.data)
    if not isinstance(datamodule, PairedDataModule):
        raise TypeError(
            f"data._target_={cfg.data.get('_target_')!r} built a {type(datamodule).__name__}; "
            "a datamodule must subclass crossdistill.data.datamodules.base.PairedDataModule "
            "(see docs/architecture.md, 'a dataset')"
        )
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def input_wiring(datamodule: PairedDataModule, side: Side) -> dict[str, Any]:
    """What an encoder of ``side`` ('teacher' or 'student') may need from the data."""
    return dict(datamodule.encoder_inputs(side))


def build_encoder_and_classifier(
    model_cfg: DictConfig, datamodule: PairedDataModule, side: str
) -> tuple[nn.Module, nn.Module]:
    encoder = instantiate_wired(model_cfg.encoder, **input_wiring(datamodule, side))
    classifier = instantiate_wired(
        model_cfg.classifier,
        embedding_dim=encoder.embedding_dim,
        num_classes=datamodule.num_classes,
    )
    return encoder, classifier


def loss_needs_teacher(loss: LossComposer) -> bool:
    """True when a term reads a teacher field (teacher features included)."""
    return bool(loss.required_fields & TEACHER_FIELDS)


def build_evaluator(
    node: DictConfig | None, datamodule: PairedDataModule, input_key: str, top_k: int
) -> nn.Module | None:
    """The val/test evaluator; ``None`` (classification accuracy) when not configured."""
    if not is_enabled(node):
        return None
    return instantiate_wired(
        node,
        num_classes=datamodule.num_classes,
        top_k=top_k,
        datamodule=datamodule,
        input_key=input_key,
    )


def teacher_stage_data(datamodule: PairedDataModule) -> PairedDataModule:
    """The data the teacher trains on: ``datamodule.teacher_stage_datamodule()`` when the
    datamodule has that hook (e.g. a face-only identity pool), else ``datamodule``."""
    hook = getattr(datamodule, "teacher_stage_datamodule", None)
    return hook() if callable(hook) else datamodule


def build_teacher_module(cfg: DictConfig, datamodule: PairedDataModule) -> TeacherModule:
    """The teacher, its classifier sized by the classes of :func:`teacher_stage_data`."""
    data = teacher_stage_data(datamodule)
    encoder, classifier = build_encoder_and_classifier(cfg.teacher, data, "teacher")
    return TeacherModule(
        encoder,
        classifier,
        data.num_classes,
        optimizer=hydra.utils.instantiate(cfg.teacher.optimizer),
        scheduler=hydra.utils.instantiate(cfg.teacher.get("scheduler")),
        top_k=cfg.get("top_k", 1),
        evaluator=build_evaluator(
            cfg.teacher.get("evaluator"), data, "teacher_input", cfg.get("top_k", 1)
        ),
    )


def teacher_over_student_classes(
    teacher: TeacherModule, datamodule: PairedDataModule, loss: LossComposer, enrol: bool = True
) -> TeacherModule:
    """A teacher trained on other classes than the student's (``teacher_stage_data``) whose
    logits a term reads gets an enrolled classifier over the student's training classes
    (``modules.enrol``: class-mean prototypes of the training set's teacher inputs);
    ``enrol=False``: a cosine head of that shape only, for weights loaded from a checkpoint."""
    if teacher.num_classes == datamodule.num_classes or not (
        loss.required_fields & {"teacher_logits"}
    ):
        return teacher
    scale = float(getattr(teacher.classifier, "scale", 30.0))
    if enrol:
        log.info(
            "teacher trained on %d classes: enrolling the %d student training classes",
            teacher.num_classes,
            datamodule.num_classes,
        )
        head = enrolled_classifier(
            teacher.encoder,
            datamodule.loader("train", ordered=True),
            datamodule.num_classes,
            scale=scale,
        )
    else:
        head = CosineClassifier(teacher.encoder.embedding_dim, datamodule.num_classes, scale)
    teacher.classifier = head
    teacher.num_classes = datamodule.num_classes
    return teacher


def _example_batch(datamodule: PairedDataModule, size: int = 2) -> dict[str, Any]:
    """The first ``size`` training samples collated as in training (random streams kept),
    for the dry forward that sizes feature connectors."""
    dataset = datamodule.dataset("train")
    collate = datamodule.collate("train") or default_collate
    with isolate_rng():
        return collate([dataset[i] for i in range(min(size, len(dataset)))])


def build_student_module(
    cfg: DictConfig,
    datamodule: PairedDataModule,
    loss: LossComposer,
    teacher: TeacherModule | None,
) -> StudentModule:
    """The student-only baseline when the terms read only what it computes (logits,
    embedding, labels), else a DistillModule (with ``teacher`` when a term reads a teacher
    field; student features or margin-free logits alone need none)."""
    encoder, classifier = build_encoder_and_classifier(cfg.student, datamodule, "student")
    common = dict(
        num_classes=datamodule.num_classes,
        optimizer=hydra.utils.instantiate(cfg.student.optimizer),
        scheduler=hydra.utils.instantiate(cfg.student.get("scheduler")),
        top_k=cfg.get("top_k", 1),
        evaluator=build_evaluator(
            cfg.get("evaluator"), datamodule, "student_input", cfg.get("top_k", 1)
        ),
    )
    if teacher is None and loss_needs_teacher(loss):
        raise ValueError("the configured distill terms need a teacher, but none was given")
    if teacher is None and loss.required_fields <= STUDENT_MODULE_FIELDS:
        return StudentModule(encoder, classifier, loss=loss, **common)
    projection = None
    if teacher is not None and is_enabled(cfg.get("projection")):
        projection = instantiate_wired(
            cfg.projection, in_dim=teacher.encoder.embedding_dim, out_dim=encoder.embedding_dim
        )
    quality = hydra.utils.instantiate(cfg.quality) if is_enabled(cfg.get("quality")) else None
    channel_mask = build_channel_mask(cfg) if teacher is not None else None
    return DistillModule(
        encoder,
        classifier,
        teacher_encoder=teacher.encoder if teacher is not None else None,
        teacher_classifier=teacher.classifier if teacher is not None else None,
        loss=loss,
        projection=projection,
        quality=quality,
        teacher_cache=(
            build_teacher_cache(cfg, datamodule, teacher) if teacher is not None else None
        ),
        example_batch=_example_batch(datamodule) if loss.needs_feature_shapes else None,
        num_train_samples=(
            len(datamodule.dataset("train"))
            if any(term.needs_data_sizes for term in loss.terms.values())
            else None
        ),
        teacher_channel_mask=channel_mask,
        **common,
    )


def build_channel_mask(cfg: DictConfig) -> ChannelMask | None:
    """``teacher.keep_channels`` with ``keep: top|bottom``: the teacher reduced to the ``k``
    channels of a layer ranked highest / lowest by Algorithm 1 (models/channel_mask.py);
    ``None`` when unset or ``keep: null``. Its fill values are computed by
    :func:`fit_channel_mask` once the teacher's weights are loaded."""
    spec = cfg.teacher.get("keep_channels")
    if not spec or not spec.get("keep"):
        return None
    if cfg.teacher.get("cache_features", False):
        raise ValueError(
            "teacher.keep_channels changes the teacher's outputs, which teacher.cache_features "
            "would store unmasked: set teacher.cache_features=false"
        )
    return ChannelMask.from_config(spec)


def fit_channel_mask(module: nn.Module, datamodule: PairedDataModule) -> None:
    """Fill values of a student module's teacher channel mask: each channel's mean over the
    training set (in order, teacher in eval mode)."""
    mask = getattr(module, "teacher_channel_mask", None)
    if mask is None:
        return
    encoder = module.teacher_encoder
    batches = (batch["teacher_input"] for batch in datamodule.loader("train", ordered=True))
    mask.fit_fill(encoder.eval(), batches)
    kept = mask.kept.nonzero().flatten().tolist()
    log.info("teacher reduced to %d channels of %s (%s): %s", len(kept), mask.layer,
             mask.keep_mode, kept)
    if mask.retrain_head:
        embeddings, labels = [], []
        with torch.no_grad():
            for batch in datamodule.loader("train", ordered=True):
                embeddings.append(encoder(batch["teacher_input"]))
                labels.append(batch["label"])
        accuracy = refit_classifier(
            module.teacher_classifier, torch.cat(embeddings), torch.cat(labels)
        )
        log.info("teacher classifier refitted on the kept channels: train top-1 %.3f", accuracy)


_LOADER_KEYS = ("batch_size", "eval_batch_size", "num_workers", "pin_memory")


def data_fingerprint(cfg: DictConfig, datamodule: PairedDataModule) -> str | None:
    """Fingerprint of the files the datamodule reads (``cache_check``: content | stat;
    computed once per datamodule and mode); ``None`` for in-memory data defined by the
    config."""
    return datamodule.content_fingerprint(cfg.get("cache_check", "content"))


def teacher_cache_key(cfg: DictConfig, datamodule: PairedDataModule) -> str:
    """The teacher cache key of a run (:func:`~crossdistill.utils.teacher_store.teacher_key`)
    over the data the teacher trains on (:func:`teacher_stage_data`): its files'
    fingerprint, and without the data keys that act only through those files."""
    data = teacher_stage_data(datamodule)
    return teacher_store.teacher_key(cfg, data_fingerprint(cfg, data), data.config_in_files)


def build_teacher_cache(
    cfg: DictConfig, datamodule: PairedDataModule, teacher: TeacherModule
) -> TeacherFeatureCache | None:
    """With ``teacher.cache_features: true``: the frozen teacher's embeddings of the whole
    training set, computed once (or reused) into one memory-mapped file keyed by the teacher
    weights, the data config, the training samples (``items_fingerprint``), the contents of
    the files the data are read from (or their size + mtime, ``cache_check=stat``) and the
    preprocessing. Refused when the datamodule says its training teacher input is not fixed
    per sample index."""
    if not cfg.teacher.get("cache_features", False):
        return None
    if not datamodule.teacher_input_fixed_per_index:
        raise ValueError(
            "teacher.cache_features=true needs a teacher input that is fixed per sample index, "
            f"but {type(datamodule).__name__} picks it at random per step (e.g. set "
            "data.train_face_frame=per_index for the face-voice data)"
        )
    dataset = datamodule.dataset("train")
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    for key in _LOADER_KEYS:
        data_cfg.pop(key, None)
    fingerprint = {
        "data": data_cfg,
        "split": "train",
        "num_samples": len(dataset),
        "items": datamodule.items_fingerprint("train"),
        "files": data_fingerprint(cfg, datamodule),
    }
    preprocessing = {"input_key": "teacher_input", "output": "teacher_encoder(x)"}
    encoder = teacher.encoder
    key = TeacherFeatureCache.make_key(encoder, fingerprint, preprocessing)
    cache_dir = cfg.teacher.get("cache_dir") or Path(cfg.paths.teacher_cache_dir) / "features"
    cache = TeacherFeatureCache(cache_dir, key, len(dataset), encoder.embedding_dim)
    if cache.exists():
        log.info("teacher feature cache: reusing %s", cache.array_path)
        return cache
    log.info(
        "teacher feature cache: computing %d embeddings into %s", len(dataset), cache.array_path
    )
    with isolate_rng():  # a cold cache leaves the student's random streams untouched
        return cache.build(encoder, datamodule.loader("train", ordered=True), progress=False)


def wandb_available() -> bool:
    """True when a wandb key is configured (env or netrc) or a mode is set explicitly."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE"):
        return True
    netrc = Path.home() / ".netrc"
    return netrc.exists() and "api.wandb.ai" in netrc.read_text()


def build_loggers(
    cfg: DictConfig, stage: str = STUDENT, resume_step: int | None = None
) -> list[Logger]:
    """The ``logger`` nodes of ``cfg`` for ``stage`` ('student' or 'teacher'); the teacher
    stage writes under ``<run dir>/teacher`` and its own W&B run (``utils.loggers``).
    ``resume_step``: the stage resumes from a checkpoint saved at that step, so TensorBoard
    gets ``purge_step`` (its reader then drops the events the kill made obsolete)."""
    loggers: list[Logger] = []
    for name, node in (cfg.get("logger") or {}).items():
        if not is_enabled(node):
            continue
        if is_wandb(node) and not wandb_available():
            log.warning("no wandb key found: logging to wandb in offline mode (sync later)")
            os.environ["WANDB_MODE"] = "offline"
        log.info("logger (%s stage): %s", stage, name)
        overrides = stage_overrides(cfg, node, stage, resume_step)
        loggers.append(hydra.utils.instantiate(node, **overrides))
    return loggers


def build_callbacks(cfg: DictConfig) -> list[Callback]:
    return [
        hydra.utils.instantiate(node)
        for node in (cfg.get("callbacks") or {}).values()
        if is_enabled(node)
    ]


def build_trainer(cfg: DictConfig, **overrides: Any) -> pl.Trainer:
    return hydra.utils.instantiate(cfg.trainer, **overrides)
