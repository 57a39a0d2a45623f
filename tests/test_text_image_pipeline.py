"""Text -> image pipeline (issue 4): experiment configs, fast_dev_runs of teacher /
student-only / distillation through ``crossdistill.train.train``, a short real training.
The reproduction table (conf/table/text_image.yaml) is tested in test_tables_spec.py."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from conftest import TINY_TEXT_IMAGE
from crossdistill.data.generators.synth_captions import generate_synth_captions
from crossdistill.metrics.predictions import load_predictions, predictions_path
from crossdistill.models.heads import ProjectionHead
from crossdistill.modules import DistillModule, StudentModule
from crossdistill.train import train
from crossdistill.utils.config import CONFIG_DIR

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment" / "text_image").glob("*.yaml"))
METHODS = [e for e in EXPERIMENTS if e != "base"]
NEEDS_PROJECTION = {
    "hard_l2",
    "feature_margin",
    "shared_classifier",
    "c2kd",
    "c2kd_quality",
    "poor_teacher",
}



def _tiny(name: str) -> list[str]:
    extra = ["projection.hidden_dim=8"] if name in NEEDS_PROJECTION else []
    return [f"experiment=text_image/{name}", *TINY_TEXT_IMAGE, *extra]


# ---------------------------------------------------------------------- configs
def test_all_rows_have_an_experiment():
    assert set(METHODS) == {
        "no_kd",
        "kd",
        "hard_l2",
        "rkd",
        "feature_margin",
        "shared_classifier",
        "c2kd",
        "c2kd_quality",
        "poor_teacher",
    }


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
    size = dict(
        num_classes=3,
        train_per_class=6,
        val_per_class=2,
        test_per_class=2,
        image_size=16,
        independent_captions=True,
    )
    good = generate_synth_captions(tmp_path, informativeness=1.0, **size)
    poor = generate_synth_captions(tmp_path, informativeness=0.0, **size)
    assert good != poor
    for split in ("train", "val", "test"):
        pngs = sorted((good / split / "images").glob("*.png"))
        assert pngs
        for png in pngs:
            assert png.read_bytes() == (poor / split / "images" / png.name).read_bytes()
        rows_g, rows_p = (
            [
                json.loads(line)
                for line in (root / split / "captions.jsonl").read_text().split("\n")
                if line
            ]
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
    from crossdistill import builders
    from crossdistill.losses import LossComposer

    cfg = compose_cfg(*_tiny("c2kd_quality"))
    dm = builders.build_datamodule(cfg)
    teacher = builders.build_teacher_module(cfg, dm)
    assert teacher.encoder.vocab_size == dm.vocab_size
    loss = LossComposer(OmegaConf.to_container(cfg.distill, resolve=True))
    module = builders.build_student_module(cfg, dm, loss, teacher)
    assert isinstance(module, DistillModule) and isinstance(module.projection, ProjectionHead)
    batch = next(iter(dm.train_dataloader()))
    inputs = module.loss_inputs(batch)
    assert inputs.sample_weights is not None and inputs.sample_weights.shape == (8,)
    assert inputs.teacher_embedding.shape == inputs.student_embedding.shape
    no_kd = compose_cfg(*_tiny("no_kd"))
    loss = LossComposer(OmegaConf.to_container(no_kd.distill, resolve=True))
    student = builders.build_student_module(no_kd, dm, loss, None)
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
    # every test image's prediction is saved and gives the logged accuracies (the tables'
    # sample bootstrap reads them)
    saved = load_predictions(predictions_path(run, "test"))
    assert saved.index.tolist() == list(range(12))  # 3 classes x 4 test images
    for key, k in (("test/acc", 1), ("test/acc_top3", 3)):
        assert saved.correct(k).mean() == pytest.approx(summary["student"][key], abs=1e-6)
    cached = list(Path(cfg.paths.teacher_cache_dir).glob("*/teacher.ckpt"))
    assert len(cached) == 1  # a real run caches its teacher for the other rows
