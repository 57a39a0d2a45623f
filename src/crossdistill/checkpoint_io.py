"""Checkpoint files written atomically: a kill while saving never leaves a truncated file
under a checkpoint's name."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO


def write_atomically(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """``write`` into a temporary file beside ``path``, fsync it, rename it over ``path``
    and fsync the folder: ``path`` is the old or the new file, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
    return path


def save_atomically(obj: Any, path: str | Path) -> None:
    """``torch.save`` of ``obj`` to ``path`` by :func:`write_atomically`."""
    write_atomically(path, lambda file: torch.save(obj, file))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's local checkpoint IO with :func:`save_atomically` (local paths only)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        save_atomically(checkpoint, path)
