"""Verification trial lists: read (with the line of any error), generate balanced ones, write."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

TRIAL_FORMAT = ("'<label 1|0> <enroll> <test>' per line with paths relative to the wav root, "
                "e.g. '1 id10270/x6uYqmx31kE/00001.wav id10270/8jEAjG6SegY/00008.wav'")


class TrialListError(ValueError):
    """A malformed trial list or one naming an unusable utterance."""


class Trial(NamedTuple):
    label: int  # 1 = same speaker, 0 = different
    enroll: str  # path relative to the wav root
    test: str


def read_trials(path: str | Path, wav_root: str | Path,
                allowed: Collection[str] | None = None,
                skipped: Mapping[str, str] | None = None,
                ) -> tuple[list[Trial], list[tuple[str, str]]]:
    """Parse a trial list; every path must exist under ``wav_root``.

    If ``allowed`` is given every path must be in it, except paths in ``skipped`` (files
    dropped by ``on_bad_file=skip``): their trials are dropped and returned as
    ``(description, reason)``. Any other problem raises :class:`TrialListError` with the
    line number."""
    path, wav_root = Path(path), Path(wav_root)
    if not path.is_file():
        raise FileNotFoundError(f"trial list not found: {path} (format {TRIAL_FORMAT})")
    trials: list[Trial] = []
    dropped: list[tuple[str, str]] = []
    skipped = skipped or {}
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        where = f"{path}, line {lineno}"
        if len(parts) != 3 or parts[0] not in ("0", "1"):
            raise TrialListError(f"{where}: malformed trial {line!r}; expected {TRIAL_FORMAT}")
        enroll, test = (p.removeprefix("./") for p in parts[1:])
        bad_ref = None
        for p in (enroll, test):
            if not (wav_root / p).is_file():
                raise TrialListError(f"{where}: utterance {p!r} not found at {wav_root / p}")
            if allowed is not None and p not in allowed:
                if p in skipped:
                    bad_ref = (f"{where}: trial dropped", f"{p} was skipped ({skipped[p]})")
                else:
                    raise TrialListError(f"{where}: utterance {p!r} is not in this split's "
                                         "utterances (its identity belongs to another split)")
        if bad_ref:
            dropped.append(bad_ref)
            continue
        trials.append(Trial(int(parts[0]), enroll, test))
    if not trials:
        raise TrialListError(f"{path}: no usable trials (format {TRIAL_FORMAT})")
    return trials, dropped


def make_trials(utts_by_identity: Mapping[str, Sequence[str]], n_trials: int,
                seed: int) -> list[Trial]:
    """Balanced random trials (half target, half non-target), no duplicate pairs.

    Target pairs use different videos when the identity has several (video = second path
    component). If fewer distinct target pairs exist than ``n_trials // 2``, the number of
    non-targets is lowered to match."""
    rng = np.random.default_rng(seed)
    ids = sorted(k for k, v in utts_by_identity.items() if v)
    tgt_ids = [i for i in ids if len(utts_by_identity[i]) >= 2]
    seen: set[frozenset[str]] = set()
    out: list[Trial] = []
    n_target = n_trials // 2 if tgt_ids else 0

    def pick(xs: Sequence[str]) -> str:
        return xs[int(rng.integers(len(xs)))]

    for label in (1, 0):
        # non-targets: as many as the targets actually made (balanced lists)
        n = n_target if label == 1 else (0 if len(ids) < 2 else len(out) if tgt_ids else n_trials)
        made, attempts = 0, 0
        while made < n and attempts < 50 * n + 100:
            attempts += 1
            if label == 1:
                utts = utts_by_identity[pick(tgt_ids)]
                a = pick(utts)
                others = [u for u in utts if _video(u) != _video(a)] or [u for u in utts if u != a]
                b = pick(others)
            else:
                i, j = rng.choice(len(ids), size=2, replace=False)
                a, b = pick(utts_by_identity[ids[i]]), pick(utts_by_identity[ids[j]])
            key = frozenset((a, b))
            if key in seen:
                continue
            seen.add(key)
            out.append(Trial(label, a, b))
            made += 1
    return [out[k] for k in rng.permutation(len(out))]


def write_trials(path: str | Path, trials: Iterable[Trial]) -> None:
    Path(path).write_text("".join(f"{t.label} {t.enroll} {t.test}\n" for t in trials))


def _video(rel: str) -> str:
    parts = rel.split("/")
    return parts[1] if len(parts) > 2 else ""

