"""Where trained teachers live: a run's own ``teacher/`` dir and a shared cache keyed by a
hash of everything that determines the teacher (data, teacher config, seed)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from crossdistill.checkpoint_io import save_atomically
from crossdistill.utils.file_lock import exclusive_lock
from crossdistill.validation import check_checkpoint_file, teacher_checkpoint

log = logging.getLogger(__name__)


def teacher_key(
    cfg: DictConfig, data_fingerprint: str | None = None, config_in_files: tuple[str, ...] = ()
) -> str:
    """Hash of the resolved data + teacher config (minus ``ckpt_path``/``reuse``, the
    feature-cache switches and ``keep_channels``, which do not change the trained teacher)
    + seed + precision + the fingerprint of the data files
    (:func:`crossdistill.builders.data_fingerprint`), so a changed input file selects another
    teacher. ``config_in_files``: data keys (e.g. ``generator``) whose whole effect on the
    teacher stage is in those files; left out when there is a fingerprint."""
    teacher = OmegaConf.to_container(cfg.teacher, resolve=True)
    for k in ("ckpt_path", "reuse", "cache_features", "cache_dir", "keep_channels"):
        teacher.pop(k, None)
    data = OmegaConf.to_container(cfg.data, resolve=True)
    if data_fingerprint is not None:
        for k in config_in_files:
            data.pop(k, None)
    payload = {
        "data": data,
        "teacher": teacher,
        "seed": cfg.seed,
        "precision": str(cfg.trainer.get("precision")),
        "data_files": data_fingerprint,
    }
    return hashlib.sha256(repr(payload).encode()).hexdigest()[:16]


def _distributed_child() -> bool:
    """A process that Lightning's DDP launcher started (rank > 0): its rank 0 holds the lock."""
    ranks = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")
    return any(int(os.environ.get(name) or 0) > 0 for name in ranks)


@contextlib.contextmanager
def training_lock(cache_entry: Path, enabled: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on ``<cache_entry>.lock`` while checking for a cached teacher
    and training it, so that runs needing the same teacher at once (table cells in
    parallel, joblib sweeps) train it once: the others wait, then reuse it. DDP ranks > 0
    skip it (their rank 0 holds it while they train together)."""
    if not enabled or _distributed_child():
        yield
        return
    with exclusive_lock(cache_entry, "the same teacher"):
        yield


def load_weights(module: nn.Module, path: str | Path) -> None:
    """Load a Lightning checkpoint (or a plain state dict) strictly, naming the file."""
    path = teacher_checkpoint(path)  # a run dir: its selected teacher
    check_checkpoint_file(path, "checkpoint")  # empty / truncated: one line naming the file
    blob = torch.load(path, map_location="cpu", weights_only=False)
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else blob
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise RuntimeError(
            f"checkpoint {path} does not fit the configured teacher (check `teacher=` and "
            f"`data=` match the run that produced it): {err}"
        ) from err


def save_weights_atomically(module: nn.Module, path: Path) -> None:
    save_atomically({"state_dict": module.state_dict()}, path)


RECORD_WEIGHTS = "teacher.ckpt"
RECORD_METRICS = "metrics.json"
RECORD_SOURCE = "source.json"


def record_teacher(stage_dir: Path, weights: Path, metrics: dict, source: str) -> Path:
    """Record in a run's ``teacher/`` dir the teacher it used: its weights (a hard link to
    ``weights`` where the file system allows, else a copy; written atomically), its test
    metrics and where it came from, so eval and resume never need ``weights`` to still
    exist. Returns the recorded weights file."""
    stage_dir.mkdir(parents=True, exist_ok=True)
    target = stage_dir / RECORD_WEIGHTS
    if Path(weights).resolve() != target.resolve():
        tmp = stage_dir / f".{RECORD_WEIGHTS}.tmp{os.getpid()}"
        tmp.unlink(missing_ok=True)
        try:
            os.link(weights, tmp)
        except OSError:  # another file system, or links not allowed
            shutil.copyfile(weights, tmp)
        os.replace(tmp, target)
    (stage_dir / RECORD_METRICS).write_text(json.dumps(metrics, indent=2))
    (stage_dir / RECORD_SOURCE).write_text(json.dumps({"source": str(source)}, indent=2))
    return target


def recorded_teacher(stage_dir: Path) -> tuple[Path, dict] | None:
    """The teacher recorded in ``stage_dir`` (weights file, metrics), or None."""
    weights, metrics = stage_dir / RECORD_WEIGHTS, stage_dir / RECORD_METRICS
    if not (weights.is_file() and metrics.is_file()):
        return None
    return weights, json.loads(metrics.read_text())
