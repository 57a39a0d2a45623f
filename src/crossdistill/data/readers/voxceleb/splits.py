"""Identity lists and deterministic identity-disjoint train/val/test splits."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import numpy as np


def read_identity_list(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"identity list not found: {path} (one identity per line)")
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def split_identities(identities: Sequence[str], n_val: int | float, n_test: int | float,
                     seed: int, test_identities: Collection[str] | None = None,
                     val_identities: Collection[str] | None = None,
                     ) -> dict[str, list[str]]:
    """Deterministic identity-disjoint train/val/test split (counts, or fractions < 1).

    ``test_identities`` / ``val_identities`` (e.g. the speakers of given trial lists) fix
    those splits; the others are drawn from the remaining identities with ``seed``."""
    ids = sorted(set(identities))
    rng = np.random.default_rng(seed)

    def count(x: int | float) -> int:
        return int(round(x * len(ids))) if isinstance(x, float) and 0 < x < 1 else int(x)

    out: dict[str, list[str]] = {}
    rest = ids
    for name, n, fixed in (("test", n_test, test_identities), ("val", n_val, val_identities)):
        if fixed is not None:
            chosen = sorted(set(fixed))
            missing = sorted(set(chosen) - set(rest))
            if missing:
                raise ValueError(f"{name} identities {missing[:10]} are not in the data or "
                                 "are already in another split")
        else:
            k = count(n)
            if k >= len(rest):
                raise ValueError(f"cannot take {k} {name} identities out of {len(rest)} left "
                                 f"({len(ids)} in total) and keep a non-empty train split; "
                                 "lower n_val_identities / n_test_identities")
            chosen = sorted(rest[i] for i in rng.permutation(len(rest))[:k])
        out[name] = chosen
        rest = [i for i in rest if i not in set(chosen)]
    if not rest:
        raise ValueError(f"no training identities left out of {len(ids)}")
    return {"train": rest, "val": out["val"], "test": out["test"]}


def check_disjoint(splits: Mapping[str, Sequence[str]]) -> None:
    names = list(splits)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            both = sorted(set(splits[a]) & set(splits[b]))
            if both:
                raise ValueError(f"splits {a!r} and {b!r} share identities {both[:10]}; "
                                 "splits must be identity-disjoint")

