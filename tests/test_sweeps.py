"""Multiruns: a failing job never stops the sweep (status.json per job, summary.md/.csv,
exit code 1), and DDP jobs inside `-m` run once each in their own job dir."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

import crossdistill
from crossdistill.pipeline import run_task
from crossdistill.sweeps.ddp_children import config_options, job_child_command, script_command
from crossdistill.sweeps.status import (
    JobStatus,
    collect_statuses,
    error_line,
    summary_csv,
    summary_markdown,
    write_status,
    write_summary,
)
from crossdistill.tables.callback import MultirunTable
from crossdistill.utils.config import CONFIG_PACKAGE
from crossdistill.validation import ConfigError

BIN = Path(sys.executable).parent
SRC = str(Path(crossdistill.__file__).resolve().parents[1])  # the subprocess imports this code
MISSING_TEACHER = "/nonexistent/teacher.ckpt"
TINY_MFH = ["experiment=mfh/exp1", "trainer.max_epochs=2", "teacher.max_epochs=2",
            "data.n_test=200", "print_config=false", "callbacks.epoch_progress_bar=null"]


def crossdistill_train(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "crossdistill-train"), *args, f"paths.log_dir={tmp_path}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**os.environ, "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore",
             "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])},
    )


def sweep_dirs(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "mfh_exp1" / "multiruns").iterdir())


# --- status records and the summary -------------------------------------------------------


def test_summary_lists_every_job_with_its_status(tmp_path: Path):
    write_status(tmp_path / "1", JobStatus(1, ["seed=1"], "failed", "ValueError: bad", "r1"))
    write_status(tmp_path / "0", JobStatus(0, ["seed=0"], "ok", "", "r0"))
    killed = tmp_path / "2" / ".hydra"  # started by Hydra, never reported: killed
    killed.mkdir(parents=True)
    (killed / "overrides.yaml").write_text("- seed=2\n")
    (tmp_path / "not_a_job").mkdir()

    text, records = write_summary(tmp_path)
    assert [(r.job, r.status) for r in records] == [(0, "ok"), (1, "failed"), (2, "unfinished")]
    assert text.splitlines()[0] == "Sweep summary: 3 jobs, 1 ok, 2 failed"
    assert "| 1 | failed | seed=1 | ValueError: bad | r1 |" in text
    assert f"| 2 | unfinished | seed=2 | no status.json | {tmp_path / '2'} |" in text
    assert (tmp_path / "summary.md").read_text() == text
    rows = list(csv.DictReader(io.StringIO((tmp_path / "summary.csv").read_text())))
    assert [row["status"] for row in rows] == ["ok", "failed", "unfinished"]
    assert rows[1]["error"] == "ValueError: bad"


def test_summary_cells_escape_the_table_separator():
    record = JobStatus(3, ["tags=[a|b]"], "failed", "KeyError: 'x|y'", "r")
    assert summary_csv([record]).splitlines()[1] == "3,failed,tags=[a|b],KeyError: 'x|y',r"
    assert "| 3 | failed | tags=[a\\|b] | KeyError: 'x\\|y' | r |" in summary_markdown([record])


def test_error_line_is_the_last_line_of_the_traceback():
    try:
        raise ConfigError("teacher.ckpt_path=/x: file not found")
    except ConfigError as error:
        assert error_line(error) == (
            "crossdistill.validation.ConfigError: teacher.ckpt_path=/x: file not found")


def test_the_sweep_exits_1_after_its_report_when_a_job_failed(tmp_path: Path, capsys):
    write_status(tmp_path / "0", JobStatus(0, ["seed=0"], "ok", "", "r0"))
    write_status(tmp_path / "1", JobStatus(1, ["seed=1"], "failed", "OSError: disk", "r1"))
    sweep = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    callback = MultirunTable()
    callback.on_multirun_start(sweep)
    with pytest.raises(SystemExit) as exit_info:  # Hydra passes SystemExit on, not Exception
        callback.on_multirun_end(sweep)
    assert exit_info.value.code == 1
    out = capsys.readouterr().out
    assert "Sweep summary: 2 jobs, 1 ok, 1 failed" in out and "1 job(s) failed" in out
    assert (tmp_path / "summary.csv").is_file()

    quiet = MultirunTable(enabled=False, job_summary=False)  # both off: no report, exit 0
    quiet.on_multirun_start(sweep)
    quiet.on_multirun_end(sweep)
    assert capsys.readouterr().out == ""


# --- run_task in a single run and in a multirun job ---------------------------------------


@pytest.fixture
def hydra_job(tmp_path: Path) -> Iterator:
    """``hydra_job(mode, *overrides)``: the task config of one job, HydraConfig set as Hydra
    sets it while the job runs (job 3, output dir tmp_path/job)."""

    def make(mode: str, *overrides: str) -> DictConfig:
        GlobalHydra.instance().clear()
        with initialize_config_module(config_module=CONFIG_PACKAGE, version_base="1.3"):
            cfg = compose("train", overrides=[f"paths.log_dir={tmp_path}", "print_config=false",
                                              *overrides], return_hydra_config=True)
        GlobalHydra.instance().clear()
        with open_dict(cfg):
            cfg.hydra.mode = mode
            cfg.hydra.job.num = 3
            cfg.hydra.runtime.output_dir = str(tmp_path / "job")
            cfg.hydra.runtime.cwd = str(tmp_path)
            cfg.hydra.overrides.task = list(overrides)
            cfg.hydra.overrides.hydra = ["hydra.mode=MULTIRUN"]
        HydraConfig.instance().set_config(cfg)
        task = cfg.copy()
        with open_dict(task):
            del task["hydra"]
        return task

    yield make
    HydraConfig.instance().cfg = None


def test_a_single_run_raises_its_error(hydra_job, tmp_path: Path):
    cfg = hydra_job("RUN", f"teacher.ckpt_path={MISSING_TEACHER}")
    with pytest.raises(ConfigError, match="teacher.ckpt_path=/nonexistent/teacher.ckpt"):
        run_task(cfg)
    assert not (tmp_path / "job" / "status.json").exists()


def test_a_failed_multirun_job_returns_none_and_records_the_error(hydra_job, tmp_path, caplog):
    cfg = hydra_job("MULTIRUN", "experiment=mfh/exp1", f"teacher.ckpt_path={MISSING_TEACHER}")
    with caplog.at_level(logging.ERROR, logger="crossdistill"):
        assert run_task(cfg) is None
    assert "Traceback" in caplog.text and "file not found" in caplog.text  # in the job's log
    assert json.loads((tmp_path / "job" / "status.json").read_text()) == {
        "job": 3,
        "overrides": ["experiment=mfh/exp1", f"teacher.ckpt_path={MISSING_TEACHER}"],
        "status": "failed",
        "error": "crossdistill.validation.ConfigError: "
                 f"teacher.ckpt_path={MISSING_TEACHER}: file not found",
        "run_dir": str(tmp_path / "job"),
    }


def test_ddp_children_of_a_multirun_job_run_that_job_alone(hydra_job, tmp_path, monkeypatch):
    """Lightning would re-run ``sys.argv`` (the whole sweep, with ``-m``); the children get
    the job's own overrides, RUN mode and the job's dir instead."""
    hydra_job("MULTIRUN", "experiment=mfh/exp1", "seed=1")
    monkeypatch.setattr(sys, "argv", ["crossdistill-train", "-m", "-cn", "train",
                                      "experiment=mfh/exp1", "seed=0,1"])
    command, cwd = job_child_command(local_rank=1)
    script = script_command()
    assert command[:len(script)] == script
    assert command[len(script):] == [
        "-cn", "train", "hydra.mode=MULTIRUN", "experiment=mfh/exp1", "seed=1",
        "hydra.mode=RUN", f'hydra.run.dir="{tmp_path / "job"}"',
        "hydra.job.name=train_ddp_process_1", "hydra.output_subdir=null",
    ]
    assert cwd == str(tmp_path)


def test_config_options_keeps_only_the_config_location():
    argv = ["-m", "--config-dir", "/my/conf", "-cn=train", "seed=0,1", "--cfg", "job"]
    assert config_options(argv) == ["--config-dir", "/my/conf", "-cn=train"]


# --- whole sweeps -------------------------------------------------------------------------


def check_two_of_four_failed(result: subprocess.CompletedProcess, tmp_path: Path) -> None:
    assert result.returncode == 1, result.stderr[-3000:]
    (sweep_dir,) = sweep_dirs(tmp_path)
    records = collect_statuses(sweep_dir)
    assert [(r.job, r.status) for r in records] == [
        (0, "ok"), (1, "ok"), (2, "failed"), (3, "failed")]
    for record in records[2:]:
        assert f"teacher.ckpt_path={MISSING_TEACHER}" in record.overrides
        assert record.error.endswith(f"teacher.ckpt_path={MISSING_TEACHER}: file not found")
    for job in ("0", "1"):
        assert (sweep_dir / job / "metrics.json").is_file()
    out = result.stdout
    summary = (sweep_dir / "summary.md").read_text()
    assert summary.startswith("Sweep summary: 4 jobs, 2 ok, 2 failed") and summary in out
    assert "2 job(s) failed; exit code 1" in out
    # the table of the two good jobs (seeds 0, 1) is printed before the summary
    assert re.search(r"\| teacher\.ckpt_path=null \(baseline\) \| \d\.\d{3} ± \d\.\d{3} \(n=2\)",
                     out)
    assert out.index("| teacher.ckpt_path=null (baseline)") < out.index("Sweep summary")


SWEEP_WITH_TWO_FAILURES = [f"teacher.ckpt_path=null,{MISSING_TEACHER}", "seed=0,1", *TINY_MFH]


def test_two_failing_jobs_of_four_do_not_stop_the_sweep(tmp_path: Path):
    result = crossdistill_train(tmp_path, "-m", *SWEEP_WITH_TWO_FAILURES)
    check_two_of_four_failed(result, tmp_path)


@pytest.mark.slow
def test_two_failing_jobs_of_four_with_the_joblib_launcher(tmp_path: Path):
    result = crossdistill_train(tmp_path, "-m", "hydra/launcher=joblib",
                                "hydra.launcher.n_jobs=2", *SWEEP_WITH_TWO_FAILURES)
    check_two_of_four_failed(result, tmp_path)


@pytest.mark.slow  # tests/test_tables_multirun.py checks the exit code 0 of a good sweep
def test_a_sweep_without_failures_exits_zero_with_its_summary(tmp_path: Path):
    result = crossdistill_train(tmp_path, "-m", "seed=0", *TINY_MFH)
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep_dir,) = sweep_dirs(tmp_path)
    assert (sweep_dir / "summary.md").read_text().startswith(
        "Sweep summary: 1 jobs, 1 ok, 0 failed")


@pytest.mark.slow
def test_ddp_cpu_in_a_multirun_runs_each_job_once(tmp_path: Path):
    """2 gloo processes per job: exactly the 2 job dirs, each with metrics.json and both
    ranks in its log; no second sweep dir (rank 1 re-running the sweep) and no run dir."""
    result = crossdistill_train(tmp_path, "-m", "trainer=ddp_cpu", "seed=0,1", *TINY_MFH)
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep_dir,) = sweep_dirs(tmp_path)
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == ["0", "1"]
    assert sorted(p.name for p in (tmp_path / "mfh_exp1").iterdir()) == ["multiruns"]
    for job in ("0", "1"):
        assert json.loads((sweep_dir / job / "metrics.json").read_text())["student"]
        log_text = (sweep_dir / job / "mfh_exp1.log").read_text()
        assert "GLOBAL_RANK: 1, MEMBER: 2/2" in log_text
    assert collect_statuses(sweep_dir)[1].overrides[1] == "seed=1"


# --- hparams_search: Optuna on a validation metric -----------------------------------------

SEARCHES = [  # (search, experiment, optimised validation metric, direction, lr bounds)
    ("face_voice_optuna", "face_voice/c2kd", "val/eer", "minimize", (3e-4, 1e-2)),
    ("face_voice_optuna", "face_voice/c2kd_quality", "val/eer", "minimize", (3e-4, 1e-2)),
    ("text_image_optuna", "text_image/c2kd", "val/acc", "maximize", (0.01, 0.2)),
    ("text_image_optuna", "text_image/c2kd_quality", "val/acc", "maximize", (0.01, 0.2)),
    ("mfh_optuna", "mfh/exp1", "val/acc", "maximize", None),
]


@pytest.mark.parametrize(("search", "experiment", "metric", "direction", "lr"), SEARCHES)
def test_hparams_search_composes_over_keys_of_the_experiment(
    search: str, experiment: str, metric: str, direction: str, lr: tuple | None
):
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides
    from optuna.distributions import LogUniformDistribution

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module=CONFIG_PACKAGE, version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}", f"hparams_search={search}"],
                      return_hydra_config=True)
    GlobalHydra.instance().clear()
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and cfg.hydra.mode == RunMode.MULTIRUN
    assert (cfg.optimized_metric, sweeper.direction) == (metric, direction)
    assert cfg.optimized_metric.startswith("val/")  # model selection never looks at test
    space, fixed = create_params_from_overrides(
        [f"{key}={value}" for key, value in sweeper.params.items()])
    assert not fixed and set(space) == set(sweeper.params)
    for key, distribution in space.items():  # each key exists; its default is in the space
        default = OmegaConf.select(cfg, key)
        assert default is not None, f"{key} not in {experiment}"
        if hasattr(distribution, "choices"):
            assert default in distribution.choices
        else:
            assert distribution.low <= default <= distribution.high, key
    if lr is not None:
        lr_space = space["student.optimizer.lr"]
        assert isinstance(lr_space, LogUniformDistribution)
        assert (lr_space.low, lr_space.high) == lr


@pytest.mark.slow
def test_a_two_trial_optuna_search_on_tiny_face_voice(tmp_path: Path):
    from conftest import TINY_FACE_VOICE

    tiny = ["experiment=face_voice/c2kd", *TINY_FACE_VOICE, "trainer.max_epochs=2",
            "teacher.max_epochs=2", "print_config=false"]
    result = crossdistill_train(tmp_path, "hparams_search=face_voice_optuna",
                                "hydra.sweeper.n_trials=2", *tiny)
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep_dir,) = sorted((tmp_path / "face_voice" / "multiruns").iterdir())
    records = collect_statuses(sweep_dir)
    assert [(r.job, r.status) for r in records] == [(0, "ok"), (1, "ok")]
    eers = [json.loads((sweep_dir / str(job) / "metrics.json").read_text())["student"]["val/eer"]
            for job in (0, 1)]
    best = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    assert best.best_value == pytest.approx(min(eers))  # minimised
    assert set(best.best_params) == {"distill.feature_margin.weight", "student.optimizer.lr",
                                     "distill.feature_margin.margin",
                                     "distill.shared_classifier.weight"}
