"""Write a generated dataset folder once: reuse it when its manifest matches, else write it
to a temporary folder renamed into place (an interrupted run leaves no half-written folder;
a second process asking for the same folder meanwhile waits for it, then reuses it)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from crossdistill.utils.file_lock import exclusive_lock

log = logging.getLogger(__name__)


def write_once(
    root: Path, info: dict[str, Any], write: Callable[[Path], dict[str, Any]], what: str
) -> Path:
    """``root`` when its ``manifest.json`` holds ``info``; else ``write(tmp)`` fills a
    temporary folder and returns more manifest entries (counts, ...), the manifest
    ``{**info, **entries, "seconds": ...}`` is written and the folder renamed to ``root``.
    A manifest whose ``info`` differs (hash collision, edited manifest) is an error."""
    with exclusive_lock(root, what):
        return _write_once(root, info, write, what)


def _write_once(
    root: Path, info: dict[str, Any], write: Callable[[Path], dict[str, Any]], what: str
) -> Path:
    manifest = root / "manifest.json"
    if manifest.is_file():
        saved = json.loads(manifest.read_text())
        if all(saved.get(k) == json.loads(json.dumps(v, default=str)) for k, v in info.items()):
            return root
        raise RuntimeError(
            f"{manifest} exists but its parameters differ from the requested ones "
            f"(hash collision or edited manifest); delete {root} to regenerate"
        )
    t0 = time.time()
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{int(t0 * 1e6) % 10**9}"
    try:
        tmp.mkdir()
        entries = write(tmp)
        full = {**info, **entries, "seconds": round(time.time() - t0, 2)}
        (tmp / "manifest.json").write_text(json.dumps(full, indent=1, default=str))
        try:
            tmp.rename(root)
        except OSError:
            if not manifest.is_file():  # not a concurrent writer: re-raise
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("generated %s at %s in %.1fs", what, root, time.time() - t0)
    return root
