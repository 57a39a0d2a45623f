"""Experiment loggers per training stage: where each stage writes, the resolved config as
hyperparameters, and closing a stage's W&B run.

The student stage uses the ``logger`` nodes as configured. The teacher stage uses the same
nodes with :func:`stage_overrides`: file loggers write under ``<run dir>/teacher/`` (the
same layout as the run dir); W&B starts its own run in the same project and group, with
``job_type: teacher`` and the name ``<name>-teacher``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import Logger, TensorBoardLogger, WandbLogger

STUDENT = "student"
TEACHER = "teacher"
STAGES = (STUDENT, TEACHER)


def is_wandb(node: DictConfig) -> bool:
    """Whether a ``logger`` node builds a :class:`WandbLogger` (or a subclass)."""
    return issubclass(hydra.utils.get_class(node["_target_"]), WandbLogger)


def is_tensorboard(node: DictConfig) -> bool:
    """Whether a ``logger`` node builds a :class:`TensorBoardLogger` (or a subclass)."""
    return issubclass(hydra.utils.get_class(node["_target_"]), TensorBoardLogger)


def _rebased(path: str, run_dir: Path, stage_dir: Path) -> str:
    """``path`` moved from under ``run_dir`` to under ``stage_dir``; a path elsewhere gets a
    ``<stage>`` subfolder, so two stages never share a log folder."""
    path_ = Path(path)
    try:
        return str(stage_dir / path_.resolve().relative_to(run_dir.resolve()))
    except ValueError:
        return str(path_ / stage_dir.name)


def stage_overrides(
    cfg: DictConfig, node: DictConfig, stage: str, resume_step: int | None = None
) -> dict[str, Any]:
    """Constructor arguments of the ``logger`` node ``node`` that differ from the config in
    ``stage`` (resumed from a checkpoint of ``resume_step``: TensorBoard's ``purge_step``,
    passed on to its SummaryWriter, so its reader drops the events logged after it).

    W&B without a ``group`` gets ``task_name`` as group in both stages, so a run's teacher
    and student runs are always grouped. Teacher stage: W&B gets ``job_type=teacher``,
    ``name=<name>-teacher`` and, if an ``id``/``version`` is set, ``<id>-teacher`` (it
    keeps project, group, tags and ``save_dir``: both runs sit in ``<run dir>/wandb/``);
    other loggers get their ``save_dir`` moved from ``<run dir>/...`` to
    ``<run dir>/teacher/...``.
    """
    if stage not in STAGES:
        raise ValueError(f"logger stage must be one of {STAGES}, got {stage!r}")
    overrides: dict[str, Any] = {}
    if is_wandb(node):
        if node.get("group") is None:
            overrides["group"] = cfg.task_name
        if stage == TEACHER:
            overrides["job_type"] = stage
            for key in ("name", "id", "version"):
                if node.get(key):
                    overrides[key] = f"{node[key]}-{stage}"
    elif stage == TEACHER and node.get("save_dir"):
        run_dir = Path(cfg.paths.output_dir)
        overrides["save_dir"] = _rebased(node.save_dir, run_dir, run_dir / stage)
    if resume_step is not None and is_tensorboard(node):
        overrides["purge_step"] = resume_step
    return overrides


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> one level with dotted keys (``distill.kd.weight``), the spelling
    of a command-line override; lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def log_config(loggers: Sequence[Logger], cfg: DictConfig) -> None:
    """Log the full resolved config as hyperparameters to every logger (rank 0 only: the
    loggers' ``log_hyperparams`` are rank-zero methods). TensorBoard gets dotted flat keys
    (its hparams table is flat); W&B, CSV and others get the nested config."""
    config = OmegaConf.to_container(cfg, resolve=True)
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(flatten(config))
        else:
            logger.log_hyperparams(config)


def finish_runs(loggers: Sequence[Logger]) -> None:
    """End the W&B run a stage's loggers started, so the next stage starts its own run
    (a :class:`WandbLogger` reuses any run still open)."""
    if not any(isinstance(logger, WandbLogger) for logger in loggers):
        return
    import wandb

    if wandb.run is not None:
        wandb.finish()
