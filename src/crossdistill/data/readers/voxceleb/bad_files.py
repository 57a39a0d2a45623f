"""The ``on_bad_file`` policy: a corrupt, empty or unusable file raises an error naming it, or
(``skip``) is recorded, counted and logged."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

BAD_FILE_POLICIES = ("raise", "skip")


class BadFileError(RuntimeError):
    """A corrupt, empty or unreadable data file."""


class BadFileLog:
    """Applies the ``on_bad_file`` policy: raise naming the file, or record and go on."""

    def __init__(self, policy: str = "raise"):
        if policy not in BAD_FILE_POLICIES:
            raise ValueError(f"data.on_bad_file={policy!r}; valid: {list(BAD_FILE_POLICIES)}")
        self.policy = policy
        self.skipped: list[tuple[str, str]] = []  # (path, reason)

    def report(self, path: str | Path, reason: str) -> None:
        if self.policy == "raise":
            raise BadFileError(f"{reason}: {path} (set data.on_bad_file=skip to skip and "
                               "count such files instead)")
        self.skipped.append((str(path), reason))

    def log_summary(self, what: str = "data") -> None:
        if self.skipped:
            lines = "\n".join(f"  {p}: {r}" for p, r in self.skipped)
            log.warning("skipped %d bad file(s) in %s (data.on_bad_file=skip):\n%s",
                        len(self.skipped), what, lines)
