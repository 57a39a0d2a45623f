"""The training pipeline behind ``crossdistill-train``: obtain the teacher (load, reuse or
train), distil the student, test the selected checkpoint, write ``metrics.json``.

Random streams: the teacher stage and the teacher-feature cache run inside
:func:`isolate_rng`, and the global seed is set again right before the student is built,
so the student's initialisation and data order never depend on whether a teacher was
trained or reused, or whether a cache existed.
"""

from __future__ import annotations

import csv
import json
import logging
import secrets
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.utilities.seed import isolate_rng

from crossdistill import builders
from crossdistill.callbacks import RngStateCheckpoint
from crossdistill.checkpoint_io import AtomicCheckpointIO
from crossdistill.losses import LossComposer
from crossdistill.modules import TeacherModule
from crossdistill.resume import latest_good_checkpoint, load_run_config
from crossdistill.sweeps.ddp_children import children_run_this_job
from crossdistill.sweeps.status import FAILED, OK, JobStatus, error_line, write_status
from crossdistill.utils import teacher_store
from crossdistill.utils.config import print_config_tree, save_resolved_config
from crossdistill.utils.loggers import STUDENT, TEACHER, finish_runs, is_wandb, log_config
from crossdistill.validation import ConfigError, teacher_checkpoint, validate_train_config

log = logging.getLogger("crossdistill")


def _callbacks(cfg: DictConfig, stage_dir: Path) -> list[pl.Callback]:
    callbacks = builders.build_callbacks(cfg)
    for cb in callbacks:
        if isinstance(cb, pl.callbacks.ModelCheckpoint):
            cb.dirpath = str(stage_dir / "checkpoints")
    return [*callbacks, RngStateCheckpoint()]  # always: exact resume needs it


def _test_ckpt(cfg: DictConfig, trainer: pl.Trainer) -> str | None:
    """'best' (selected on validation) unless the config asks for 'last' (paper protocol)."""
    if trainer.fast_dev_run or trainer.checkpoint_callback is None:
        return None
    if cfg.test_ckpt == "last":
        return trainer.checkpoint_callback.last_model_path or None
    if cfg.test_ckpt == "best":
        return trainer.checkpoint_callback.best_model_path or None
    raise ValueError(f"test_ckpt must be 'best' or 'last', got {cfg.test_ckpt!r}")  # validated


def _scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()}


def checkpoint_step(checkpoint: str | Path) -> int | None:
    """The ``global_step`` saved in a Lightning checkpoint (memory-mapped: the weights are
    not read)."""
    return torch.load(checkpoint, map_location="cpu", weights_only=False, mmap=True).get(
        "global_step"
    )


def _continue_csv_logs(loggers: list, step: int) -> None:
    """CSV loggers continue ``metrics.csv`` when a stage resumes at ``step``; the rows
    logged after it (the work a kill lost, done again now) are dropped. (TensorBoard drops
    its events by ``purge_step``, given when it is built.)"""
    for logger in loggers:
        if not isinstance(logger, CSVLogger):
            continue
        metrics_file = Path(logger.log_dir) / "metrics.csv"
        if not metrics_file.is_file():
            continue
        with metrics_file.open(newline="") as file:
            reader = csv.DictReader(file)
            header = list(reader.fieldnames or [])
            kept = [row for row in reader if not row.get("step") or float(row["step"]) < step]
        writer = logger.experiment  # Lightning's CSV writer deletes metrics.csv when created
        writer.metrics_keys = header  # ... and appends to it while the header fits
        with metrics_file.open("w", newline="") as file:
            rows = csv.DictWriter(file, fieldnames=header)
            rows.writeheader()
            rows.writerows(kept)


def fit_and_test(
    cfg: DictConfig,
    module: pl.LightningModule,
    datamodule,
    stage_dir: Path,
    stage: str = STUDENT,
    resume_from: str | Path | None = None,
    **trainer_kw,
) -> tuple[dict[str, float], str | None]:
    """Fit (from ``resume_from``, a Lightning checkpoint, if given), then validate and test
    the selected checkpoint; return its val + test metrics (sweepers optimise a ``val/``
    metric: model selection never looks at test).

    The stage logs to the configured loggers (``builders.build_loggers(cfg, stage)``), the
    resolved config as their hyperparameters; its W&B run ends with the stage. Checkpoints
    are written atomically and carry the random-generator states."""
    resume_step = None
    if resume_from is not None:
        resume_from = str(resume_from)
        resume_step = checkpoint_step(resume_from)
    trainer = builders.build_trainer(
        cfg,
        callbacks=_callbacks(cfg, stage_dir),
        logger=builders.build_loggers(cfg, stage, resume_step) or False,
        plugins=[AtomicCheckpointIO()],
        **trainer_kw,
    )
    try:
        if resume_step is not None:
            _continue_csv_logs(trainer.loggers, resume_step)
        log_config(trainer.loggers, cfg)  # fast_dev_run: Lightning's dummy logger, no-op
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from, weights_only=False)
        ckpt = _test_ckpt(cfg, trainer)
        metrics: dict[str, float] = {}
        for run in (trainer.validate, trainer.test):
            results = run(module, datamodule=datamodule, ckpt_path=ckpt, weights_only=False)
            metrics.update(_scalar_metrics(results[0] if results else {}))
    finally:
        finish_runs(trainer.loggers)
    return metrics, ckpt


def obtain_teacher(cfg: DictConfig, datamodule, run_dir: Path) -> tuple[TeacherModule, dict]:
    """The teacher of the run, recorded in ``<run dir>/teacher/`` (weights, metrics,
    source): on resume the one recorded there; else ``teacher.ckpt_path``; else a teacher
    whose training this run started (resumed from its latest good checkpoint); else a
    cached teacher for this data/teacher/seed; else one trained into the run dir."""
    teacher = builders.build_teacher_module(cfg, datamodule)
    stage_dir = run_dir / "teacher"
    resuming = bool(cfg.get("resume"))
    if resuming and (recorded := teacher_store.recorded_teacher(stage_dir)):
        teacher_store.load_weights(teacher, recorded[0])
        log.info("resume: the run's recorded teacher %s", recorded[0])
        return teacher, recorded[1]
    if cfg.teacher.get("ckpt_path"):
        source = teacher_checkpoint(cfg.teacher.ckpt_path)
        teacher_store.load_weights(teacher, source)
        teacher_store.record_teacher(stage_dir, source, {}, source)
        log.info("teacher loaded from %s", cfg.teacher.ckpt_path)
        return teacher, {}
    resume_from = latest_good_checkpoint(stage_dir / "checkpoints") if resuming else None
    teacher_data = builders.teacher_stage_data(datamodule)  # e.g. a face-only identity pool
    key = builders.teacher_cache_key(cfg, datamodule)
    cached = Path(cfg.paths.teacher_cache_dir) / key / "teacher.ckpt"
    reusable = cfg.teacher.get("reuse", True) and not cfg.trainer.get("fast_dev_run")
    shared = reusable and resume_from is None  # reads or writes the shared teacher cache
    with teacher_store.training_lock(cached.parent, enabled=shared):
        if shared and cached.exists():
            teacher_store.load_weights(teacher, cached)
            metrics_file = cached.parent / "metrics.json"
            metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
            teacher_store.record_teacher(stage_dir, cached, metrics, cached)
            log.info("reusing the teacher trained for this data/teacher/seed: %s", cached)
            return teacher, metrics
        if resume_from is not None:
            log.info("resume: training the teacher on from %s", resume_from)
        else:
            log.info("training the teacher (%s epochs)", cfg.teacher.max_epochs)
        metrics, ckpt = fit_and_test(
            cfg,
            teacher,
            teacher_data,
            stage_dir,
            stage=TEACHER,
            resume_from=resume_from,
            max_epochs=cfg.teacher.max_epochs,
        )
        if ckpt:
            teacher_store.load_weights(teacher, ckpt)
        weights = stage_dir / teacher_store.RECORD_WEIGHTS
        teacher_store.save_weights_atomically(teacher, weights)
        if pl.utilities.rank_zero_only.rank == 0:
            teacher_store.record_teacher(stage_dir, weights, metrics, "trained in this run")
            if not cfg.trainer.get("fast_dev_run"):
                teacher_store.save_weights_atomically(teacher, cached)
                (cached.parent / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return teacher, metrics


def _pin_wandb_ids(cfg: DictConfig) -> None:
    """Give every W&B logger of a new run a fixed run id (saved with config.yaml) that a
    resume continues (``resume: allow``) instead of starting a new W&B run."""
    for node in (cfg.get("logger") or {}).values():
        if builders.is_enabled(node) and is_wandb(node):
            with open_dict(node):
                node.id = node.get("id") or secrets.token_hex(4)
                node.resume = node.get("resume") or "allow"


def _start_or_resume(cfg: DictConfig) -> tuple[DictConfig, Path]:
    """A new run writes its config.yaml; a resumed one reads it (``resume.load_run_config``)
    and must sit where it ran (its config holds absolute paths)."""
    if cfg.get("resume"):
        cfg = load_run_config(cfg.resume, cfg)
        run_dir = Path(cfg.paths.output_dir)
        if run_dir.resolve() != Path(cfg.resume).resolve():
            raise ConfigError(
                f"resume={cfg.resume}: the run was written to {run_dir} and its config holds "
                "that path; resume it there (move it back)"
            )
        validate_train_config(cfg)
        log.info("resuming run %s (config: %s)", run_dir, run_dir / "config.yaml")
        return cfg, run_dir
    validate_train_config(cfg)
    run_dir = Path(cfg.paths.output_dir)
    _pin_wandb_ids(cfg)
    config_file = save_resolved_config(cfg, run_dir)
    if cfg.get("print_config", True):
        print_config_tree(cfg, config_file)
    return cfg, run_dir


def train(cfg: DictConfig) -> dict[str, Any]:
    """One run, or with ``resume=<run dir>`` the rest of a killed one (docs: README,
    "Resume"): each stage continues from its latest good checkpoint."""
    cfg, run_dir = _start_or_resume(cfg)
    pl.seed_everything(cfg.seed, workers=True)

    loss = LossComposer(OmegaConf.to_container(cfg.distill, resolve=True))
    teacher_only = cfg.get("stop_after") == TEACHER  # checked to need a teacher (validation)
    datamodule = builders.build_datamodule(cfg)
    teacher, teacher_metrics = None, {}
    if builders.loss_needs_teacher(loss):
        with isolate_rng():  # trained or reused, the teacher leaves the streams as they were
            teacher, teacher_metrics = obtain_teacher(cfg, datamodule, run_dir)
            teacher = builders.teacher_over_student_classes(teacher, datamodule, loss)
    if teacher_only:
        return _write_summary(run_dir, {"run_dir": str(run_dir), "teacher": teacher_metrics})
    # the student's streams start here, whatever ran before (data generation, teacher)
    pl.seed_everything(cfg.seed, workers=True)
    module = builders.build_student_module(cfg, datamodule, loss, teacher)
    with isolate_rng():
        builders.fit_channel_mask(module, datamodule)  # teacher.keep_channels, if set

    resume_from = cfg.get("ckpt_path")
    if cfg.get("resume"):
        resume_from = latest_good_checkpoint(run_dir / "checkpoints") or resume_from
        log.info("resume: student stage from %s", resume_from or "the start")
    metrics, ckpt = fit_and_test(cfg, module, datamodule, run_dir, resume_from=resume_from)
    summary = {
        "run_dir": str(run_dir),
        "checkpoint": ckpt,
        "teacher": teacher_metrics,
        "student": metrics,
    }
    return _write_summary(run_dir, summary)


def _write_summary(run_dir: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """``<run dir>/metrics.json`` (rank 0) and the log lines of a finished run."""
    if pl.utilities.rank_zero_only.rank == 0:  # one writer under DDP
        (run_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
        if "student" in summary:
            log.info("student test metrics: %s", json.dumps(summary["student"]))
        if summary["teacher"]:
            log.info("teacher test metrics: %s", json.dumps(summary["teacher"]))
        log.info("run dir: %s  (eval: crossdistill-eval run_dir=%s)", run_dir, run_dir)
    return summary


def run_task(cfg: DictConfig) -> float | None:
    """Run ``train``; always close wandb, even on a crash; return the optimised metric.

    A single run raises its error (non-zero exit). Inside a multirun the job never stops
    the sweep: its error goes to the job's log, ``status.json`` in the job dir records it
    (see :mod:`crossdistill.sweeps.status`) and the job returns None; the sweep's summary
    and exit code come from :class:`crossdistill.tables.callback.MultirunTable`.
    """
    if not in_multirun():
        return _optimized_metric(cfg, _train_and_close_wandb(cfg))
    job_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        with children_run_this_job():  # DDP ranks 1.. re-run this job, not the sweep
            summary = _train_and_close_wandb(cfg)
    except Exception as error:  # noqa: BLE001 - one failed job never stops the sweep
        log.exception("job failed; the sweep goes on (job dir %s)", job_dir)
        _write_job_status(job_dir, FAILED, error_line(error))
        return None
    _write_job_status(job_dir, OK)
    return _optimized_metric(cfg, summary)


def in_multirun() -> bool:
    """Whether this job runs inside a Hydra multirun (`-m` or `hydra.mode: MULTIRUN`)."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _write_job_status(job_dir: Path, status: str, error: str = "") -> None:
    if pl.utilities.rank_zero_only.rank != 0:  # SLURM ranks run the job each: one writer
        return
    hydra_cfg = HydraConfig.get()
    job = hydra_cfg.job.get("num")
    overrides = [str(o) for o in hydra_cfg.overrides.task]
    write_status(job_dir, JobStatus(job, overrides, status, error, str(job_dir)))


def _train_and_close_wandb(cfg: DictConfig) -> dict[str, Any]:
    try:
        return train(cfg)
    finally:
        try:
            import wandb

            if wandb.run is not None:
                wandb.finish()
        except ImportError:  # pragma: no cover
            pass


def _optimized_metric(cfg: DictConfig, summary: dict[str, Any]) -> float | None:
    name = cfg.get("optimized_metric", "val/acc")
    if "student" not in summary:  # stop_after=teacher: nothing of the student to optimise
        return None
    value = summary["student"].get(name)
    if value is None:
        log.warning("optimized_metric %r not among %s", name, sorted(summary["student"]))
        return None
    return float(value)
