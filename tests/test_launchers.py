"""Launchers: `hydra/launcher=joblib` (local parallel jobs) and `hydra/launcher=slurm` /
`submitit_slurm` (SLURM through submitit) compose and instantiate; the SLURM launcher is
driven up to the submission, which is intercepted (no SLURM here)."""

from __future__ import annotations

from pathlib import Path

import pytest
import submitit
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from crossdistill.utils.config import CONFIG_PACKAGE


def compose_with_hydra(tmp_path: Path, *overrides: str) -> DictConfig:
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module=CONFIG_PACKAGE, version_base="1.3"):
            cfg = compose("train", overrides=[f"paths.log_dir={tmp_path}", *overrides],
                          return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.hydra.job.name = "train"  # set by Hydra when a job runs
    return cfg


def test_joblib_launcher_composes_and_instantiates(tmp_path: Path):
    cfg = compose_with_hydra(tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    launcher = instantiate(cfg.hydra.launcher)
    assert type(launcher).__name__ == "JoblibLauncher"
    assert launcher.joblib["n_jobs"] == 2


def test_plugin_submitit_slurm_launcher_composes(tmp_path: Path):
    cfg = compose_with_hydra(tmp_path, "hydra/launcher=submitit_slurm",
                             "hydra.launcher.partition=debug", "hydra.launcher.timeout_min=5")
    launcher = instantiate(cfg.hydra.launcher)
    assert type(launcher).__name__ == "SlurmLauncher"
    assert launcher.params["partition"] == "debug"
    assert launcher.params["timeout_min"] == 5
    assert launcher.params["tasks_per_node"] == 1


SUBMITTED: dict = {}  # the SLURM parameters of the last intercepted submission


def record_submission(executor: submitit.AutoExecutor, function, *arguments) -> list:
    """Stands in for ``AutoExecutor.map_array``: records the executor's SLURM parameters."""
    SUBMITTED.clear()
    SUBMITTED.update(executor._executor.parameters)
    return [FakeJob(index) for index in range(len(arguments[0]))]


class FakeJob:
    def __init__(self, index: int) -> None:
        self.index = index

    def results(self) -> list[int]:
        return [self.index]


def intercept_submission(monkeypatch) -> None:
    """No SLURM here: pretend ``srun`` exists and record the submission instead."""
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 1))
    monkeypatch.setattr(submitit.AutoExecutor, "map_array", record_submission)


def test_project_slurm_launcher_sets_up_lightning_ddp(tmp_path: Path, monkeypatch):
    """`hydra/launcher=slurm`: one SLURM task per device on trainer.num_nodes nodes, and
    submitit accepts every parameter (it rejects unknown ones before submitting)."""
    cfg = compose_with_hydra(
        tmp_path, "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "trainer=ddp",
        "trainer.devices=4", "trainer.num_nodes=2", "hydra.launcher.timeout_min=30",
    )
    launcher = instantiate(cfg.hydra.launcher)
    assert {key: launcher.params[key] for key in
            ("partition", "nodes", "tasks_per_node", "gpus_per_node", "timeout_min")} == {
        "partition": "gpu", "nodes": 2, "tasks_per_node": 4, "gpus_per_node": 4,
        "timeout_min": 30}
    launcher.setup(hydra_context=None, task_function=None, config=cfg)
    intercept_submission(monkeypatch)
    returns = launcher.launch([["seed=0"], ["seed=1"]], initial_job_idx=0)
    assert returns == [0, 1]  # one (fake) SLURM job per sweep job
    slurm = SUBMITTED
    assert (slurm["partition"], slurm["nodes"], slurm["ntasks_per_node"]) == ("gpu", 2, 4)
    assert slurm["gpus_per_node"] == 4
    assert slurm["time"] == 30
    assert Path(str(cfg.hydra.sweep.dir)).is_dir()


def test_slurm_launcher_rejects_unknown_parameters(tmp_path: Path, monkeypatch):
    """The check above can fail: a misspelt SLURM parameter is refused by submitit."""
    cfg = compose_with_hydra(tmp_path, "hydra/launcher=slurm", "trainer.devices=1",
                             "+hydra.launcher.gpus_per_nodes=2")
    launcher = instantiate(cfg.hydra.launcher)
    launcher.setup(hydra_context=None, task_function=None, config=cfg)
    intercept_submission(monkeypatch)
    with pytest.raises(NameError, match="gpus_per_nodes"):
        launcher.launch([["seed=0"]], initial_job_idx=0)
