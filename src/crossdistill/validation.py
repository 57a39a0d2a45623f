"""Checks of a composed config that run before anything is created.

Each failure is one :class:`ConfigError` line naming the key or file, the bad value and
what would be valid (Hydra prints such errors without a traceback). The checks are light
(no torch import unless a GPU or ``stop_after=teacher`` is asked for), and run twice
cheaply: from the Hydra callbacks below before Hydra creates the run dir, and again in the
pipeline for jobs started without the command line (tests, sweeps, scripts).
"""

from __future__ import annotations

import difflib
import sys
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from hydra.errors import CompactHydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from crossdistill.utils.config import CONFIG_DIR

TEST_CKPT_CHOICES = ("best", "last")
MONITOR_MODES = ("min", "max")
STOP_AFTER_CHOICES = (None, "teacher")
GPU_ACCELERATORS = ("gpu", "cuda")


class ConfigError(CompactHydraException, ValueError):
    """A bad config value or input file, reported as one line before anything runs."""


def _nearest(name: str, valid: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, sorted(valid), n=1, cutoff=0.6)
    return f" (did you mean `{close[0]}`?)" if close else ""


def known_top_level_keys(config_name: str = "train") -> set[str]:
    """Keys of the shipped primary config ``<config_name>.yaml`` (package ``crossdistill.conf``)
    and of its default groups."""
    primary = OmegaConf.load(CONFIG_DIR / f"{config_name}.yaml")
    keys = {str(k) for k in primary if k != "defaults"} | {"hydra"}
    for entry in primary.get("defaults", []):
        if isinstance(entry, str):
            continue  # _self_
        for group in entry:
            keys.add(str(group).removeprefix("override ").split("@")[-1].split("/")[0])
    return keys


def check_top_level_keys(cfg: DictConfig, config_name: str = "train") -> None:
    """An unknown top-level key (``+distil.kd.weight=1``) would be silently ignored."""
    known = known_top_level_keys(config_name)
    for key in cfg:
        if key not in known:
            raise ConfigError(
                f"unknown top-level config key `{key}`{_nearest(str(key), known)}; "
                f"valid keys: {', '.join(sorted(known))}"
            )


def check_checkpoint_file(path: str | Path, key: str) -> None:
    """``path`` must be a complete PyTorch checkpoint (a zip archive whose members read
    back with matching CRCs): an empty or truncated file is named before anything runs."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ConfigError(f"{key}={path}: file not found")
    if not path.is_file():
        raise ConfigError(f"{key}={path}: not a file (give a .ckpt file)")
    if path.stat().st_size == 0:
        raise ConfigError(f"{key}={path}: the file is empty (0 bytes); give a complete checkpoint")
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except zipfile.BadZipFile:
        raise ConfigError(
            f"{key}={path}: not a complete PyTorch checkpoint (truncated, or not written by "
            "torch.save); give a complete .ckpt file"
        ) from None
    if bad is not None:
        raise ConfigError(f"{key}={path}: corrupt checkpoint (member {bad} fails its CRC check)")


def teacher_checkpoint(path: str | Path) -> Path:
    """A teacher checkpoint, or a run dir: the file it would load from there (the run's
    selected ``teacher.ckpt`` or ``teacher/teacher.ckpt``)."""
    path = Path(path).expanduser()
    if not path.is_dir():
        return path
    for candidate in (path / "teacher.ckpt", path / "teacher" / "teacher.ckpt"):
        if candidate.exists():
            return candidate
    raise ConfigError(
        f"teacher.ckpt_path={path}: a folder without teacher.ckpt or teacher/teacher.ckpt; "
        "give a teacher checkpoint or a crossdistill run dir"
    )


def check_devices(trainer: DictConfig | dict[str, Any]) -> None:
    """``trainer.accelerator=gpu`` on a machine without a usable GPU fails here, not after
    the teacher trained."""
    accelerator = str(trainer.get("accelerator", "auto"))
    if accelerator not in GPU_ACCELERATORS:
        return
    import torch

    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if available == 0:
        raise ConfigError(
            f"trainer.accelerator={accelerator} but no CUDA GPU is visible; use trainer=default "
            "(CPU) or trainer=ddp_cpu here"
        )
    devices = trainer.get("devices", 1)
    if isinstance(devices, int) and devices > available:
        raise ConfigError(
            f"trainer.devices={devices} but {available} GPU(s) are visible; use at most "
            f"{available} (or -1 for all)"
        )


def check_stop_after(cfg: DictConfig) -> None:
    """``stop_after`` is null or ``teacher``, and ``teacher`` only with a loss that reads one."""
    stop_after = cfg.get("stop_after")
    if stop_after not in STOP_AFTER_CHOICES:
        raise ConfigError(
            f"stop_after={stop_after!r} is not valid; use null (the whole run) or "
            "teacher (train or reuse the teacher, then stop)"
        )
    if stop_after != "teacher":
        return
    from crossdistill.builders import loss_needs_teacher  # torch: only for this case
    from crossdistill.losses import LossComposer

    if not loss_needs_teacher(LossComposer(OmegaConf.to_container(cfg.distill, resolve=True))):
        raise ConfigError(
            "stop_after=teacher, but this run's distill loss uses no teacher; choose a "
            "distill config with a teacher term (e.g. distill=kd)"
        )


def validate_train_config(cfg: DictConfig) -> None:
    """Every check of a ``crossdistill-train`` config (raises :class:`ConfigError`)."""
    check_top_level_keys(cfg)
    if cfg.test_ckpt not in TEST_CKPT_CHOICES:
        raise ConfigError(
            f"test_ckpt={cfg.test_ckpt!r} is not valid; use one of {list(TEST_CKPT_CHOICES)}"
            f"{_nearest(str(cfg.test_ckpt), TEST_CKPT_CHOICES)}"
        )
    check_stop_after(cfg)
    if cfg.monitor_mode not in MONITOR_MODES:
        raise ConfigError(
            f"monitor_mode={cfg.monitor_mode!r} is not valid; use one of {list(MONITOR_MODES)}"
        )
    for key in ("monitor", "optimized_metric"):
        value = cfg.get(key)
        if value is None or not str(value).startswith("val/"):
            raise ConfigError(
                f"{key}={value!r}: model selection and sweeps must use a validation metric "
                f"(`val/...`, e.g. val/acc or val/eer); test metrics are only reported"
            )
    if cfg.get("ckpt_path"):
        check_checkpoint_file(cfg.ckpt_path, "ckpt_path")
    if cfg.teacher.get("ckpt_path"):
        check_checkpoint_file(teacher_checkpoint(cfg.teacher.ckpt_path), "teacher.ckpt_path")
    check_devices(cfg.trainer)


def check_run_dir(cfg: DictConfig, config_name: str) -> None:
    """``run_dir`` of ``crossdistill-eval`` / ``-diagnose`` must be a training run dir."""
    check_top_level_keys(cfg, config_name)
    run_dir = str(cfg.get("run_dir") or "")
    if not run_dir.strip():
        raise ConfigError("run_dir is empty; give a crossdistill run dir: run_dir=<run dir>")
    path = Path(run_dir).expanduser()
    if not (path / "config.yaml").is_file():
        raise ConfigError(
            f"run_dir={path} is not a crossdistill run dir (no config.yaml in it); give "
            "outputs/<task>/runs/<date>_<time>_<id>"
        )
    if cfg.get("ckpt") not in ("auto", "best", "last"):
        check_checkpoint_file(cfg.ckpt, "ckpt")


def validate_eval_config(cfg: DictConfig) -> None:
    """``crossdistill-eval``: ``run_dir`` must be a run dir, ``ckpt`` a readable file."""
    check_run_dir(cfg, "eval")
    if cfg.get("stage") not in ("student", "teacher"):
        raise ConfigError(f"stage={cfg.get('stage')!r} is not valid; use student or teacher")
    if cfg.get("split") not in ("test", "val"):
        raise ConfigError(f"split={cfg.get('split')!r} is not valid; use test or val")


def _exit_on_config_error(check: Callable[[], None]) -> None:
    """Run ``check``; on a :class:`ConfigError` print its one line and exit (status 2).
    Hydra turns exceptions in callbacks into warnings, so the callback exits itself."""
    try:
        check()
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


class ValidateTrainConfig(Callback):
    """Hydra callback: check a single run's config before Hydra creates its run dir."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _exit_on_config_error(lambda: validate_train_config(config))


class ValidateEvalConfig(Callback):
    """Hydra callback: check ``crossdistill-eval``'s config before anything is written."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _exit_on_config_error(lambda: validate_eval_config(config))


class ValidateDiagnoseConfig(Callback):
    """Hydra callback: check ``crossdistill-diagnose``'s ``run_dir`` before anything is written."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _exit_on_config_error(lambda: check_run_dir(config, "diagnose"))
