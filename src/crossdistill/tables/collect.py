"""Read finished (or failed) runs of ``crossdistill-train`` from run and multirun dirs.

A run dir holds ``config.yaml`` (the resolved config), ``.hydra/overrides.yaml`` (the
command-line overrides of that job) and, once it finished, ``metrics.json``
(``{"student": {...}, "teacher": {...}}``). A multirun dir holds numbered run dirs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

RUN_MARKERS = ("metrics.json", "config.yaml", ".hydra/overrides.yaml")


@dataclass
class Run:
    """One training run: its overrides, flattened resolved config, seed and metrics.

    ``metrics`` holds the student's metrics under their logged names (``test/eer``) and the
    teacher's as ``teacher/<name>``; it is empty when the run did not finish (``failed``).
    """

    path: Path
    overrides: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    failed: bool = False
    has_overrides: bool = False


def is_run_dir(path: Path) -> bool:
    return any((path / marker).is_file() for marker in RUN_MARKERS)


def _natural_key(path: Path) -> list[Any]:
    """``2`` before ``10``: multirun job dirs in the order Hydra numbered them."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def parse_override(text: str) -> tuple[str, str]:
    """``+a.b=1`` -> ``("a.b", "1")``; ``~a.b`` -> ``("a.b", "<deleted>")``."""
    text = text.strip()
    if text.startswith("~"):
        return text.lstrip("~").split("=", 1)[0], "<deleted>"
    key, sep, value = text.lstrip("+").partition("=")
    if not sep:
        raise ValueError(f"override {text!r} is not of the form key=value")
    return key, value


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> ``{"a.b.c": leaf}`` (lists stay leaves)."""
    if not isinstance(node, dict):
        return {prefix: node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def load_run(path: Path) -> Run:
    """One run dir (missing ``metrics.json`` = a failed or unfinished run)."""
    run = Run(path=path)
    overrides_file = path / ".hydra" / "overrides.yaml"
    if overrides_file.is_file():
        items = yaml.safe_load(overrides_file.read_text()) or []
        run.overrides = dict(parse_override(str(item)) for item in items)
        run.has_overrides = True
    config_file = path / "config.yaml"
    if config_file.is_file():
        run.config = flatten(yaml.safe_load(config_file.read_text()) or {})
    seed = run.config.get("seed", run.overrides.get("seed"))
    run.seed = int(seed) if seed is not None and str(seed).lstrip("-").isdigit() else None
    metrics_file = path / "metrics.json"
    if not metrics_file.is_file():
        run.failed = True
        return run
    try:
        summary = json.loads(metrics_file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{metrics_file}: not valid JSON ({err})") from err
    if not isinstance(summary, dict) or not isinstance(summary.get("student"), dict):
        raise ValueError(f"{metrics_file}: expected {{'student': {{...}}, 'teacher': {{...}}}}")
    run.metrics = {k: float(v) for k, v in summary["student"].items() if _number(v)}
    for key, value in (summary.get("teacher") or {}).items():
        if _number(value):
            run.metrics[f"teacher/{key}"] = float(value)
    return run


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def find_runs(paths: Sequence[Path | str]) -> list[Run]:
    """Every run under ``paths`` (a run dir is one run; other dirs are searched
    recursively), in path order with numbers sorted numerically, each run once."""
    runs: list[Run] = []
    seen: set[Path] = set()
    for given in paths:
        path = Path(given)
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: no such run or multirun directory")
        for run_dir in _walk(path):
            real = run_dir.resolve()
            if real not in seen:
                seen.add(real)
                runs.append(load_run(run_dir))
    return runs


def _walk(path: Path) -> Iterable[Path]:
    if is_run_dir(path):
        yield path
        return
    for child in sorted((p for p in path.iterdir() if p.is_dir()), key=_natural_key):
        if child.name.startswith(".") or child.is_symlink():
            continue
        yield from _walk(child)
