"""Rebuild a trained run from its run dir alone (its saved ``config.yaml`` + checkpoint)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from crossdistill import builders
from crossdistill.losses import LossComposer
from crossdistill.modules import StudentModule, TeacherModule
from crossdistill.resume import LAST, PREVIOUS_LAST
from crossdistill.utils import teacher_store


@dataclass
class LoadedRun:
    cfg: DictConfig
    datamodule: pl.LightningDataModule
    module: StudentModule | TeacherModule
    checkpoint: Path


def find_checkpoint(run_dir: Path, ckpt: str, stage: str) -> Path:
    """``ckpt``: 'auto' (the one the run tested), 'last', 'best' or a path."""
    if stage == "teacher":
        path = run_dir / "teacher" / "teacher.ckpt"
    elif ckpt in ("auto", "best"):
        recorded = None
        metrics = run_dir / "metrics.json"
        if ckpt == "auto" and metrics.exists():
            recorded = json.loads(metrics.read_text()).get("checkpoint")
        if recorded:
            path = Path(recorded)
        else:
            candidates = sorted(
                p
                for p in (run_dir / "checkpoints").glob("*.ckpt")
                if p.name not in (LAST, PREVIOUS_LAST)
            )
            path = candidates[-1] if candidates else run_dir / "checkpoints" / "last.ckpt"
    elif ckpt == "last":
        path = run_dir / "checkpoints" / "last.ckpt"
    else:
        path = Path(ckpt)
    if not path.exists():
        raise FileNotFoundError(
            f"checkpoint {path} not found (run dir {run_dir}; ckpt={ckpt!r}, stage={stage!r}); "
            "valid ckpt values: auto, best, last, or a path to a .ckpt file"
        )
    return path


def load_run(run_dir: str | Path, ckpt: str = "auto", stage: str = "student") -> LoadedRun:
    """Datamodule and module of a finished run, with the selected weights loaded."""
    run_dir = Path(run_dir)
    cfg_file = run_dir / "config.yaml"
    if not cfg_file.exists():
        raise FileNotFoundError(
            f"{cfg_file} not found: run_dir must be a crossdistill run dir "
            "(outputs/<task>/runs/<date>_<time>_<id>) containing config.yaml"
        )
    if stage not in ("student", "teacher"):
        raise ValueError(f"stage must be 'student' or 'teacher', got {stage!r}")
    cfg = OmegaConf.load(cfg_file)
    datamodule = builders.build_datamodule(cfg)
    loss = LossComposer(OmegaConf.to_container(cfg.distill, resolve=True))
    teacher = None
    if stage == "teacher" or builders.loss_needs_teacher(loss):
        teacher = builders.build_teacher_module(cfg, datamodule)
    if stage == "teacher":
        module = teacher
    else:
        if teacher is not None:  # the enrolled head of a pool-trained teacher: from the ckpt
            teacher = builders.teacher_over_student_classes(teacher, datamodule, loss, enrol=False)
        module = builders.build_student_module(cfg, datamodule, loss, teacher)
    path = find_checkpoint(run_dir, ckpt, stage)
    teacher_store.load_weights(module, path)
    module.eval()
    return LoadedRun(cfg, datamodule, module, path)
