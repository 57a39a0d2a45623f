"""Loggers: the resolved config reaches every logger as hyperparameters, and the teacher
stage logs to the same loggers (its own folder; its own W&B run in the same group)."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.plugins.hparams import plugin_data_pb2
from wandb.proto import wandb_internal_pb2

from crossdistill.builders import build_loggers
from crossdistill.train import train
from crossdistill.utils.loggers import flatten, stage_overrides

torch.set_num_threads(1)

SHORT_RUN = (
    "logger=many",
    "distill.feature_margin.weight=0.7",  # not the default: the logged value comes from here
    "trainer.max_epochs=1",
    "teacher.max_epochs=1",
    "+trainer.limit_train_batches=2",
    "+trainer.limit_val_batches=1",
    "+trainer.limit_test_batches=1",
    "callbacks.progress_bar=null",
)


# --------------------------------------------------------------------------- readers
def wandb_records(path: Path) -> Iterator[wandb_internal_pb2.Record]:
    """The records of an offline ``run-<id>.wandb`` file (LevelDB log format: a 7-byte file
    header, 32 KiB blocks of chunks with a 7-byte header: crc, length, type)."""
    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B", path
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        room = block - pos % block
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if room < 7 or (length == 0 and kind == 0):  # block padding
            pos += room
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            yield wandb_internal_pb2.Record.FromString(pending)
            pending = b""


def wandb_run(run_dir: Path) -> dict:
    """Name, group, job type and config of the offline W&B run in ``run_dir``."""
    (path,) = run_dir.glob("run-*.wandb")
    run: dict = {"config": {}}
    for record in wandb_records(path):
        if record.HasField("run"):
            run.update(
                name=record.run.display_name,
                group=record.run.run_group,
                job_type=record.run.job_type,
            )
        if record.HasField("config"):
            run["config"].update({u.key: json.loads(u.value_json) for u in record.config.update})
    return run


def tensorboard_hparams(log_dir: Path) -> dict[str, float | str]:
    """The hparams TensorBoard's HParams tab shows for the event files in ``log_dir``."""
    found: dict[str, float | str] = {}
    for path in sorted(log_dir.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.tag != "_hparams_/session_start_info":
                    continue
                data = plugin_data_pb2.HParamsPluginData.FromString(
                    value.metadata.plugin_data.content
                )
                for key, hparam in data.session_start_info.hparams.items():
                    found[key] = getattr(hparam, hparam.WhichOneof("kind"))
    return found


# --------------------------------------------------------------------------- units
def test_flatten_gives_override_keys():
    nested = {"distill": {"kd": {"weight": 0.5}, "none": {}}, "tags": ["a", "b"], "seed": 1}
    flat = {"distill.kd.weight": 0.5, "distill.none": {}, "tags": ["a", "b"], "seed": 1}
    assert flatten(nested) == flat


def test_stage_overrides(tmp_path):
    run_dir = tmp_path / "run"
    wandb_node = {
        "_target_": "pytorch_lightning.loggers.WandbLogger",
        "name": "exp",
        "id": "abc",
        "group": "g",
        "job_type": "train",
        "save_dir": str(run_dir),
    }
    cfg = OmegaConf.create(
        {
            "task_name": "task",
            "paths": {"output_dir": str(run_dir)},
            "logger": {
                "csv": {
                    "_target_": "pytorch_lightning.loggers.CSVLogger",
                    "save_dir": str(run_dir),
                },
                "tb": {
                    "_target_": "pytorch_lightning.loggers.TensorBoardLogger",
                    "save_dir": str(tmp_path / "shared_tb"),  # outside the run dir
                },
                "wandb": wandb_node,
                "wandb_no_group": {**wandb_node, "group": None, "id": None},
            },
        }
    )
    loggers = cfg.logger
    assert stage_overrides(cfg, loggers.csv, "teacher") == {"save_dir": str(run_dir / "teacher")}
    assert stage_overrides(cfg, loggers.tb, "teacher") == {
        "save_dir": str(tmp_path / "shared_tb" / "teacher")
    }
    assert stage_overrides(cfg, loggers.wandb, "teacher") == {
        "job_type": "teacher",
        "name": "exp-teacher",
        "id": "abc-teacher",
    }
    assert stage_overrides(cfg, loggers.wandb_no_group, "teacher") == {
        "group": "task",
        "job_type": "teacher",
        "name": "exp-teacher",
    }
    assert stage_overrides(cfg, loggers.wandb_no_group, "student") == {"group": "task"}
    for name in ("csv", "tb", "wandb"):
        assert stage_overrides(cfg, loggers[name], "student") == {}
    with pytest.raises(ValueError, match="'student', 'teacher'.*'techer'"):
        stage_overrides(cfg, loggers.csv, "techer")


def test_build_loggers_per_stage(compose_cfg):
    cfg = compose_cfg("logger=many")
    run_dir = Path(cfg.paths.output_dir)
    student = {type(lg).__name__: lg for lg in build_loggers(cfg)}
    teacher = {type(lg).__name__: lg for lg in build_loggers(cfg, "teacher")}
    assert Path(student["CSVLogger"].log_dir) == run_dir / "csv"
    assert Path(teacher["CSVLogger"].log_dir) == run_dir / "teacher" / "csv"
    assert Path(student["TensorBoardLogger"].log_dir) == run_dir / "tensorboard"
    assert Path(teacher["TensorBoardLogger"].log_dir) == run_dir / "teacher" / "tensorboard"
    assert cfg.group is None  # no experiment: both W&B runs are grouped by task_name
    for loggers in (student, teacher):
        assert loggers["WandbLogger"]._wandb_init["group"] == cfg.task_name
    assert student["WandbLogger"]._wandb_init["job_type"] == "train"
    assert teacher["WandbLogger"]._wandb_init["job_type"] == "teacher"
    assert teacher["WandbLogger"]._wandb_init["name"] == f"{cfg.task_name}-teacher"


# --------------------------------------------------------------------------- a short run
def test_both_stages_log_the_resolved_config_to_every_logger(tiny_face_voice, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = tiny_face_voice("face_voice/c2kd", *SHORT_RUN)
    run_dir = Path(train(cfg)["run_dir"])

    for stage_dir in (run_dir, run_dir / "teacher"):
        # CSV: nested, as in config.yaml
        hparams = yaml.safe_load((stage_dir / "csv" / "hparams.yaml").read_text())
        assert hparams["distill"]["feature_margin"]["weight"] == 0.7
        assert hparams["data"]["generator"]["n_identities"] == 8
        # TensorBoard: flat keys spelled as overrides
        tb = tensorboard_hparams(stage_dir / "tensorboard")
        assert tb["distill.feature_margin.weight"] == pytest.approx(0.7)
        assert tb["paths.output_dir"] == str(run_dir)

    # the teacher's metrics are in its own CSV, the student's in the run's
    teacher_csv = (run_dir / "teacher" / "csv" / "metrics.csv").read_text()
    student_csv = (run_dir / "csv" / "metrics.csv").read_text()
    assert "train/loss_feature_margin" not in teacher_csv and "val/eer" in teacher_csv
    assert "train/loss_feature_margin" in student_csv

    # W&B: two runs, same group, own names and job types, the full config in both
    runs = {
        run["job_type"]: run
        for run in (wandb_run(path) for path in run_dir.glob("wandb/offline-run-*"))
    }
    assert sorted(runs) == ["teacher", "train"]
    assert runs["teacher"]["name"] == f"{cfg.task_name}-teacher"
    assert runs["train"]["name"] == cfg.task_name
    assert cfg.group and {run["group"] for run in runs.values()} == {cfg.group}
    for run in runs.values():
        assert run["config"]["distill"]["feature_margin"]["weight"] == 0.7
        assert run["config"]["paths"]["output_dir"] == str(run_dir)


def test_resumed_tensorboard_drops_the_events_after_the_checkpoint(tmp_path):
    """A stage resumed from a checkpoint of step 5 re-logs steps 5.. ; TensorBoard must
    show the new values there, not both (its reader purges on the writer's purge_step)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from crossdistill.builders import build_loggers

    node = {"_target_": "pytorch_lightning.loggers.TensorBoardLogger",
            "save_dir": str(tmp_path / "tb"), "name": None, "version": ""}  # fmt: skip
    cfg = OmegaConf.create(
        {"task_name": "t", "paths": {"output_dir": str(tmp_path)}, "logger": {"tb": node}}
    )
    (first,) = build_loggers(cfg)
    for step in range(10):  # the killed attempt got to step 9
        first.log_metrics({"loss": float(step)}, step=step)
    first.finalize("success")
    assert "purge_step" not in stage_overrides(cfg, cfg.logger.tb, "student")
    (resumed,) = build_loggers(cfg, resume_step=5)
    for step in range(5, 8):
        resumed.log_metrics({"loss": 100.0 + step}, step=step)
    resumed.finalize("success")
    events = EventAccumulator(str(tmp_path / "tb"), purge_orphaned_data=True)
    events.Reload()
    seen = [(e.step, e.value) for e in events.Scalars("loss")]
    assert seen == [(s, float(s)) for s in range(5)] + [(s, 100.0 + s) for s in range(5, 8)]
