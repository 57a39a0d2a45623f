"""Build datamodules, models, modules, loggers and trainers from a composed config.

Constructor arguments that only the data knows (input sizes, vocabulary size, number of
classes, embedding sizes) are wired here, so configs never repeat them.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
import weakref
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import Logger
from pytorch_lightning.utilities.seed import isolate_rng
from torch import nn
from torch.utils.data import DataLoader

from crossdistill.cache import TeacherFeatureCache
from crossdistill.losses import LossComposer
from crossdistill.modules import DistillModule, StudentModule, TeacherModule
from crossdistill.modules.distill import STUDENT_MODULE_FIELDS, TEACHER_FIELDS
from crossdistill.utils.fingerprint import datamodule_fingerprint

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


def build_datamodule(cfg: DictConfig) -> pl.LightningDataModule:
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def input_wiring(datamodule: pl.LightningDataModule, side: str) -> dict[str, Any]:
    """What an encoder of ``side`` ('teacher' or 'student') may need from the data."""
    spec = getattr(datamodule, "encoder_kwargs", None)
    if callable(spec):
        return dict(spec(side))
    return {"input_dim": getattr(datamodule, f"{side}_input_dim", None)}


def build_encoder_and_classifier(
    model_cfg: DictConfig, datamodule: pl.LightningDataModule, side: str
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
    node: DictConfig | None, datamodule: pl.LightningDataModule, input_key: str, top_k: int
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


def build_teacher_module(cfg: DictConfig, datamodule: pl.LightningDataModule) -> TeacherModule:
    encoder, classifier = build_encoder_and_classifier(cfg.teacher, datamodule, "teacher")
    return TeacherModule(
        encoder,
        classifier,
        datamodule.num_classes,
        optimizer=hydra.utils.instantiate(cfg.teacher.optimizer),
        scheduler=hydra.utils.instantiate(cfg.teacher.get("scheduler")),
        top_k=cfg.get("top_k", 1),
        evaluator=build_evaluator(
            cfg.teacher.get("evaluator"), datamodule, "teacher_input", cfg.get("top_k", 1)
        ),
    )


def _example_batch(datamodule: pl.LightningDataModule, size: int = 2) -> dict[str, Any]:
    """The first ``size`` training samples collated as in training (random streams kept),
    for the dry forward that sizes feature connectors."""
    loader = datamodule.train_dataloader()
    dataset = loader.dataset
    with isolate_rng():
        return loader.collate_fn([dataset[i] for i in range(min(size, len(dataset)))])


def build_student_module(
    cfg: DictConfig,
    datamodule: pl.LightningDataModule,
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
        **common,
    )


_LOADER_KEYS = ("batch_size", "eval_batch_size", "num_workers", "pin_memory")
_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def data_fingerprint(cfg: DictConfig, datamodule: pl.LightningDataModule) -> str | None:
    """Fingerprint of the files the datamodule reads (``cache_check``: content | stat),
    computed once per datamodule; ``None`` for in-memory data defined by the config."""
    if datamodule not in _FINGERPRINTS:
        mode = cfg.get("cache_check", "content")
        _FINGERPRINTS[datamodule] = datamodule_fingerprint(datamodule, mode)
    return _FINGERPRINTS[datamodule]


def build_teacher_cache(
    cfg: DictConfig, datamodule: pl.LightningDataModule, teacher: TeacherModule
) -> TeacherFeatureCache | None:
    """With ``teacher.cache_features: true``: the frozen teacher's embeddings of the whole
    training set, computed once (or reused) into one memory-mapped file keyed by the teacher
    weights, the data config, the contents of the files the data are read from (or their
    size + mtime, ``cache_check=stat``) and the preprocessing. Refused when the datamodule
    says its training teacher input is random per step."""
    if not cfg.teacher.get("cache_features", False):
        return None
    deterministic = getattr(datamodule, "teacher_input_is_deterministic", None)
    if deterministic is False:
        raise ValueError(
            "teacher.cache_features=true needs a teacher input that is fixed per sample index, "
            "but this datamodule picks it at random per step (e.g. set "
            "data.train_face_frame=per_index for the face-voice data)"
        )
    if deterministic is None:
        log.warning(
            "%s does not say whether its teacher input is fixed per index; caching "
            "the teacher assumes it is",
            type(datamodule).__name__,
        )
    train_loader = datamodule.train_dataloader()
    dataset = train_loader.dataset
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    for key in _LOADER_KEYS:
        data_cfg.pop(key, None)
    paths = getattr(dataset, "paths", None)
    fingerprint = {
        "data": data_cfg,
        "split": "train",
        "num_samples": len(dataset),
        "items": hashlib.sha256("\n".join(paths).encode()).hexdigest() if paths else None,
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
    loader = DataLoader(
        dataset,
        batch_size=train_loader.batch_size or 1,
        shuffle=False,
        drop_last=False,
        collate_fn=train_loader.collate_fn,
        num_workers=train_loader.num_workers,
    )
    log.info(
        "teacher feature cache: computing %d embeddings into %s", len(dataset), cache.array_path
    )
    with isolate_rng():  # a cold cache leaves the student's random streams untouched
        return cache.build(encoder, loader, progress=False)


def wandb_available() -> bool:
    """True when a wandb key is configured (env or netrc) or a mode is set explicitly."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE"):
        return True
    netrc = Path.home() / ".netrc"
    return netrc.exists() and "api.wandb.ai" in netrc.read_text()


def build_loggers(cfg: DictConfig) -> list[Logger]:
    loggers: list[Logger] = []
    for name, node in (cfg.get("logger") or {}).items():
        if not is_enabled(node):
            continue
        if "Wandb" in node["_target_"] and not wandb_available():
            log.warning("no wandb key found: logging to wandb in offline mode (sync later)")
            os.environ["WANDB_MODE"] = "offline"
        log.info("logger: %s", name)
        loggers.append(hydra.utils.instantiate(node))
    return loggers


def build_callbacks(cfg: DictConfig) -> list[Callback]:
    return [
        hydra.utils.instantiate(node)
        for node in (cfg.get("callbacks") or {}).values()
        if is_enabled(node)
    ]


def build_trainer(cfg: DictConfig, **overrides: Any) -> pl.Trainer:
    return hydra.utils.instantiate(cfg.trainer, **overrides)
