"""``crossdistill-train resume=<run dir>``: a run SIGKILLed mid-training and resumed ends
with exactly the metrics of the uninterrupted run (CPU, same thread count), in either
stage; a truncated ``last.ckpt`` is named and the previous good checkpoint used; overrides
that would change the run are refused; the run dir records the teacher it used."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from crossdistill.pipeline import _start_or_resume
from crossdistill.resume import refused_overrides, resume_command_line
from crossdistill.utils.loggers import stage_overrides
from crossdistill.validation import ConfigError

SRC = Path(__file__).resolve().parents[1] / "src"
# MFH experiment 1, shrunk: a checkpoint every 10 of 60 one-step epochs in each stage
TINY_MFH = [
    "experiment=mfh/exp1",
    "trainer.max_epochs=60",
    "teacher.max_epochs=60",
    "trainer.check_val_every_n_epoch=10",
    "print_config=false",
    "callbacks.epoch_progress_bar=null",
]


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ, CROSSDISTILL_ROOT=str(tmp_path), OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
    return env


def _command(*args: str) -> list[str]:
    return [sys.executable, "-c", "from crossdistill.train import main; main()", *args]


def _train(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        _command(*args), env=_env(tmp_path), capture_output=True, text=True, timeout=600
    )


def _train_killed(tmp_path: Path, run_dir: Path, markers: str, *args: str) -> None:
    """Start a run and SIGKILL it as soon as the files ``markers`` (comma-separated, under
    ``run_dir``: checkpoints) exist, while training goes on."""
    process = subprocess.Popen(
        _command(*args, f"hydra.run.dir={run_dir}"),
        env=_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while process.poll() is None and not all(
        (run_dir / marker).exists() for marker in markers.split(",")
    ):
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (run_dir / "metrics.json").exists()


def _metrics(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "metrics.json").read_text())
    return {"teacher": summary["teacher"], "student": summary["student"]}


def _assert_same_end(run_dir: Path, reference: Path) -> None:
    """Identical metrics (==) and bit-identical final weights of both stages: coarse
    metrics (an EER over 12 trials) could agree after a different trajectory."""
    assert _metrics(run_dir) == _metrics(reference)
    for weights in ("checkpoints/last.ckpt", "teacher/teacher.ckpt"):
        got, expected = (
            torch.load(d / weights, map_location="cpu", weights_only=False)["state_dict"]
            for d in (run_dir, reference)
        )
        assert got.keys() == expected.keys()
        different = [k for k in got if not torch.equal(got[k], expected[k])]
        assert not different, f"{weights}: {different[:3]}... differ from the uninterrupted run"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """Run dir of the tiny MFH run trained without interruption."""
    root = tmp_path_factory.mktemp("uninterrupted")
    run_dir = root / "run"
    done = _train(root, *TINY_MFH, f"hydra.run.dir={run_dir}")
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir


def _resume(tmp_path: Path, run_dir: Path) -> str:
    """Resume ``run_dir``; its output (log lines and warnings)."""
    done = _train(tmp_path, f"resume={run_dir}")
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


@pytest.mark.slow
def test_killed_in_student_stage_resumes_to_identical_metrics(tmp_path, uninterrupted):
    run_dir = tmp_path / "run"
    _train_killed(tmp_path, run_dir, "checkpoints/last.ckpt", *TINY_MFH)
    assert (run_dir / "teacher" / "teacher.ckpt").exists()  # the teacher stage had ended
    _resume(tmp_path, run_dir)
    _assert_same_end(run_dir, uninterrupted)
    assert not (tmp_path / "outputs" / "mfh_exp1").exists()  # no second run dir
    # the first start's record stays: what the tables group runs by
    assert "experiment=mfh/exp1" in (run_dir / ".hydra" / "overrides.yaml").read_text()
    # the CSV log continues in order: the rows before the checkpoint stay (the epoch-end
    # row logged right after it, step 9, may be lost with the kill), the lost work's are
    # logged once
    steps = [int(line.split(",")[1]) for line in (run_dir / "csv" / "metrics.csv").open()
             if line[0].isdigit() and line.split(",")[4]]  # fmt: skip
    assert set(range(60)) - set(steps) <= {9} and steps == sorted(set(steps))


@pytest.mark.slow
def test_killed_in_teacher_stage_resumes_teacher_then_student(tmp_path, uninterrupted):
    run_dir = tmp_path / "run"
    _train_killed(tmp_path, run_dir, "teacher/checkpoints/last.ckpt", *TINY_MFH)
    assert not (run_dir / "teacher" / "teacher.ckpt").exists()
    output = _resume(tmp_path, run_dir)
    assert "resume: training the teacher on from" in output
    _assert_same_end(run_dir, uninterrupted)


@pytest.mark.slow
def test_truncated_last_checkpoint_is_named_and_the_previous_one_used(tmp_path, uninterrupted):
    run_dir = tmp_path / "run"
    _train_killed(
        tmp_path, run_dir, "checkpoints/last.previous.ckpt,checkpoints/last.ckpt", *TINY_MFH
    )
    last = run_dir / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    output = _resume(tmp_path, run_dir)
    assert f"checkpoint={last}: not a complete PyTorch checkpoint" in output
    assert f"student stage from {last.with_name('last.previous.ckpt')}" in output
    _assert_same_end(run_dir, uninterrupted)


@pytest.mark.slow
def test_face_voice_killed_mid_training_resumes_to_identical_metrics(tmp_path):
    """Shuffled mini-batches, random crops and degradations, BatchNorm, a checkpoint at
    every epoch end: the random streams and the loop resume exactly too."""
    from conftest import TINY_FACE_VOICE

    args = ["experiment=face_voice/c2kd", *TINY_FACE_VOICE, "trainer.max_epochs=6",
            "teacher.max_epochs=2", "print_config=false"]  # fmt: skip
    reference = tmp_path / "uninterrupted"
    done = _train(tmp_path / "a", *args, f"hydra.run.dir={reference}")
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = tmp_path / "run"
    _train_killed(tmp_path / "b", run_dir, "checkpoints/last.previous.ckpt", *args)
    _resume(tmp_path / "b", run_dir)
    _assert_same_end(run_dir, reference)


def test_overrides_that_change_the_run_are_refused(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / "config.yaml").write_text("seed: 0\n")
    (run_dir / ".hydra" / "overrides.yaml").write_text("- experiment=mfh/exp1\n- hydra.run.dir=x\n")
    args = [f"resume={run_dir}", "seed=3", "experiment=mfh/exp1", "print_config=false"]
    assert refused_overrides(run_dir, args) == ["seed=3"]
    with pytest.raises(ConfigError, match=r"refused: seed=3 data.overlap=5 \("):
        resume_command_line([*args, "data.overlap=5"])
    assert resume_command_line(args[:1] + args[2:]) == [
        "experiment=mfh/exp1",
        "print_config=false",
        f"resume={run_dir}",
        f"hydra.run.dir={run_dir}",
        "hydra.output_subdir=null",
    ]
    with pytest.raises(ConfigError, match="not a crossdistill run dir"):
        resume_command_line([f"resume={tmp_path}"])
    # the console script: one error line, exit status 2, nothing run
    done = _train(tmp_path, f"resume={run_dir}", "seed=3")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        next(line for line in done.stderr.splitlines() if line.startswith("error: resume="))
    ]
    assert "refused: seed=3 " in done.stderr


def test_wandb_run_id_is_fixed_at_start_and_kept_on_resume(compose_cfg, tmp_path):
    cfg = compose_cfg("logger=wandb")
    started, run_dir = _start_or_resume(cfg)
    run_id = started.logger.wandb.id
    assert run_id and started.logger.wandb.resume == "allow"
    assert OmegaConf.load(run_dir / "config.yaml").logger.wandb.id == run_id
    resumed, same_dir = _start_or_resume(compose_cfg(f"resume={run_dir}"))
    assert same_dir == run_dir and resumed.logger.wandb.id == run_id
    assert stage_overrides(resumed, resumed.logger.wandb, "teacher")["id"] == f"{run_id}-teacher"


@pytest.mark.slow
def test_eval_teacher_of_a_run_that_reused_a_deleted_cache(tmp_path):
    cache = tmp_path / "teachers"
    first, second = tmp_path / "first", tmp_path / "second"
    for run_dir in (first, second):
        done = _train(
            tmp_path, *TINY_MFH, f"hydra.run.dir={run_dir}", f"paths.teacher_cache_dir={cache}"
        )
        assert done.returncode == 0, done.stderr[-3000:]
    assert "reusing the teacher" in done.stdout + done.stderr
    shutil.rmtree(cache)
    assert _metrics(second)["teacher"] == _metrics(first)["teacher"]
    evaluated = subprocess.run(
        [sys.executable, "-c", "from crossdistill.eval import main; main()",
         f"run_dir={second}", "stage=teacher"],
        env=_env(tmp_path), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    result = json.loads((second / "eval_teacher_test.json").read_text())
    assert result["test/acc"] == _metrics(first)["teacher"]["test/acc"]
