"""Text -> image pipeline (issue 4): experiment configs, fast_dev_runs of teacher /
student-only / distillation through ``crossdistill.train.train``, a short real training,
and the reproduction script's planning and reporting."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from crossdistill.data.generators.synth_captions import generate_synth_captions
from crossdistill.models.heads import ProjectionHead
from crossdistill.modules import DistillModule, StudentModule
from crossdistill.train import train
from crossdistill.utils.config import CONFIG_DIR

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment" / "text_image").glob("*.yaml"))
METHODS = [e for e in EXPERIMENTS if e != "base"]
NEEDS_PROJECTION = {"hard_l2", "feature_margin", "shared_classifier", "c2kd", "c2kd_quality",
                    "poor_teacher"}

# tiny data and models: every stage runs in about a second
TINY = [
    "data.synth.num_classes=3",
    "data.synth.train_per_class=12",
    "data.synth.val_per_class=4",
    "data.synth.test_per_class=4",
    "data.batch_size=8",
    "data.eval_batch_size=16",
    "data.min_freq=1",
    "student.encoder.channels=[4,8,8,8]",
    "student.encoder.embedding_dim=8",
    "teacher.encoder.d_model=8",
    "teacher.encoder.nhead=2",
    "teacher.encoder.num_layers=1",
    "teacher.encoder.dim_feedforward=16",
    "callbacks.progress_bar=null",
    "+trainer.enable_progress_bar=false",
]


def _tiny(name: str) -> list[str]:
    extra = ["projection.hidden_dim=8"] if name in NEEDS_PROJECTION else []
    return [f"experiment=text_image/{name}", *TINY, *extra]


def _load_script():
    """scripts/reproduce_text_image.py as a module; scripts/ goes on sys.path so that its
    spawned workers can import it too."""
    scripts = str(ROOT / "scripts")
    if scripts not in sys.path:
        sys.path.insert(0, scripts)
    return importlib.import_module("reproduce_text_image")


# ---------------------------------------------------------------------- configs
def test_all_rows_have_an_experiment():
    assert set(METHODS) == {"no_kd", "kd", "hard_l2", "feature_margin", "shared_classifier",
                            "c2kd", "c2kd_quality", "poor_teacher"}


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes(compose_cfg, name):
    cfg = compose_cfg(f"experiment=text_image/{name}")
    OmegaConf.resolve(cfg)
    assert cfg.data._target_.endswith("TextImageDataModule")
    assert cfg.data.synth.independent_captions is True
    assert cfg.teacher.encoder._target_.endswith("TextTransformerEncoder")
    assert cfg.student.encoder._target_.endswith("TimmImageEncoder")
    assert cfg.student.encoder.model_name == "resnet18" and cfg.student.encoder.small_input
    assert cfg.student.optimizer and cfg.teacher.optimizer and cfg.teacher.max_epochs
    assert cfg.top_k == 5 and cfg.group == "text_image" and "text_image" in cfg.tags
    if name == "base":
        return
    assert cfg.task_name == f"text_image_{name}" and name in cfg.tags
    assert (cfg.projection.get("_target_") is not None) == (name in NEEDS_PROJECTION)
    assert (cfg.quality.get("_target_") is not None) == (name == "c2kd_quality")
    assert ("ce" in cfg.distill) and (len(cfg.distill) == 1) == (name == "no_kd")


def test_poor_teacher_differs_only_in_caption_informativeness(compose_cfg):
    c2kd = compose_cfg("experiment=text_image/c2kd")
    poor = compose_cfg("experiment=text_image/poor_teacher")
    a = OmegaConf.to_container(c2kd, resolve=False)
    b = OmegaConf.to_container(poor, resolve=False)
    assert b["data"]["synth"].pop("informativeness") < a["data"]["synth"].pop("informativeness")
    for cfg in (a, b):
        cfg.pop("task_name"), cfg.pop("tags")
    assert a == b


def test_independent_captions_keep_images_across_informativeness(tmp_path):
    size = dict(num_classes=3, train_per_class=6, val_per_class=2, test_per_class=2,
                image_size=16, independent_captions=True)
    good = generate_synth_captions(tmp_path, informativeness=1.0, **size)
    poor = generate_synth_captions(tmp_path, informativeness=0.0, **size)
    assert good != poor
    for split in ("train", "val", "test"):
        pngs = sorted((good / split / "images").glob("*.png"))
        assert pngs
        for png in pngs:
            assert png.read_bytes() == (poor / split / "images" / png.name).read_bytes()
        rows_g, rows_p = (
            [json.loads(line) for line in (root / split / "captions.jsonl").read_text().split("\n")
             if line]
            for root in (good, poor)
        )
        assert [r["label"] for r in rows_g] == [r["label"] for r in rows_p]
        assert [r["colour"] for r in rows_g] == [r["colour"] for r in rows_p]
        assert {r["caption_kind"] for r in rows_g} == {"informative"}
        assert "informative" not in {r["caption_kind"] for r in rows_p}


# ------------------------------------------------------------------- fast_dev_run
@pytest.mark.parametrize("name", METHODS)
def test_fast_dev_run(compose_cfg, name):
    cfg = compose_cfg(*_tiny(name), "debug=fast_dev_run")
    summary = train(cfg)
    run = Path(cfg.paths.output_dir)
    assert (run / "metrics.json").exists() and (run / "config.yaml").exists()
    assert 0.0 <= summary["student"]["test/acc"] <= 1.0
    assert "test/acc_top3" in summary["student"]  # top_k=5 is clipped to the 3 classes
    if name == "no_kd":  # student only: no teacher stage
        assert summary["teacher"] == {} and not (run / "teacher").exists()
    else:  # the teacher stage ran (fast_dev_run never caches it) before distillation
        assert (run / "teacher" / "teacher.ckpt").exists()
        assert 0.0 <= summary["teacher"]["test/acc"] <= 1.0


def test_modules_are_wired(compose_cfg):
    from crossdistill import builders as B
    from crossdistill.losses import LossComposer

    cfg = compose_cfg(*_tiny("c2kd_quality"))
    dm = B.build_datamodule(cfg)
    teacher = B.build_teacher_module(cfg, dm)
    assert teacher.encoder.vocab_size == dm.vocab_size
    loss = LossComposer(OmegaConf.to_container(cfg.distill, resolve=True))
    module = B.build_student_module(cfg, dm, loss, teacher)
    assert isinstance(module, DistillModule) and isinstance(module.projection, ProjectionHead)
    batch = next(iter(dm.train_dataloader()))
    inputs = module.loss_inputs(batch)
    assert inputs.sample_weights is not None and inputs.sample_weights.shape == (8,)
    assert inputs.teacher_embedding.shape == inputs.student_embedding.shape
    no_kd = compose_cfg(*_tiny("no_kd"))
    loss = LossComposer(OmegaConf.to_container(no_kd.distill, resolve=True))
    student = B.build_student_module(no_kd, dm, loss, None)
    assert type(student) is StudentModule


# -------------------------------------------------------------- short real training
def test_distillation_trains_and_loss_decreases(compose_cfg, capsys):
    cfg = compose_cfg(
        *_tiny("c2kd"),
        "data.synth.train_per_class=24",
        "trainer.max_epochs=5",
        "teacher.max_epochs=3",
        "student.optimizer.lr=0.02",
    )
    summary = train(cfg)
    run = Path(cfg.paths.output_dir)
    metrics = pd.read_csv(run / "csv" / "metrics.csv")
    per_epoch = metrics.groupby("epoch")["train/loss"].max().dropna()
    assert len(per_epoch) == 5
    assert per_epoch.iloc[-1] < per_epoch.iloc[0]
    for term in ("train/loss_ce", "train/loss_feature_margin", "train/loss_shared_classifier"):
        assert term in metrics.columns
    assert summary["checkpoint"] and Path(summary["checkpoint"]).exists()
    assert 0.0 <= summary["student"]["test/acc"] <= 1.0
    assert summary["teacher"]["test/acc"] > 1 / 3  # the text teacher learned something
    cached = list(Path(cfg.paths.teacher_cache_dir).glob("*/teacher.ckpt"))
    assert len(cached) == 1  # a real run caches its teacher for the other rows


# ---------------------------------------------------------------- reproduction script
def test_script_schedule_matches_steps(compose_cfg):
    script = _load_script()
    cfg = compose_cfg("experiment=text_image/c2kd")
    full = script.schedule(cfg, 1.0, 10, 6)
    assert full == {"max_epochs": 10, "teacher_epochs": 6, "val_every": 1}
    tenth = script.schedule(cfg, 0.1, 10, 6)  # 200 images, batch 128: 1 step per epoch
    assert tenth["max_epochs"] == 10 * 15 and tenth["val_every"] == 15
    quarter = script.schedule(cfg, 0.25, 10, 6)  # 500 images: 3 steps per epoch
    assert quarter["max_epochs"] == 50 and quarter["teacher_epochs"] == 30


def test_script_phases_train_each_teacher_once():
    script = _load_script()

    class Args:
        rows = list(script.ROWS)
        seeds = [0, 1]
        fractions = [1.0, 0.1]
        epochs, teacher_epochs, threads, overrides = 2, 2, 1, []

    jobs = script.plan_jobs(Args, Path("/tmp/unused"))
    assert len(jobs) == 8 * 2 * 2
    phases = script.phases(jobs)
    assert len(phases) == 4  # per seed: teachers first, then the rest
    for seed, (first, rest) in zip((0, 1), (phases[:2], phases[2:]), strict=True):
        assert len(first) == 2 * 2  # (default, poor) x fractions
        assert {j["row"] for j in first} == {"kd", "poor_teacher"}
        assert {j["seed"] for j in first + rest} == {seed} and len(first + rest) == 16
    assert all("experiment=text_image/" in script.job_overrides(j)[0] for j in jobs)


def test_script_table_and_plot(tmp_path):
    script = _load_script()
    records = [
        {"row": row, "seed": s, "fraction": f, "top1": 0.5 + 0.1 * s, "top5": 0.9,
         "teacher_top1": None if row == "no_kd" else 0.8}
        for row in ("no_kd", "c2kd") for s in (0, 1) for f in (1.0, 0.25, 0.1)
    ]
    text = script.table(records, ["no_kd", "c2kd"], [1.0, 0.25, 0.1])
    lines = text.strip().splitlines()
    assert lines[0].startswith("| method | top-1 (100 %) | top-5 (100 %) | top-1 (25 %)")
    assert "| no KD | 55.0 ± 7.1 | 90.0 ± 0.0 | 55.0 ± 7.1 | 55.0 ± 7.1 | — | 0,1 |" in text
    assert "80.0 ± 0.0 / 80.0 ± 0.0 / 80.0 ± 0.0" in text
    script.plot(records, ["no_kd", "c2kd"], [1.0, 0.25, 0.1], tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 0
    assert math.isnan(script._stats([])[0])


@pytest.mark.slow
def test_script_end_to_end_tiny(tmp_path):
    script = _load_script()
    overrides = [
        *TINY[:-2],  # the script disables the progress bar itself
        f"paths.data_dir={tmp_path / 'data'}", f"paths.log_dir={tmp_path / 'logs'}",
    ]
    rc = script.main([
        "--rows", "no_kd", "c2kd", "--seeds", "0", "--fractions", "1.0", "0.5",
        "--epochs", "1", "--teacher-epochs", "1", "--jobs", "1",
        "--out", str(tmp_path / "out"), "--", *overrides,
    ])
    assert rc == 0
    results = script.load_results(tmp_path / "out" / "results.jsonl")
    assert len(results) == 4
    table = (tmp_path / "out" / "table.md").read_text()
    assert table.count("| both (C2KD) |") == 2  # the results table and the paired table
    assert "Paired difference to no KD" in table and "(n=1, no interval)" in table
    assert (tmp_path / "out" / "text_image.png").exists()
