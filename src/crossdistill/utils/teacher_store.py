"""Where trained teachers live: a run's own ``teacher/`` dir and a shared cache keyed by a
hash of everything that determines the teacher (data, teacher config, seed)."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from crossdistill.validation import check_checkpoint_file, teacher_checkpoint

log = logging.getLogger(__name__)


def teacher_key(cfg: DictConfig, data_fingerprint: str | None = None) -> str:
    """Hash of the resolved data + teacher config (minus ``ckpt_path``/``reuse`` and the
    feature-cache switches, which do not change the teacher) + seed + precision + the
    fingerprint of the data files (:func:`crossdistill.builders.data_fingerprint`), so a
    changed input file selects another teacher."""
    teacher = OmegaConf.to_container(cfg.teacher, resolve=True)
    for k in ("ckpt_path", "reuse", "cache_features", "cache_dir"):
        teacher.pop(k, None)
    payload = {
        "data": OmegaConf.to_container(cfg.data, resolve=True),
        "teacher": teacher,
        "seed": cfg.seed,
        "precision": str(cfg.trainer.get("precision")),
        "data_files": data_fingerprint,
    }
    return hashlib.sha256(repr(payload).encode()).hexdigest()[:16]


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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save({"state_dict": module.state_dict()}, tmp)
    os.replace(tmp, path)
