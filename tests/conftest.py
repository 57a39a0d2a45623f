"""Shared fixtures: Hydra composition into a temporary output dir, no network, no wandb."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from crossdistill.utils.config import CONFIG_DIR, register_resolvers

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
register_resolvers()


@pytest.fixture
def compose_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """``compose_cfg(*overrides, config_name='train')`` -> config writing under tmp_path."""

    def _compose(*overrides: str, config_name: str = "train") -> DictConfig:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=list(overrides))
        if "paths" in cfg:
            with open_dict(cfg):
                cfg.paths.output_dir = str(tmp_path / "run")
                cfg.paths.log_dir = str(tmp_path / "logs")
                cfg.paths.data_dir = str(tmp_path / "data")
                cfg.paths.teacher_cache_dir = str(tmp_path / "teachers")
                cfg.print_config = False
        return cfg

    yield _compose
    GlobalHydra.instance().clear()
