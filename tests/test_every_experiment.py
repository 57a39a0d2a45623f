"""Every shipped experiment config runs end to end under ``debug=fast_dev_run`` on its own
data sizes (one batch of teacher and student training, validation and test). The built-in
data are generated once at full size for all of them (about 1.5 min in all on 2 cores; the
face -> voice experiments, whose data take ~4 min, are marked slow)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

from crossdistill.pipeline import train
from crossdistill.utils.config import CONFIG_DIR, CONFIG_PACKAGE

#: experiments whose built-in data take minutes to generate at full size (face -> voice:
#: 1,000 speakers and a 2,000-identity face pool, ~4 min): slow here; every one of their
#: method configs runs on tiny data in tests/test_every_method.py
SLOW_PREFIXES = ("face_voice/",)
EXPERIMENTS = [
    pytest.param(name, marks=pytest.mark.slow) if name.startswith(SLOW_PREFIXES) else name
    for name in sorted(
        str(p.relative_to(CONFIG_DIR / "experiment").with_suffix(""))
        for p in (CONFIG_DIR / "experiment").rglob("*.yaml")
    )
]


#: data keys pointing at real datasets outside the repository: skipped when absent
REAL_DATA_KEYS = ("fsdd_root", "mnist_root")


@pytest.fixture(scope="module")
def shared_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data dir for all experiments: each built-in dataset is generated once."""
    return tmp_path_factory.mktemp("data")


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_fast_dev_run(experiment: str, shared_data_dir: Path, tmp_path: Path):
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module=CONFIG_PACKAGE, version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}", "debug=fast_dev_run"])
    GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
        cfg.paths.log_dir = str(tmp_path / "logs")
        cfg.paths.data_dir = str(shared_data_dir)
        cfg.paths.teacher_cache_dir = str(tmp_path / "teachers")
        cfg.print_config = False
        cfg.logger = {}
    missing = [
        str(cfg.data[k]) for k in REAL_DATA_KEYS if k in cfg.data and not Path(cfg.data[k]).exists()
    ]
    if missing:
        pytest.skip(f"{experiment}: real data not found at {missing} (see docs/avmnist.md)")
    summary = train(cfg)
    assert summary["student"], f"{experiment}: no student metrics"
    assert (tmp_path / "run" / "metrics.json").exists()
