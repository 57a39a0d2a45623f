"""Fingerprints of the files a datamodule reads (and of its sample list), for cache keys.

A cached teacher or a cached table of teacher features is valid only for the data it was
computed from. Keys therefore include a fingerprint of every input file
(``PairedDataModule.content_fingerprint``):

* ``content`` (default): sha256 of every file's bytes (and its path relative to its root):
  any change of any byte changes the key, whatever the timestamps say.
* ``stat``: size and modification time (ns) of every file: no file is read, for datasets
  too large to hash at every start (a change that keeps both size and mtime, e.g.
  ``cp -p`` of a same-size file, goes unnoticed).

``scripts/benchmark_distill.py`` measures what each mode costs on the built-in data.

Within one process (e.g. the seeds of a multirun) a file's content digest is computed once
and reused while its size, mtime, ctime, inode and device all stay the same (ctime cannot be
set back, so a rewrite followed by restoring the mtime still re-reads the file). Files
changed less than ``_SETTLED_NS`` before they were read are not remembered (timestamps are
coarser than the writes they should tell apart): :func:`settled_stat_key`.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

FINGERPRINT_MODES = ("content", "stat")
_CHUNK = 1 << 20
_SETTLED_NS = 2_000_000_000
T = TypeVar("T")
_digests: dict[tuple, str] = {}  # (path, size, mtime, ctime, inode, device) -> sha256


def _files_under(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"input path {path} does not exist (cannot fingerprint it)")
    found = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        found.extend(Path(dirpath) / name for name in sorted(filenames))
    return found


def _hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def settled_stat_key(path: Path) -> tuple | None:
    """(path, size, mtime, ctime, inode, device) of a file last changed more than
    ``_SETTLED_NS`` ago: while it stays the same, so do the file's bytes. None for a file
    changed more recently (timestamps are too coarse to tell its next write apart)."""
    st = path.stat()
    if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) <= _SETTLED_NS:
        return None
    return (str(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


def remembered(cache: dict[tuple, T], path: Path, compute: Callable[[Path], T]) -> T:
    """``compute(path)``, kept in ``cache`` under the file's :func:`settled_stat_key` and
    reused while that stays the same (a file changed too recently is computed each time)."""
    key = settled_stat_key(path)
    if key is None:
        return compute(path)
    if key not in cache:
        cache[key] = compute(path)
    return cache[key]


def _file_digest(path: Path) -> str:
    """sha256 of the file's bytes, remembered per process while its stat stays the same."""
    return remembered(_digests, path, _hash_file)


def fingerprint_paths(paths: Iterable[str | Path], mode: str = "content") -> str:
    """sha256 over every file in ``paths`` (files, or folders walked recursively in sorted
    order): each file's path relative to its root plus its contents (``content``) or its
    size and mtime (``stat``)."""
    if mode not in FINGERPRINT_MODES:
        raise ValueError(f"cache_check must be one of {FINGERPRINT_MODES}, got {mode!r}")
    h = hashlib.sha256(mode.encode())
    for root in sorted({Path(p).expanduser().resolve() for p in paths}):
        h.update(f"\0root\0{root.name}".encode())
        for file in _files_under(root):
            rel = file.relative_to(root).as_posix() if root.is_dir() else file.name
            if mode == "content":
                token = _file_digest(file)
            else:
                st = file.stat()
                token = f"{st.st_size}:{st.st_mtime_ns}"
            h.update(f"\0{rel}\0{token}".encode())
    return h.hexdigest()


def fingerprint_items(items: Iterable[str]) -> str:
    """sha256 of a list of sample names (e.g. the file of every sample, in index order):
    the same files in another order or subset give another key."""
    return hashlib.sha256("\n".join(items).encode()).hexdigest()
