"""Build datamodules, models, modules, loggers and trainers from a composed config.

Constructor arguments that only the data knows (input sizes, vocabulary size, number of
classes, embedding sizes) are wired here, so configs never repeat them.
"""

from __future__ import annotations

import inspect
import logging
import os
from typing import Any

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import Logger
from torch import nn

from crossdistill.losses import LossComposer
from crossdistill.modules import DistillModule, StudentModule, TeacherModule
from crossdistill.modules.distill import TEACHER_FIELDS

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
    return bool(loss.required_fields & TEACHER_FIELDS)


def build_evaluator(
    node: DictConfig | None, datamodule: pl.LightningDataModule, input_key: str, top_k: int
) -> nn.Module | None:
    """The val/test evaluator; ``None`` (classification accuracy) when not configured."""
    if not is_enabled(node):
        return None
    return instantiate_wired(
        node, num_classes=datamodule.num_classes, top_k=top_k, datamodule=datamodule,
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


def build_student_module(
    cfg: DictConfig,
    datamodule: pl.LightningDataModule,
    loss: LossComposer,
    teacher: TeacherModule | None,
) -> StudentModule:
    """The student-only baseline when no term needs a teacher, else a DistillModule."""
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
    if teacher is None:
        if loss_needs_teacher(loss):
            raise ValueError("the configured distill terms need a teacher, but none was given")
        return StudentModule(encoder, classifier, loss=loss, **common)
    projection = None
    if is_enabled(cfg.get("projection")):
        projection = instantiate_wired(
            cfg.projection, in_dim=teacher.encoder.embedding_dim, out_dim=encoder.embedding_dim
        )
    quality = hydra.utils.instantiate(cfg.quality) if is_enabled(cfg.get("quality")) else None
    return DistillModule(
        encoder,
        classifier,
        teacher_encoder=teacher.encoder,
        teacher_classifier=teacher.classifier,
        loss=loss,
        projection=projection,
        quality=quality,
        **common,
    )


def wandb_available() -> bool:
    """True when a wandb key is configured (env or netrc) or a mode is set explicitly."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE"):
        return True
    netrc = os.path.expanduser("~/.netrc")
    return os.path.exists(netrc) and "api.wandb.ai" in open(netrc).read()


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
