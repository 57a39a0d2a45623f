"""The command line: composition, a train -> eval round trip, overrides, sweeps, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import InstantiationException
from omegaconf import OmegaConf, open_dict

from crossdistill.diagnose import diagnose
from crossdistill.losses import NonFiniteLossError
from crossdistill.run_dir import load_run
from crossdistill.train import train
from crossdistill.utils import config as config_utils

EXPERIMENTS = sorted(
    str(p.relative_to(config_utils.CONFIG_DIR / "experiment").with_suffix(""))
    for p in (config_utils.CONFIG_DIR / "experiment").rglob("*.yaml")
)
SHORT = ["trainer.max_epochs=40", "teacher.max_epochs=40", "trainer.check_val_every_n_epoch=10"]
BIN = Path(sys.executable).parent


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes(compose_cfg, experiment):
    cfg = compose_cfg(f"experiment={experiment}")
    assert cfg.task_name and cfg.data._target_ and cfg.distill
    OmegaConf.to_container(cfg.distill, resolve=True)


@pytest.mark.parametrize("experiment", [e for e in EXPERIMENTS if e.startswith("mfh/")])
def test_mfh_experiments_build_their_data(compose_cfg, experiment):
    from crossdistill import builders

    dm = builders.build_datamodule(compose_cfg(f"experiment={experiment}"))
    assert len(dm.datasets["train"]) == 200 and len(dm.datasets["test"]) == 1000


def test_train_eval_round_trip_and_teacher_reuse(compose_cfg, tmp_path):
    cfg = compose_cfg("experiment=mfh/exp1", "seed=1", *SHORT)
    summary = train(cfg)
    run_dir = Path(summary["run_dir"])
    saved = OmegaConf.load(run_dir / "config.yaml")
    assert saved.seed == 1 and saved.distill.kd.reduction == "elementwise_mean"
    assert (run_dir / "teacher" / "teacher.ckpt").exists()
    assert json.loads((run_dir / "metrics.json").read_text())["student"]["test/acc"] > 0.55

    # eval needs only the run dir, and reproduces the tested number
    import pytorch_lightning as pl

    run = load_run(run_dir)
    result = pl.Trainer(logger=False, enable_progress_bar=False).test(run.module, run.datamodule)
    assert result[0]["test/acc"] == pytest.approx(summary["student"]["test/acc"], abs=1e-6)
    assert not run.module.teacher_encoder.training  # frozen teacher stays in eval mode
    run.module.train()
    assert not run.module.teacher_classifier.training
    assert all(not p.requires_grad for p in run.module.teacher_classifier.parameters())

    # Algorithm 1 on the trained pair ranks the shared teacher columns (0..9) first
    dcfg = OmegaConf.create(
        {
            "run_dir": str(run_dir),
            "ckpt": "auto",
            "layer": None,
            "split": "train",
            "max_samples": 2048,
            "n_repeats": 5,
            "top_k": 10,
            "chunk": 512,
            "seed": 0,
        }
    )
    table = diagnose(dcfg)
    assert len(set(table.channel.head(10)) & set(range(10))) >= 7

    # a second run of the same data/teacher/seed reuses the cached teacher
    cfg2 = compose_cfg("experiment=mfh/exp1", "seed=1", "distill=kd", *SHORT)
    with open_dict(cfg2):
        cfg2.paths.output_dir = str(tmp_path / "run2")
    summary2 = train(cfg2)
    teacher_dir = Path(summary2["run_dir"]) / "teacher"
    assert not (teacher_dir / "checkpoints").exists()  # not trained again, but recorded
    assert json.loads((teacher_dir / "source.json").read_text())["source"].startswith(
        cfg2.paths.teacher_cache_dir
    )
    assert summary2["teacher"]["test/acc"] == summary["teacher"]["test/acc"]


def test_nan_loss_stops_with_clear_message(compose_cfg):
    cfg = compose_cfg(
        "experiment=mfh/exp1",
        "distill=none",
        "student.optimizer.lr=1e38",
        "trainer.max_epochs=5",
        "logger=[]",
    )
    with pytest.raises(NonFiniteLossError, match="loss term 'ce' is (inf|nan)"):
        train(cfg)


def test_unknown_loss_term_and_impossible_setting(compose_cfg):
    cfg = compose_cfg("experiment=mfh/exp1", "+distill.kdd.weight=1.0")
    with pytest.raises(KeyError, match="unknown loss term 'kdd'; registered terms: .*'kd'"):
        train(cfg)
    cfg = compose_cfg("experiment=mfh/exp1", "data.overlap=11")
    with pytest.raises((ValueError, InstantiationException), match="0 <= overlap <= 10"):
        train(cfg)


def test_eval_and_diagnose_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.yaml not found"):
        load_run(tmp_path)


def test_run_dir_suffix_is_unique_per_process():
    a, b = config_utils._unique_suffix(), config_utils._unique_suffix()
    assert a != b and a.startswith(str(os.getpid()))


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [str(BIN / "crossdistill-train"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_override_and_sweep_land_in_separate_run_dirs(tmp_path):
    common = [
        f"paths.log_dir={tmp_path}",
        f"paths.teacher_cache_dir={tmp_path}/teachers",
        "print_config=false",
        *SHORT,
    ]
    one = _cli("experiment=mfh/exp1", "seed=3", "distill.kd.weight=0.5", *common, cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    runs = list((tmp_path / "mfh_exp1" / "runs").iterdir())
    assert len(runs) == 1
    saved = OmegaConf.load(runs[0] / "config.yaml")
    assert saved.seed == 3 and saved.distill.kd.weight == 0.5
    assert (runs[0] / "csv" / "metrics.csv").exists()

    sweep = _cli("-m", "experiment=mfh/exp1", "distill.kd.weight=0.5,1.0", *common, cwd=tmp_path)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    (multirun,) = list((tmp_path / "mfh_exp1" / "multiruns").iterdir())
    weights = sorted(
        OmegaConf.load(multirun / j / "config.yaml").distill.kd.weight for j in ("0", "1")
    )
    assert weights == [0.5, 1.0]
    assert all((multirun / j / "metrics.json").exists() for j in ("0", "1"))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("foo=1", "Key 'foo' is not in struct"),
        ("distill=nope", "Could not find 'distill/nope'"),
        ("experiment=mfh/nope", "Could not find 'experiment/mfh/nope'"),
    ],
)
def test_bad_config_input_fails_at_start_naming_it(tmp_path, override, message):
    result = _cli(override, f"paths.log_dir={tmp_path}", cwd=tmp_path)
    assert result.returncode != 0
    assert message in result.stderr + result.stdout


def test_group_error_lists_valid_choices(tmp_path):
    result = _cli("distill=nope", cwd=tmp_path)
    out = result.stderr + result.stdout
    assert "Available options" in out and "kd_mfh" in out


def test_wandb_logger_offline_without_key(compose_cfg, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    # fast_dev_run would swap loggers for a dummy: use a few short epochs instead
    cfg = compose_cfg("experiment=mfh/exp1", "logger=wandb", "debug=limit")
    summary = train(cfg)
    assert list(Path(summary["run_dir"]).glob("wandb/offline-run-*"))


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_writes_one_run_dir(tmp_path):
    result = _cli(
        "experiment=mfh/exp1",
        "trainer=ddp_cpu",
        "trainer.max_epochs=10",
        "teacher.max_epochs=10",
        "trainer.check_val_every_n_epoch=5",
        f"paths.log_dir={tmp_path}",
        f"paths.teacher_cache_dir={tmp_path}/teachers",
        "print_config=false",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list((tmp_path / "mfh_exp1" / "runs").iterdir())
    assert len(runs) == 1
    summary = json.loads((runs[0] / "metrics.json").read_text())
    assert summary["student"]["test/acc"] > 0.5


def test_optuna_search_runs_trials_on_validation(tmp_path):
    result = _cli(
        "experiment=mfh/exp1",
        "hparams_search=mfh_optuna",
        "hydra.sweeper.n_trials=2",
        *SHORT,
        f"paths.log_dir={tmp_path}",
        f"paths.teacher_cache_dir={tmp_path}/teachers",
        "print_config=false",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (multirun,) = list((tmp_path / "mfh_exp1" / "multiruns").iterdir())
    best = OmegaConf.load(multirun / "optimization_results.yaml")
    assert 0.5 < best.best_value <= 1.0
    summary = json.loads((multirun / "0" / "metrics.json").read_text())
    assert {"val/acc", "test/acc"} <= set(summary["student"])


@pytest.mark.slow
def test_verification_gathers_all_utterances_under_ddp(tmp_path):
    """Each rank embeds half the eval utterances; the evaluator must score every trial."""
    result = _cli(
        "experiment=face_voice/c2kd",
        "trainer=ddp_cpu",
        "trainer.max_epochs=1",
        "teacher.max_epochs=1",
        f"paths.log_dir={tmp_path}",
        f"paths.data_dir={tmp_path}/data",
        f"paths.teacher_cache_dir={tmp_path}/t",
        "print_config=false",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "only part of the split was embedded" not in result.stdout + result.stderr
    (run,) = list((tmp_path / "face_voice" / "runs").iterdir())
    student = json.loads((run / "metrics.json").read_text())["student"]
    assert 0.0 <= student["test/eer"] <= 1.0 and "test/eer_snr0" in student


def test_stop_after_teacher_fills_the_teacher_cache_that_a_full_run_then_reuses(
    compose_cfg, tmp_path
):
    short = ["trainer.max_epochs=2", "teacher.max_epochs=2", "logger=[]"]
    from crossdistill.pipeline import run_task

    cfg = compose_cfg("experiment=mfh/exp1", "seed=1", "stop_after=teacher", *short)
    assert run_task(cfg) is None  # the entry point's path: no student metric to return
    run_dir = Path(cfg.paths.output_dir)
    written = json.loads((run_dir / "metrics.json").read_text())
    assert "student" not in written and written["teacher"]["test/acc"] > 0
    assert not (run_dir / "checkpoints").exists()  # no student stage
    assert len(list(Path(cfg.paths.teacher_cache_dir).glob("*/teacher.ckpt"))) == 1

    cfg2 = compose_cfg("experiment=mfh/exp1", "seed=1", *short)
    with open_dict(cfg2):
        cfg2.paths.output_dir = str(tmp_path / "run2")
    summary2 = train(cfg2)
    source = json.loads((tmp_path / "run2" / "teacher" / "source.json").read_text())
    assert source["source"].startswith(cfg2.paths.teacher_cache_dir)  # reused, not trained
    assert summary2["teacher"] == written["teacher"] and "test/acc" in summary2["student"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["stop_after=student"], "stop_after='student' is not valid; use null"),
        (["stop_after=teacher", "distill=none"], "stop_after=teacher, but this run's distill"),
    ],
)
def test_stop_after_refuses_what_it_cannot_do(compose_cfg, tmp_path, overrides, message):
    from crossdistill.validation import ConfigError

    cfg = compose_cfg("experiment=mfh/exp1", "logger=[]", *overrides)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        train(cfg)
    assert not (tmp_path / "run" / "config.yaml").exists()  # refused before anything is written
