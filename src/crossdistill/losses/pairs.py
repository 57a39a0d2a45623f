"""Config parsing shared by the terms that compare pairs of tapped features."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def parse_feature_pairs(pairs: Any, where: str) -> list[tuple[str, str]]:
    """``[{student: <name>, teacher: <name>}, ...]`` as ``[(student, teacher), ...]``.

    ``where`` names the config key in errors (e.g. ``feature_hint.pairs``).
    """
    if isinstance(pairs, (str, Mapping)) or not isinstance(pairs, Sequence) or not pairs:
        raise ValueError(
            f"{where} must be a non-empty list of {{student: <name>, teacher: <name>}}, "
            f"got {pairs!r}"
        )
    parsed = []
    for k, pair in enumerate(pairs):
        if not isinstance(pair, Mapping) or set(pair) != {"student", "teacher"}:
            raise ValueError(
                f"{where}[{k}] must be {{student: <name>, teacher: <name>}}, got {pair!r}"
            )
        parsed.append((str(pair["student"]), str(pair["teacher"])))
    return parsed
