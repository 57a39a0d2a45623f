"""Shared fixtures: Hydra composition into a temporary output dir, no network, no wandb."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from crossdistill.utils.config import CONFIG_PACKAGE, register_resolvers

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
register_resolvers()


@pytest.fixture
def compose_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """``compose_cfg(*overrides, config_name='train')`` -> config writing under tmp_path."""

    def _compose(*overrides: str, config_name: str = "train") -> DictConfig:
        GlobalHydra.instance().clear()
        with initialize_config_module(config_module=CONFIG_PACKAGE, version_base="1.3"):
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


# tiny built-in face -> voice data and models: a training run takes seconds
TINY_FACE_VOICE_DATA = {
    "n_identities": 8, "n_voice_factors": 3, "gamma": 0.5, "n_face_only": 1,
    "videos_per_identity": 2, "utterances_per_video": 2, "frames_per_video": 2,
    "utt_seconds_min": 0.6, "utt_seconds_max": 0.8, "image_size": 16,
    "n_val_identities": 2, "n_test_identities": 2, "n_trials": 12, "n_val_trials": 12,
    "n_teacher_identities": 6, "teacher_frames_per_identity": 2, "seed": 3,
}  # fmt: skip
TINY_FACE_VOICE = [
    *(f"data.generator.{k}={v}" for k, v in TINY_FACE_VOICE_DATA.items()),
    "data.image_size=16", "data.crop_seconds=0.5", "data.batch_size=8",
    "data.eval_batch_size=8", "student.encoder.channels=[8,8,8,8,24]",
    "student.encoder.n_mels=20", "student.encoder.embedding_dim=8",
    "student.encoder.attention_channels=4", "student.encoder.se_channels=4",
    "teacher.encoder.channels=[4,8,8,8]", "teacher.encoder.embedding_dim=8",
    "++projection.hidden_dim=8", "logger=[]",
]  # fmt: skip


# tiny built-in text -> image data and models: every stage runs in about a second
TINY_TEXT_IMAGE = [
    "data.synth.num_classes=3", "data.synth.train_per_class=12", "data.synth.val_per_class=4",
    "data.synth.test_per_class=4", "data.batch_size=8", "data.eval_batch_size=16",
    "data.min_freq=1", "student.encoder.channels=[4,8,8,8]", "student.encoder.embedding_dim=8",
    "teacher.encoder.d_model=8", "teacher.encoder.nhead=2", "teacher.encoder.num_layers=1",
    "teacher.encoder.dim_feedforward=16", "callbacks.progress_bar=null",
    "+trainer.enable_progress_bar=false",
]  # fmt: skip


# tiny built-in optical -> radar data (3 classes, 16 px optical / 8 px radar) and CNNs
TINY_OPTICAL_RADAR = [
    "data.synth.num_classes=3", "data.synth.train_per_class=8", "data.synth.val_per_class=2",
    "data.synth.test_per_class=2", "data.synth.image_size=16", "data.radar.radar_size=8",
    "data.batch_size=8", "student.encoder.channels=[4,8,8]", "student.encoder.embedding_dim=8",
    "teacher.encoder.channels=[4,8,8]", "teacher.encoder.embedding_dim=8",
    "callbacks.progress_bar=null", "+trainer.enable_progress_bar=false",
]  # fmt: skip


def run_on_one_and_two_processes(
    script: str, args: list[str], out_root: Path, timeout: int = 900
) -> dict[int, list[dict]]:
    """Run ``python script <out> <devices> *args`` for 1 and 2 processes (a worker that
    writes ``<out>/rank<r>.json``); return each rank's JSON per process count."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"),
        "PYTHONWARNINGS": "ignore",
    }
    results = {}
    for devices in (1, 2):
        out = out_root / f"devices{devices}"
        proc = subprocess.run(
            [sys.executable, script, str(out), str(devices), *args],
            cwd=out_root, env=env, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-4000:]
        ranks = sorted(out.glob("rank*.json"))
        assert len(ranks) == devices
        results[devices] = [json.loads(p.read_text()) for p in ranks]
    return results


@pytest.fixture
def tiny_face_voice(compose_cfg) -> Callable[..., DictConfig]:
    """``tiny_face_voice(experiment, *overrides)``: a face_voice experiment shrunk to
    seconds (``projection.hidden_dim`` is inert without a projection ``_target_``)."""

    def make(experiment: str = "face_voice/c2kd", *extra: str) -> DictConfig:
        return compose_cfg(f"experiment={experiment}", *TINY_FACE_VOICE, *extra)

    return make

