"""Frozen-teacher feature cache: the teacher's embeddings for a whole dataset, computed
once, stored as ONE ``.npy`` file read back by memory map, plus a JSON sidecar.

The cache key hashes the teacher weights (every ``state_dict`` tensor's bytes, names,
shapes, dtypes and the module class), the caller's data fingerprint and the preprocessing
config, so changing any of them selects a different cache. Files, for key ``k``::

    <cache_dir>/<k>.npy    float array [num_samples, dim], row i = dataset index i
    <cache_dir>/<k>.json   sidecar; its presence with ``complete: true`` marks a valid cache

``build`` writes into a temporary file and publishes it (``os.replace``, then the sidecar)
only after every row was written, so an interrupted build never leaves a cache that reads
as valid. Build on one process only (e.g. rank 0, then a barrier) in distributed runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.lib.format import open_memmap
from torch import Tensor, nn
from tqdm.auto import tqdm

FORMAT_VERSION = 1


def _canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def hash_state_dict(module: nn.Module) -> str:
    """sha256 over the class name and every ``state_dict`` entry (name, dtype, shape, bytes)."""
    h = hashlib.sha256()
    h.update(f"{type(module).__module__}.{type(module).__qualname__}".encode())
    for name, value in sorted(module.state_dict().items()):
        h.update(name.encode())
        if not isinstance(value, Tensor):  # e.g. extra state
            h.update(_canonical_json(value).encode())
            continue
        h.update(f"{value.dtype}{tuple(value.shape)}".encode())
        flat = value.detach().to("cpu").contiguous().reshape(-1)
        if flat.numel():
            h.update(flat.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class TeacherFeatureCache:
    """Teacher embeddings ``[num_samples, dim]`` keyed by :meth:`make_key`.

    Typical use::

        key = TeacherFeatureCache.make_key(teacher, {"dataset": ..., "files": ...}, preproc)
        cache = TeacherFeatureCache(cache_dir, key, len(dataset), teacher.embedding_dim)
        cache.ensure(teacher, ordered_loader)        # builds once, else reuses
        t_emb = cache.lookup(batch["index"], device)  # [B, dim] float32
    """

    def __init__(
        self,
        cache_dir: str | Path,
        key: str,
        num_samples: int,
        dim: int,
        dtype: str = "float32",
    ) -> None:
        if num_samples <= 0 or dim <= 0:
            raise ValueError(f"num_samples and dim must be > 0, got {num_samples}, {dim}")
        if np.dtype(dtype).kind != "f":
            raise ValueError(
                f"dtype must be a float dtype (float16/float32/float64), got {dtype!r}"
            )
        self.cache_dir = Path(cache_dir)
        self.key = key
        self.num_samples = int(num_samples)
        self.dim = int(dim)
        self.dtype = np.dtype(dtype).name
        self._array: np.ndarray | None = None

    # ----------------------------------------------------------------- keys and files
    @staticmethod
    def make_key(
        teacher: nn.Module,
        data_fingerprint: str | Mapping[str, Any],
        preprocessing: Mapping[str, Any] | None = None,
    ) -> str:
        """Hash of (teacher weights, data fingerprint, preprocessing config); 24 hex chars."""
        h = hashlib.sha256()
        h.update(f"v{FORMAT_VERSION}".encode())
        h.update(hash_state_dict(teacher).encode())
        h.update(_canonical_json(data_fingerprint).encode())
        h.update(_canonical_json(dict(preprocessing or {})).encode())
        return h.hexdigest()[:24]

    @property
    def array_path(self) -> Path:
        return self.cache_dir / f"{self.key}.npy"

    @property
    def meta_path(self) -> Path:
        return self.cache_dir / f"{self.key}.json"

    def _expected_meta(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "key": self.key,
            "num_samples": self.num_samples,
            "dim": self.dim,
            "dtype": self.dtype,
        }

    def exists(self) -> bool:
        """True iff a complete cache for this key is published. A published cache whose
        shape/dtype differ from this object's raises (the key should have differed)."""
        if not (self.meta_path.is_file() and self.array_path.is_file()):
            return False
        try:
            meta = json.loads(self.meta_path.read_text())
        except (OSError, json.JSONDecodeError):
            return False
        if not meta.get("complete"):
            return False
        expected = self._expected_meta()
        diff = {k: (meta.get(k), v) for k, v in expected.items() if meta.get(k) != v}
        if diff:
            raise ValueError(
                f"{self.meta_path}: cache for key {self.key} does not match the request "
                f"(found, expected): {diff}. Include the dataset length / teacher dim in the "
                f"data fingerprint, or delete {self.array_path} and {self.meta_path}."
            )
        return True

    # ---------------------------------------------------------------------- building
    def _remove_stale_temp_files(self) -> None:
        for tmp in self.cache_dir.glob(f"{self.key}.npy.tmp-*"):
            try:
                pid = int(tmp.name.split("tmp-")[1].split("-")[0])
            except (IndexError, ValueError):
                continue
            if not _pid_alive(pid):
                tmp.unlink(missing_ok=True)

    @torch.inference_mode()
    def build(
        self,
        teacher_fn: Callable[[Any], Tensor],
        dataloader: Iterable[Mapping[str, Any]],
        index_key: str = "index",
        input_key: str | None = "teacher_input",
        device: str | torch.device | None = None,
        progress: bool = True,
    ) -> TeacherFeatureCache:
        """Run ``teacher_fn`` over ``dataloader`` and publish the cache atomically.

        ``teacher_fn`` maps ``batch[input_key]`` (or the whole batch dict when ``input_key``
        is None), moved to ``device``, to ``[B, dim]``. An ``nn.Module`` is run in eval mode
        (its mode is restored afterwards). Every index in ``[0, num_samples)`` must be
        written, else nothing is published and a RuntimeError lists the missing indices.
        """
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._remove_stale_temp_files()
        self.close()
        tmp_path = self.cache_dir / f"{self.key}.npy.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        was_training = isinstance(teacher_fn, nn.Module) and teacher_fn.training
        if isinstance(teacher_fn, nn.Module):
            teacher_fn.eval()
        try:
            out = open_memmap(
                tmp_path, mode="w+", dtype=self.dtype, shape=(self.num_samples, self.dim)
            )
            written = np.zeros(self.num_samples, dtype=bool)
            total = len(dataloader) if hasattr(dataloader, "__len__") else None
            bar = tqdm(
                dataloader, total=total, desc=f"teacher cache {self.key[:8]}", disable=not progress
            )
            for step, batch in enumerate(bar):
                self._write_batch(
                    out, written, teacher_fn, batch, step, index_key, input_key, device
                )
            if not written.all():
                missing = np.flatnonzero(~written)
                raise RuntimeError(
                    f"teacher cache {self.key}: {missing.size}/{self.num_samples} indices were "
                    f"never written (first: {missing[:10].tolist()}); the dataloader must cover "
                    f"the whole dataset (no drop_last, no subset sampler)."
                )
            out.flush()
            del out
            os.replace(tmp_path, self.array_path)
            meta = {**self._expected_meta(), "complete": True, "num_written": int(written.sum())}
            tmp_meta = self.meta_path.with_name(tmp_path.name + ".json")
            tmp_meta.write_text(json.dumps(meta, indent=2))
            os.replace(tmp_meta, self.meta_path)
        except BaseException:
            tmp_path.unlink(missing_ok=True)
            self.meta_path.with_name(tmp_path.name + ".json").unlink(missing_ok=True)
            raise
        finally:
            if was_training:
                teacher_fn.train()
        return self

    def _write_batch(
        self,
        out: np.ndarray,
        written: np.ndarray,
        teacher_fn: Callable[[Any], Tensor],
        batch: Mapping[str, Any],
        step: int,
        index_key: str,
        input_key: str | None,
        device: str | torch.device | None,
    ) -> None:
        for key in (index_key, input_key):
            if key is not None and key not in batch:
                raise KeyError(f"batch {step} has no key {key!r}; keys: {sorted(batch)}")
        idx = torch.as_tensor(batch[index_key]).reshape(-1).cpu().numpy().astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_samples):
            raise IndexError(
                f"batch {step}: index out of range [0, {self.num_samples}): "
                f"min={idx.min()} max={idx.max()}"
            )
        if input_key is None:
            inputs: Any = {k: _to_device(v, device) for k, v in batch.items()}
        else:
            inputs = _to_device(batch[input_key], device)
        emb = teacher_fn(inputs)
        if not isinstance(emb, Tensor) or tuple(emb.shape) != (idx.size, self.dim):
            shape = tuple(emb.shape) if isinstance(emb, Tensor) else type(emb).__name__
            raise ValueError(
                f"batch {step}: teacher_fn returned {shape}, expected ({idx.size}, {self.dim})"
            )
        emb_np = emb.detach().float().cpu().numpy()
        if not np.isfinite(emb_np).all():
            bad = idx[~np.isfinite(emb_np).all(1)]
            raise ValueError(
                f"batch {step}: non-finite teacher output at indices {bad[:10].tolist()}"
            )
        out[idx] = emb_np
        written[idx] = True

    def ensure(self, teacher_fn: Callable[[Any], Tensor], dataloader: Iterable, **kwargs: Any):
        """``build`` unless a complete cache for this key already exists."""
        return self if self.exists() else self.build(teacher_fn, dataloader, **kwargs)

    # ----------------------------------------------------------------------- reading
    def _open(self) -> np.ndarray:
        if self._array is None:
            if not self.exists():
                raise FileNotFoundError(
                    f"no complete teacher cache {self.array_path} (+ {self.meta_path.name}); "
                    f"call build() first"
                )
            self._array = np.load(self.array_path, mmap_mode="r")
        return self._array

    def lookup(self, indices: Tensor, device: str | torch.device | None = None) -> Tensor:
        """Rows at dataset ``indices`` (any shape ``S``) as float32 ``[*S, dim]`` on ``device``."""
        array = self._open()
        idx = torch.as_tensor(indices).cpu().numpy().astype(np.int64, copy=False)
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_samples):
            raise IndexError(
                f"teacher cache lookup: index out of range [0, {self.num_samples}): "
                f"min={idx.min()} max={idx.max()}"
            )
        rows = torch.from_numpy(np.ascontiguousarray(array[idx.reshape(-1)], dtype=np.float32))
        rows = rows.reshape(*idx.shape, self.dim)
        return rows.to(device) if device is not None else rows

    def close(self) -> None:
        """Drop the memory map (it is reopened lazily)."""
        self._array = None

    def __len__(self) -> int:
        return self.num_samples

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers reopen the memmap
        state = self.__dict__.copy()
        state["_array"] = None
        return state


def _to_device(value: Any, device: str | torch.device | None) -> Any:
    if device is not None and isinstance(value, Tensor):
        return value.to(device, non_blocking=True)
    return value
