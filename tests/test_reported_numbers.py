"""Defects that silently changed reported numbers: last.ckpt, KD against a margin head,
stale caches, cache-dependent random streams (each test failed on the code before)."""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict
from PIL import Image
from torch import nn

from crossdistill import builders
from crossdistill.losses import LossComposer
from crossdistill.models.heads import (
    AdditiveAngularMarginClassifier,
    CosineClassifier,
    LinearClassifier,
)
from crossdistill.modules import DistillModule
from crossdistill.train import train
from crossdistill.utils import fingerprint, teacher_store
from crossdistill.utils.fingerprint import fingerprint_paths

torch.set_num_threads(1)


# ------------------------------------------------------------------ 1. last.ckpt
@pytest.mark.parametrize("val_every", [10, 7])
def test_last_ckpt_holds_the_final_state(compose_cfg, val_every):
    """lr = 0 keeps val/acc constant, so the monitored metric never improves after the
    first validation: Lightning 2.6 left last.ckpt at step ``val_every``. With validation
    every 7 epochs the last epoch (30) runs none: last.ckpt must still be step 30."""
    cfg = compose_cfg(
        "experiment=mfh/exp1",
        "distill=none",
        "trainer.max_epochs=30",
        f"trainer.check_val_every_n_epoch={val_every}",
        "student.optimizer.lr=0.0",
    )
    summary = train(cfg)
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    assert summary["checkpoint"] == str(last)  # test_ckpt=last (MFH protocol)
    state = torch.load(last, map_location="cpu", weights_only=False)
    assert state["global_step"] == 30


def test_resume_from_last_continues_where_training_stopped(compose_cfg, tmp_path):
    """Resuming from last.ckpt of a finished 20-epoch run and asking for 30 epochs trains
    exactly 10 more steps (a stale last.ckpt repeated epochs)."""
    common = ("experiment=mfh/exp1", "distill=none", "trainer.check_val_every_n_epoch=10")
    first = compose_cfg(*common, "trainer.max_epochs=20", "student.optimizer.lr=0.0")
    train(first)
    last = Path(first.paths.output_dir) / "checkpoints" / "last.ckpt"
    second = compose_cfg(*common, "trainer.max_epochs=30", f"ckpt_path={last}")
    with open_dict(second):
        second.paths.output_dir = str(tmp_path / "resumed")
    train(second)
    resumed = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=False)
    assert resumed["global_step"] == 30


# ------------------------------------------------------------------ 2. KD vs margin heads
class _Affine(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(6, 5)
        self.embedding_dim = 5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.mark.parametrize(
    "head",
    [
        lambda: LinearClassifier(5, 4),
        lambda: CosineClassifier(5, 4, scale=16.0),
        lambda: AdditiveAngularMarginClassifier(5, 4, margin=0.2, scale=30.0),
    ],
    ids=["linear", "cosine", "aam"],
)
def test_identical_student_and_teacher_have_zero_kd_loss_and_gradient(head):
    torch.manual_seed(0)
    encoder, classifier = _Affine(), head()
    module = DistillModule(
        encoder,
        classifier,
        num_classes=4,
        optimizer=torch.optim.SGD,
        teacher_encoder=copy.deepcopy(encoder),
        teacher_classifier=copy.deepcopy(classifier),
        loss=LossComposer({"kd": {"weight": 1.0, "temperature": 4.0}}),
    )
    x = torch.randn(8, 6)
    batch = {"student_input": x, "teacher_input": x.clone(), "label": torch.arange(8) % 4}
    total, parts = module.loss(module.loss_inputs(batch))
    total.backward()
    assert parts["kd"].item() == pytest.approx(0.0, abs=1e-6)
    for name, p in module.named_parameters():
        if p.requires_grad:
            assert p.grad.abs().max().item() < 1e-6, name


# ------------------------------------------------------------------ 3. stale caches
def test_fingerprint_sees_content_and_stat_changes(tmp_path):
    root = tmp_path / "data"
    (root / "a").mkdir(parents=True)
    f = root / "a" / "x.bin"
    f.write_bytes(b"0123")
    content, stat = fingerprint_paths([root], "content"), fingerprint_paths([root], "stat")
    st = f.stat()
    f.write_bytes(b"9876")  # same size, then the old mtime put back (like cp -p)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert fingerprint_paths([root], "content") != content
    assert fingerprint_paths([root], "stat") == stat  # the documented blind spot of `stat`
    f.write_bytes(b"98765")
    assert fingerprint_paths([root], "stat") != stat
    (root / "a" / "new.bin").write_bytes(b"")
    assert fingerprint_paths([root], "content") not in (content,)
    with pytest.raises(ValueError, match="cache_check must be one of"):
        fingerprint_paths([root], "mtime")


def _count_reads(monkeypatch) -> list[Path]:
    read: list[Path] = []
    real = fingerprint._hash_file
    monkeypatch.setattr(fingerprint, "_hash_file", lambda p: read.append(p) or real(p))
    monkeypatch.setattr(fingerprint, "_digests", {})
    return read


def test_content_digest_read_once_per_process_while_stat_unchanged(tmp_path, monkeypatch):
    root = tmp_path / "data"
    root.mkdir()
    f = root / "x.bin"
    f.write_bytes(b"0123")
    read = _count_reads(monkeypatch)
    monkeypatch.setattr(fingerprint, "_SETTLED_NS", -1)  # every file counts as settled
    first = fingerprint_paths([root], "content")
    assert fingerprint_paths([root], "content") == first
    assert read == [f]  # the second fingerprint reused the digest
    st = f.stat()
    time.sleep(0.05)  # past the kernel's timestamp granularity
    f.write_bytes(b"9876")  # same size, old mtime put back: only ctime tells
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert fingerprint_paths([root], "content") != first
    assert read == [f, f]


def test_content_digest_of_a_just_written_file_is_not_remembered(tmp_path, monkeypatch):
    f = tmp_path / "x.bin"
    f.write_bytes(b"0123")
    read = _count_reads(monkeypatch)
    fingerprint_paths([f], "content")
    fingerprint_paths([f], "content")
    assert read == [f, f]


def _overwrite_faces(root: Path) -> int:
    """Rewrite every face image in place with other pixels (same names and sizes)."""
    n = 0
    for png in sorted(root.rglob("*.png")):
        img = Image.open(png)
        Image.new(img.mode, img.size, color=(n * 37) % 255).save(png)
        n += 1
    return n


def test_changed_face_images_invalidate_teacher_and_feature_caches(tiny_face_voice):
    cfg = tiny_face_voice("face_voice/c2kd")
    dm = builders.build_datamodule(cfg)
    teacher = builders.build_teacher_module(cfg, dm)
    key = teacher_store.teacher_key(cfg, builders.data_fingerprint(cfg, dm))
    cache = builders.build_teacher_cache(cfg, dm, teacher)
    assert _overwrite_faces(Path(dm.input_paths()[0])) > 0

    dm2 = builders.build_datamodule(cfg)  # the same config over the changed files
    assert teacher_store.teacher_key(cfg, builders.data_fingerprint(cfg, dm2)) != key
    cache2 = builders.build_teacher_cache(cfg, dm2, teacher)
    assert cache2.array_path != cache.array_path
    batch = next(iter(torch.utils.data.DataLoader(dm2.datasets["train"], batch_size=4)))
    with torch.no_grad():
        fresh = teacher.encoder.eval()(batch["teacher_input"])
    torch.testing.assert_close(cache2.lookup(batch["index"]), fresh, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ 4. cold vs warm caches
def test_student_does_not_depend_on_cache_state(tiny_face_voice, tmp_path):
    """Run 1 trains the teacher and builds the feature cache (cold); run 2 reuses both
    (warm). The student must be the same: same metrics, same weights."""
    extra = ("trainer.max_epochs=1", "teacher.max_epochs=1", "callbacks.progress_bar=null")
    summaries, weights = [], []
    for name in ("cold", "warm"):
        cfg = tiny_face_voice("face_voice/c2kd", *extra)
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / name)
        summaries.append(train(cfg))
        ckpt = torch.load(summaries[-1]["checkpoint"], weights_only=False)
        weights.append(ckpt["state_dict"])
    trained = [(tmp_path / name / "teacher" / "checkpoints").exists() for name in ("cold", "warm")]
    assert trained == [True, False]  # the warm run reused the teacher (recorded, not trained)
    assert summaries[0]["student"] == summaries[1]["student"]
    for name, value in weights[0].items():
        torch.testing.assert_close(weights[1][name], value, rtol=0, atol=0, msg=name)
