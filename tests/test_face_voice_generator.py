"""Built-in face -> voice generator (version 2): shared fraction gamma realised as configured,
data seed vs structure seed, per-frame nuisances, the face-only teacher pool, the manifest,
the oracle teacher input, bad values; the teacher stage trains on the pool."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image
from sklearn.linear_model import LinearRegression

from conftest import TINY_FACE_VOICE, TINY_FACE_VOICE_DATA
from crossdistill import builders
from crossdistill.data.datamodules.face_pool import FacePoolDataset, TeacherPoolDataModule
from crossdistill.data.datamodules.face_voice import FaceVoiceDataModule
from crossdistill.data.generators import synth_face_voice as synth
from crossdistill.modules.enrol import enrolled_classifier
from crossdistill.run_dir import load_run
from crossdistill.train import train

torch.set_num_threads(1)

TINY = {**TINY_FACE_VOICE_DATA, "frames_per_video": 3}


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    return synth.generate_synth_face_voice(tmp_path_factory.mktemp("fv_gen"), TINY)


def identities_only(**kw) -> synth.SynthFaceVoiceConfig:
    """Many identities, nothing written (identity sampling is numpy only)."""
    return synth.SynthFaceVoiceConfig(
        n_identities=600, n_val_identities=2, n_test_identities=2, **kw
    )


def r2_by_sklearn(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.array(
        [LinearRegression().fit(x, y[:, j]).score(x, y[:, j]) for j in range(y.shape[1])]
    )


# --------------------------------------------------------------------------- gamma
@pytest.mark.parametrize("gamma, n_shared", [(0.0, 0), (0.5, 3), (1.0, 6)])
def test_gamma_is_realised_as_configured(gamma, n_shared):
    cfg = identities_only(gamma=gamma, n_voice_factors=6, n_face_only=3)
    idents = synth.sample_identities(cfg)
    face = np.array([d["face_factors"] for d in idents])
    voice = np.array([d["voice_factors"] for d in idents])
    assert face.shape == (600, 9) and voice.shape == (600, 6) and cfg.n_shared == n_shared
    # the shared voice factors are copies of face factors, the others are not
    np.testing.assert_array_equal(voice[:, :n_shared], face[:, :n_shared])
    r2 = r2_by_sklearn(face, voice)
    assert (r2[:n_shared] > 0.999).all() and (r2[n_shared:] < 0.05).all()
    info = synth.shared_information(idents, cfg)
    np.testing.assert_allclose(info["r2_per_voice_factor"], r2, atol=1e-4)
    assert info["r2_voice_factors_from_face_factors"] == pytest.approx(r2.mean(), abs=1e-6)
    assert info["n_shared_factors"] == n_shared and info["gamma"] == gamma
    assert info["n_voice_only_factors"] == 6 - n_shared and info["n_face_factors"] == 9
    # attributes: nonlinear mixtures, so at gamma = 1 high but below 1; at 0 near chance
    attrs = info["r2_voice_attributes_from_face_attributes"]
    assert {0.0: attrs < 0.05, 0.5: 0.2 < attrs < 0.8, 1.0: attrs > 0.8}[gamma]


def test_gamma_rounds_half_up():
    assert [identities_only(gamma=g, n_voice_factors=3).n_shared for g in (0.5, 1 / 6, 0.1)] == [
        2, 1, 0]  # fmt: skip


# --------------------------------------------------------------------------- seeds
def test_data_seed_changes_identities_not_structure():
    a, b = identities_only(seed=0), identities_only(seed=1)
    for field in ("face_mixing", "voice_mixing"):
        np.testing.assert_array_equal(
            getattr(synth.mixing_structure(a), field), getattr(synth.mixing_structure(b), field)
        )
    other = synth.mixing_structure(identities_only(structure_seed=1))
    assert not np.allclose(other.face_mixing, synth.mixing_structure(a).face_mixing)
    fa = np.array([d["face_factors"] for d in synth.sample_identities(a)])
    fb = np.array([d["face_factors"] for d in synth.sample_identities(b)])
    assert not np.allclose(fa, fb)
    # the realised shared information barely moves with the data seed
    r2 = [
        synth.shared_information(synth.sample_identities(c), c)[
            "r2_voice_attributes_from_face_attributes"
        ]
        for c in (a, b)
    ]
    assert abs(r2[0] - r2[1]) < 0.05
    # gamma changes the voices only: the faces of a data seed are the same for every gamma
    g1 = np.array(
        [d["face_factors"] for d in synth.sample_identities(dataclasses.replace(a, gamma=1.0))]
    )
    np.testing.assert_array_equal(fa, g1)


def test_mixing_columns_are_orthogonal():
    s = synth.mixing_structure(identities_only())
    gram = s.face_mixing.T @ s.face_mixing
    np.testing.assert_allclose(gram, np.eye(9), atol=1e-9)  # 9 attributes, 9 factors
    assert s.voice_mixing.shape == (6, 6)


def test_structure_in_manifest_is_the_same_across_data_seeds(tmp_path):
    small = {**TINY, "n_teacher_identities": 2, "utterances_per_video": 1}
    roots = [synth.generate_synth_face_voice(tmp_path, {**small, "seed": s}) for s in (0, 1)]
    manifests = [json.loads((r / "manifest.json").read_text()) for r in roots]
    assert roots[0] != roots[1]
    assert manifests[0]["structure"] == manifests[1]["structure"]
    ids = [json.loads((r / "identities.json").read_text()) for r in roots]
    assert ids[0][0]["face_factors"] != ids[1][0]["face_factors"]


# --------------------------------------------------------------------------- files
def test_nuisances_vary_per_frame_within_a_video(synth_root):
    for video in sorted((synth_root / "faces").glob("*/*"))[:4]:
        frames = [np.asarray(Image.open(f), dtype=np.int64) for f in sorted(video.glob("*.png"))]
        assert len(frames) == 3
        corners = {tuple(f[0, 0]) for f in frames}  # background, per frame
        assert len(corners) == 3, video
        assert all(np.abs(frames[0] - f).mean() > 1.0 for f in frames[1:])


def test_teacher_pool_is_disjoint_from_the_paired_identities(synth_root):
    pool = (synth_root / synth.TEACHER_POOL_LIST).read_text().split()
    paired = [d["identity"] for d in json.loads((synth_root / "identities.json").read_text())]
    assert len(pool) == 6 and len(paired) == 8 and not set(pool) & set(paired)
    assert sorted(p.name for p in (synth_root / synth.TEACHER_FACES).iterdir()) == pool
    for ident in pool:
        assert len(list((synth_root / synth.TEACHER_FACES / ident).glob("*.png"))) == 2
    assert not list((synth_root / "wav").glob(f"{pool[0]}*"))  # faces only
    pool_factors = {
        tuple(d["face_factors"])
        for d in json.loads((synth_root / synth.TEACHER_IDENTITIES).read_text())
    }
    paired_factors = {
        tuple(d["face_factors"]) for d in json.loads((synth_root / "identities.json").read_text())
    }
    assert len(pool_factors) == 6 and not pool_factors & paired_factors


def test_manifest_reports_shared_information_and_counts(synth_root):
    m = json.loads((synth_root / "manifest.json").read_text())
    assert m["version"] == synth.GENERATOR_VERSION == 3 and m["params"]["gamma"] == 0.5
    info = m["shared_information"]
    assert (info["gamma"], info["n_voice_factors"], info["n_shared_factors"]) == (0.5, 3, 2)
    assert info["n_face_factors"] == 4 and info["n_identities"] == 8
    assert len(info["r2_per_voice_factor"]) == 3
    assert set(info["r2_per_voice_attribute"]) == set(synth.VOICE_ATTRS)
    assert m["teacher_pool"] == {"n_identities": 6, "n_face_frames": 12}
    assert m["n_utterances"] == 8 * 2 * 2 and m["n_face_frames"] == 8 * 2 * 3
    trials = (synth_root / "trials_test.txt").read_text().splitlines()
    assert m["target_trials"]["test"] == sum(line.startswith("1 ") for line in trials) > 0
    assert np.array(m["structure"]["face_mixing"]).shape == (9, 4)
    idents = json.loads((synth_root / "identities.json").read_text())
    assert {"face_factors", "voice_factors", "face", "voice", "split"} <= set(idents[0])


def test_default_sizes_give_enough_target_trials():
    cfg = synth.SynthFaceVoiceConfig()
    assert (
        cfg.n_identities - cfg.n_val_identities - cfg.n_test_identities,
        cfg.n_val_identities,
        cfg.n_test_identities,
    ) == (600, 100, 300)
    # distinct cross-video target pairs per test speaker, and the trial maker draws them
    videos, utts = cfg.videos_per_identity, cfg.utterances_per_video
    assert cfg.n_test_identities * videos * (videos - 1) // 2 * utts**2 >= cfg.n_trials // 2
    by_id = {
        f"id{i}": [f"id{i}/vid{v:02d}/{u:05d}.wav" for v in range(videos) for u in range(utts)]
        for i in range(cfg.n_test_identities)
    }
    trials = synth.make_trials(by_id, cfg.n_trials, seed=4)
    assert sum(t.label for t in trials) == cfg.n_trials // 2 >= 5000


@pytest.mark.parametrize("change, key", [
    ({"gamma": -0.1}, "gamma"), ({"gamma": 1.5}, "gamma"), ({"gamma": float("nan")}, "gamma"),
    ({"n_voice_factors": 0}, "n_voice_factors"), ({"n_voice_factors": 7}, "n_voice_factors"),
    ({"n_face_only": -1}, "n_face_only"), ({"n_face_only": 7}, "n_face_only"),
    ({"n_teacher_identities": -1}, "n_teacher_identities"),
    ({"teacher_frames_per_identity": 0}, "teacher_frames_per_identity"),
    ({"n_val_trials": 0}, "n_val_trials"), ({"n_test_identities": 1}, "n_test_identities"),
])  # fmt: skip
def test_bad_generator_values_fail_naming_the_key(tmp_path, change, key):
    with pytest.raises(ValueError, match=rf"generator\.{key}"):
        synth.generate_synth_face_voice(tmp_path, {**TINY, **change})


# --------------------------------------------------------------------------- datamodule
def tiny_dm(root_dir: Path, **kw) -> FaceVoiceDataModule:
    dm = FaceVoiceDataModule(
        data_dir=str(root_dir), generator=TINY, crop_seconds=0.5, batch_size=4, seed=1, **kw
    )
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_oracle_teacher_input_is_the_true_face_factors_plus_noise(synth_root):
    factors = {
        d["identity"]: d["face_factors"]
        for d in json.loads((synth_root / "identities.json").read_text())
    }
    data_dir = synth_root.parents[1]
    exact = tiny_dm(data_dir, teacher_input="oracle_factors", oracle_noise_std=0.0)
    noisy = tiny_dm(
        data_dir, teacher_input="oracle_factors", oracle_noise_std=0.5, teacher_pool=True
    )
    assert exact.teacher_input_shape == (4,) and exact.encoder_inputs("teacher") == {"input_dim": 4}
    assert exact.teacher_input_fixed_per_index
    diffs = []
    for split in ("train", "val", "test"):
        ds, ds_noisy = exact.dataset(split), noisy.dataset(split)
        for i in range(len(ds)):
            want = torch.tensor(factors[ds.items[i].identity], dtype=torch.float32)
            torch.testing.assert_close(ds[i]["teacher_input"], want)
            x = ds_noisy[i]["teacher_input"]
            torch.testing.assert_close(x, ds_noisy[i]["teacher_input"])  # fixed per index
            diffs.append((x - want).numpy())
    diffs = np.concatenate(diffs)
    assert 0.4 < diffs.std() < 0.6 and abs(diffs.mean()) < 0.1
    pool = noisy.teacher_stage_datamodule().dataset("train")
    pool_factors = {
        d["identity"]: d["face_factors"]
        for d in json.loads((synth_root / synth.TEACHER_IDENTITIES).read_text())
    }
    ident, _ = pool.frames[3]
    err = pool[3]["teacher_input"] - torch.tensor(pool_factors[ident], dtype=torch.float32)
    assert pool[3]["teacher_input"].shape == (4,) and err.abs().max() < 2.5


def test_oracle_and_pool_refused_with_real_data(synth_root):
    with pytest.raises(ValueError, match="teacher_input=oracle_factors needs the built-in"):
        FaceVoiceDataModule(root=str(synth_root), image_size=32, teacher_input="oracle_factors")
    with pytest.raises(ValueError, match="teacher_pool=true needs the built-in"):
        FaceVoiceDataModule(root=str(synth_root), image_size=32, teacher_pool=True)
    with pytest.raises(ValueError, match="teacher_input='faces'; valid"):
        FaceVoiceDataModule(teacher_input="faces")


def test_teacher_stage_trains_on_the_pool_and_tests_on_the_paired_speakers(synth_root):
    dm = tiny_dm(synth_root.parents[1], teacher_pool=True)
    stage = builders.teacher_stage_data(dm)
    assert isinstance(stage, TeacherPoolDataModule) and stage.num_classes == 6
    assert builders.teacher_stage_data(tiny_dm(synth_root.parents[1])) is not stage
    pool = stage.dataset("train")
    assert isinstance(pool, FacePoolDataset) and len(pool) == 12
    batch = next(iter(stage.loader("train", ordered=True)))
    assert batch["teacher_input"].shape == (4, 3, 16, 16) and "student_input" not in batch
    assert batch["label"].tolist() == [0, 0, 1, 1]
    paired = set(dm.splits["train"]) | set(dm.splits["val"]) | set(dm.splits["test"])
    assert not set(pool.identities) & paired
    assert stage.dataset("test") is dm.dataset("test") and stage.trials("val") == dm.trials("val")


def test_enrolled_classifier_prototypes_are_class_means():
    class Identity(torch.nn.Module):
        embedding_dim = 2

        def forward(self, x):
            return x

    batches = [
        {"teacher_input": torch.tensor([[1.0, 0.0], [0.0, 1.0]]), "label": torch.tensor([0, 0])},
        {"teacher_input": torch.tensor([[0.0, 2.0]]), "label": torch.tensor([1])},
    ]
    head = enrolled_classifier(Identity(), batches, num_classes=2, scale=10.0)
    # class 0: mean of (1, 0) and (0, 1) = (0.5, 0.5) -> (0.7071, 0.7071); class 1: (0, 1)
    torch.testing.assert_close(head.weight, torch.tensor([[0.70710678, 0.70710678], [0, 1.0]]))
    torch.testing.assert_close(head(torch.tensor([[3.0, 0.0]])), torch.tensor([[7.0710678, 0]]))
    with pytest.raises(ValueError, match=r"classes \[2\] have no samples"):
        enrolled_classifier(Identity(), batches, num_classes=3)


# --------------------------------------------------------------------------- pipeline
def test_teacher_trained_on_the_pool_then_kd_through_enrolled_logits(tiny_face_voice):
    cfg = tiny_face_voice(
        "face_voice/kd",
        "trainer.max_epochs=1",
        "teacher.max_epochs=1",
        "callbacks.progress_bar=null",
    )
    assert cfg.data.teacher_pool
    dm = builders.build_datamodule(cfg)
    teacher = builders.build_teacher_module(cfg, dm)
    assert teacher.classifier.weight.shape[0] == 6 == teacher.num_classes  # pool identities
    summary = train(cfg)
    assert 0.0 <= summary["student"]["test/eer"] <= 1.0 and "test/eer" in summary["teacher"]
    # re-testing the run rebuilds the enrolled head's shape and loads it from the checkpoint
    run = load_run(summary["run_dir"])
    assert run.module.teacher_classifier.weight.shape[0] == dm.num_classes == 4
    result = pl.Trainer(logger=False, enable_progress_bar=False).test(run.module, run.datamodule)
    assert result[0]["test/eer"] == pytest.approx(summary["student"]["test/eer"], abs=1e-6)


def test_teacher_pool_off_trains_on_the_paired_speakers(tiny_face_voice):
    cfg = tiny_face_voice("face_voice/kd", "data.teacher_pool=false")
    dm = builders.build_datamodule(cfg)
    assert builders.teacher_stage_data(dm) is dm
    assert builders.build_teacher_module(cfg, dm).classifier.weight.shape[0] == dm.num_classes


def test_oracle_teacher_fast_dev_run(compose_cfg):
    tiny = [o for o in TINY_FACE_VOICE if not o.startswith("teacher.encoder.")]
    cfg = compose_cfg(
        "experiment=face_voice/c2kd",
        *tiny,
        "teacher=oracle",
        "data.teacher_input=oracle_factors",
        "debug=fast_dev_run",
    )
    assert cfg.teacher.encoder._target_.endswith("MLPEncoder")
    summary = train(cfg)
    assert "test/eer" in summary["teacher"] and 0.0 <= summary["student"]["test/eer"] <= 1.0


def test_every_gamma_shares_one_pool_teacher_but_not_other_changes(tiny_face_voice):
    """gamma changes only the voices: the pool teacher's files (pool faces, paired faces,
    splits, trials) are byte-identical, so its cache key is the same; what the teacher does
    see (the pool's size, the face size) selects another teacher."""
    def key_and_root(*overrides: str) -> tuple[str, Path]:
        cfg = tiny_face_voice("face_voice/kd", *overrides)
        dm = builders.build_datamodule(cfg)
        return builders.teacher_cache_key(cfg, dm), dm.teacher_stage_datamodule().input_paths()

    (key0, paths0), (key1, paths1) = key_and_root("data.generator.gamma=0"), key_and_root(
        "data.generator.gamma=1")
    assert paths0[0].parent != paths1[0].parent  # two generated datasets ...
    assert key0 == key1  # ... one teacher
    faces0, faces1 = (sorted((p / "faces").rglob("*.png")) for p in (paths0[0].parent,
                                                                      paths1[0].parent))
    assert [f.read_bytes() for f in faces0] == [f.read_bytes() for f in faces1]
    assert key_and_root("data.generator.gamma=1", "data.image_size=12")[0] != key1
    assert key_and_root("data.generator.gamma=1",
                        "data.generator.teacher_frames_per_identity=3")[0] != key1
    # without the pool the teacher trains on the paired data, voices included: per gamma
    off0 = key_and_root("data.generator.gamma=0", "data.teacher_pool=false")[0]
    assert off0 != key_and_root("data.generator.gamma=1", "data.teacher_pool=false")[0]
