"""Hydra / OmegaConf helpers: resolvers, config printing and saving."""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from pathlib import Path

import rich.syntax
import rich.tree
from omegaconf import DictConfig, OmegaConf
from rich import print as rprint

PROJECT_ROOT = Path(__file__).resolve().parents[3]
CONFIG_DIR = PROJECT_ROOT / "conf"


def _unique_suffix() -> str:
    """pid + random hex: two runs started in the same second never share a run dir."""
    return f"{os.getpid()}{secrets.token_hex(2)}"


def register_resolvers() -> None:
    """``${project_root:}`` and ``${uid:}`` (cached: one value per process)."""
    if not OmegaConf.has_resolver("project_root"):
        OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))
    if not OmegaConf.has_resolver("uid"):
        OmegaConf.register_new_resolver("uid", _unique_suffix, use_cache=True)


def compose_config(config_name: str = "train", overrides: Sequence[str] = ()) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with ``overrides`` outside a Hydra app (no run
    dir, no job); the one way library code and scripts read a config."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


def print_config_tree(
    cfg: DictConfig,
    order: Sequence[str] = (
        "data",
        "teacher",
        "student",
        "distill",
        "projection",
        "quality",
        "trainer",
        "logger",
        "callbacks",
        "paths",
    ),
) -> None:
    """Print the composed config as a tree (one branch per group)."""
    tree = rich.tree.Tree("CONFIG", style="dim", guide_style="dim")
    keys = [k for k in order if k in cfg] + [k for k in cfg if k not in order]
    for key in keys:
        branch = tree.add(str(key), style="bold", guide_style="dim")
        node = cfg[key]
        text = OmegaConf.to_yaml(node, resolve=True) if isinstance(node, DictConfig) else str(node)
        branch.add(rich.syntax.Syntax(text, "yaml"))
    rprint(tree)


def save_resolved_config(cfg: DictConfig, run_dir: str | Path) -> Path:
    """Write ``config.yaml`` (fully resolved) into the run dir; eval reads only this."""
    path = Path(run_dir) / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return path
