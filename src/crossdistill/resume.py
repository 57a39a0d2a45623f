"""Resuming a killed run from its run dir alone: ``crossdistill-train resume=<run dir>``.

The run dir holds everything a resume needs: the resolved ``config.yaml`` (read instead of
composing a new config), the command-line overrides of the first start
(``.hydra/overrides.yaml``, re-used so Hydra composes the same job), the stage checkpoints
(``checkpoints/``, ``teacher/checkpoints/``; model, optimizer, scheduler, loop, logger and
random-generator states) and the teacher the run used (``teacher/teacher.ckpt``).

Light module (no torch): the command line is checked before Hydra starts.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from crossdistill.validation import ConfigError, check_checkpoint_file

log = logging.getLogger("crossdistill")

RESUME_KEY = "resume"
# overrides that do not change what a run computes, accepted next to `resume=`
HARMLESS_OVERRIDES = ("print_config", "hydra.verbose", "trainer.enable_progress_bar")
LAST = "last.ckpt"
PREVIOUS_LAST = "last.previous.ckpt"  # the last.ckpt before the latest one (kept as fallback)


def run_config_file(run_dir: str | Path) -> Path:
    """``<run dir>/config.yaml``; one error line when ``run_dir`` is not a run dir."""
    path = Path(run_dir).expanduser()
    config_file = path / "config.yaml"
    if not config_file.is_file():
        raise ConfigError(
            f"resume={run_dir}: not a crossdistill run dir (no config.yaml in it); give the "
            "run dir of the run to resume, e.g. outputs/<task>/runs/<date>_<time>_<id>"
        )
    return config_file


def original_overrides(run_dir: str | Path) -> list[str]:
    """The command-line overrides the run was started with (without ``hydra.*``)."""
    overrides_file = Path(run_dir) / ".hydra" / "overrides.yaml"
    if not overrides_file.is_file():
        return []
    overrides = OmegaConf.to_container(OmegaConf.load(overrides_file))
    return [str(o) for o in overrides if not str(o).lstrip("+~").startswith("hydra.")]


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def refused_overrides(run_dir: str | Path, overrides: list[str]) -> list[str]:
    """Overrides next to ``resume=`` that would change the run: everything except
    :data:`HARMLESS_OVERRIDES` and the run's own original overrides repeated."""
    original = set(original_overrides(run_dir))
    return [
        o
        for o in overrides
        if _override_key(o) != RESUME_KEY
        and _override_key(o) not in HARMLESS_OVERRIDES
        and o not in original
    ]


def resume_command_line(args: list[str]) -> list[str]:
    """The Hydra command line for ``crossdistill-train resume=<run dir> [harmless ...]``:
    the run's original overrides, the accepted new ones, the run dir as ``hydra.run.dir``
    and no new ``.hydra/`` record (the first start's stays). ``args`` unchanged without
    ``resume=``; a :class:`ConfigError` for a refused override or a multirun."""
    resume = [a for a in args if _override_key(a) == RESUME_KEY and "=" in a]
    if not resume or resume[-1].split("=", 1)[1] in ("", "null"):
        return args
    run_dir = Path(resume[-1].split("=", 1)[1]).expanduser().absolute()
    run_config_file(run_dir)
    if any(a in ("-m", "--multirun") for a in args):
        raise ConfigError("resume= resumes one run; drop -m/--multirun")
    options = [a for a in args if a.startswith("-")]
    overrides = [a for a in args if not a.startswith("-")]
    refused = refused_overrides(run_dir, overrides)
    if refused:
        raise ConfigError(
            f"resume={run_dir}: these overrides would change the run and are refused: "
            f"{' '.join(refused)} (a resumed run uses its saved config.yaml; accepted: "
            f"{', '.join(HARMLESS_OVERRIDES)}; to train on with other settings start a new run "
            f"with ckpt_path=<run dir>/checkpoints/last.ckpt)"
        )
    accepted = [o for o in overrides if _override_key(o) in HARMLESS_OVERRIDES]
    return [
        *options,
        *original_overrides(run_dir),
        *accepted,
        f"resume={run_dir}",
        f"hydra.run.dir={run_dir}",
        "hydra.output_subdir=null",
    ]


def load_run_config(run_dir: str | Path, cfg: DictConfig | None = None) -> DictConfig:
    """The saved config of ``run_dir`` with ``resume`` set, plus the harmless values of
    ``cfg`` (the config composed for the resume command)."""
    saved = OmegaConf.load(run_config_file(run_dir))
    with open_dict(saved):
        saved[RESUME_KEY] = str(Path(run_dir).expanduser().absolute())
        for key in HARMLESS_OVERRIDES:
            value = None if cfg is None else OmegaConf.select(cfg, key)
            if value is not None and not key.startswith("hydra."):
                OmegaConf.update(saved, key, value, force_add=True)
    return saved


def latest_good_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest complete checkpoint of a stage: ``last.ckpt``, else the previous
    ``last.ckpt`` kept beside it, else the newest other one. Each incomplete file found on
    the way is reported as one error line naming it; the temporary files of a save that a
    kill interrupted are removed."""
    if not checkpoint_dir.is_dir():
        return None
    for partial in checkpoint_dir.glob(".*.ckpt.tmp*"):
        partial.unlink(missing_ok=True)
    others = sorted(
        (p for p in checkpoint_dir.glob("*.ckpt") if p.name not in (LAST, PREVIOUS_LAST)),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for path in (checkpoint_dir / LAST, checkpoint_dir / PREVIOUS_LAST, *others):
        if not path.is_file():
            continue
        try:
            check_checkpoint_file(path, "checkpoint")
        except ConfigError as err:
            log.error("skipping an incomplete checkpoint: %s", err)
            continue
        return path
    return None
