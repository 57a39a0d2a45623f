"""Face -> voice pipeline: verification evaluator, teacher-feature cache, experiment configs
and fast_dev_runs of teacher, student and distillation on tiny generated data."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf, open_dict
from torch import nn

from crossdistill import builders
from crossdistill.data.datamodules.verification import VerificationData
from crossdistill.data.readers.voxceleb.layout import Utterance
from crossdistill.data.readers.voxceleb.trials import Trial
from crossdistill.losses import LossComposer
from crossdistill.metrics.verification import compute_eer, compute_min_dcf, cosine_scores
from crossdistill.modules import DistillModule
from crossdistill.modules.verification import VerificationEvaluator, snr_name
from crossdistill.train import train
from crossdistill.utils.config import CONFIG_DIR

torch.set_num_threads(1)

EXPERIMENTS = sorted(
    f"face_voice/{p.stem}" for p in (CONFIG_DIR / "experiment" / "face_voice").glob("*.yaml")
)


# --------------------------------------------------------------------------- configs
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_face_voice_experiments_compose(compose_cfg, experiment):
    cfg = compose_cfg(f"experiment={experiment}")
    assert cfg.monitor == "val/eer" and cfg.monitor_mode == "min"
    assert cfg.evaluator._target_.endswith("VerificationEvaluator")
    assert cfg.teacher.evaluator._target_.endswith("VerificationEvaluator")
    assert cfg.data._target_.endswith("FaceVoiceDataModule") and "face_voice" in cfg.tags
    loss = LossComposer(OmegaConf.to_container(cfg.distill))
    if builders.loss_needs_teacher(loss) and "teacher_embedding" in loss.required_fields:
        assert builders.is_enabled(cfg.projection)  # teacher 64-d, student 32-d
    assert set(EXPERIMENTS) >= {
        f"face_voice/{r}"
        for r in (
            "no_kd",
            "hard_l2",
            "kd",
            "rkd",
            "feature_margin",
            "shared_classifier",
            "c2kd",
            "c2kd_quality",
            "weak_teacher",
        )
    }


def test_model_configs_have_training_keys(compose_cfg):
    for group, name in (
        ("teacher", "timm_image"),
        ("student", "timm_image"),
        ("student", "ecapa"),
        ("student", "ecapa_tiny"),
        ("teacher", "timm_face"),
    ):
        cfg = compose_cfg(f"{group}={name}")
        node = cfg[group]
        assert node.optimizer._partial_ and "scheduler" in node, (group, name)
        if group == "teacher":
            assert {"max_epochs", "ckpt_path", "reuse"} <= set(node), name


# --------------------------------------------------------------------------- evaluator
class _Lookup(nn.Module):
    """'Encoder' returning fixed embeddings: input [B, 1] holds the utterance index."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table
        self.embedding_dim = table.shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[x[:, 0].long()]


def _fake_setup(n_spk=5, per_spk=4, dim=6, n_trials=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_spk, dim, generator=g)
    labels = torch.arange(n_spk).repeat_interleave(per_spk)
    emb = centres[labels] + 0.9 * torch.randn(len(labels), dim, generator=g)
    items = [
        Utterance(f"id{s}/v{j % 2}/{j}.wav", f"id{s}", f"v{j % 2}")
        for s in range(n_spk)
        for j in range(per_spk)
    ]
    paths = [u.path for u in items]
    trials = []
    for _ in range(n_trials):
        a, b = torch.randint(len(paths), (2,), generator=g).tolist()
        trials.append(Trial(int(labels[a] == labels[b]), paths[a], paths[b]))
    return _FakeVerificationData(items, trials), emb, labels, paths, trials


class _FakeVerificationData(VerificationData):
    """Fixed eval utterances and trials (the same for every split)."""

    def __init__(self, items, trials):
        self.items, self.trial_list = items, trials

    def trials(self, split):
        return self.trial_list

    def eval_utterances(self, split):
        return self.items

    def noisy_eval_input(self, batch, snr_db, seed, kind="white"):  # pragma: no cover
        raise AssertionError("no noise pass configured")


def _no_teacher(batch):
    return None


def _run_evaluator(evaluator, module, emb, labels, order, batch_size=3, split="val"):
    for start in range(0, len(order), batch_size):
        idx = torch.tensor(order[start : start + batch_size])
        batch = {"student_input": idx[:, None].float(), "index": idx, "label": labels[idx]}
        evaluator.step(module, batch, split)
    return evaluator.compute(split)


def test_evaluator_eer_matches_metrics_on_known_embeddings():
    dm, emb, labels, paths, trials = _fake_setup()
    module = SimpleNamespace(encoder=_Lookup(emb), teacher_embedding_for_matching=_no_teacher)
    module.embed = module.encoder
    ev = VerificationEvaluator(dm, noise_snr_db=[], matching_k=[2])
    order = torch.randperm(len(paths), generator=torch.Generator().manual_seed(1)).tolist()
    order = order + order[:4]  # DDP-style padding duplicates must not matter
    got = _run_evaluator(ev, module, emb, labels, order)
    scores = cosine_scores({p: emb[i] for i, p in enumerate(paths)}, trials)
    trial_labels = torch.tensor([t.label for t in trials])
    assert got["val/eer"] == pytest.approx(compute_eer(scores, trial_labels)[0], abs=1e-6)
    assert got["val/min_dcf"] == pytest.approx(
        compute_min_dcf(scores, trial_labels, p_target=0.01)[0], abs=1e-6
    )
    assert "val/match_1of2" not in got  # no teacher in this module
    assert 0.0 <= got["val/id_acc"] <= 1.0

    # perfectly separable embeddings: EER 0, identification perfect
    one_hot = torch.eye(5)[labels] * 3
    module.encoder = module.embed = _Lookup(one_hot)
    got = _run_evaluator(ev, module, one_hot, labels, list(range(len(paths))))
    assert got["val/eer"] == 0.0 and got["val/id_acc"] == 1.0

    # partial pass: only trials among embedded utterances are scored
    module.encoder = module.embed = _Lookup(emb)
    seen = set(range(12))
    got = _run_evaluator(ev, module, emb, labels, sorted(seen))
    sub = [t for t in trials if paths.index(t.enroll) in seen and paths.index(t.test) in seen]
    sub_labels = torch.tensor([t.label for t in sub])
    if sub and 0 < int(sub_labels.sum()) < len(sub):
        ref = compute_eer(cosine_scores({p: emb[i] for i, p in enumerate(paths)}, sub), sub_labels)[
            0
        ]
        assert got["val/eer"] == pytest.approx(ref, abs=1e-6)


def test_evaluator_rejects_data_without_trials():
    with pytest.raises(TypeError, match="VerificationData"):
        VerificationEvaluator(SimpleNamespace(trials=lambda split: []))


def test_evaluator_matching_uses_projected_teacher_faces():
    dm, emb, labels, paths, _ = _fake_setup(n_spk=6, per_spk=4, dim=6)
    centres = torch.eye(6)[labels]
    face_in = centres + 0.01 * torch.randn_like(centres)

    class Module(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = _Lookup(centres)
            self.teacher_encoder = nn.Identity()
            self.projection = nn.Identity()

        def embed(self, x):
            return self.encoder(x)

        def teacher_embedding_for_matching(self, batch):
            return self.projection(self.teacher_encoder(batch["teacher_input"]))

    ev = VerificationEvaluator(dm, noise_snr_db=[], matching_k=[2, 5, 7])
    module = Module()
    for start in range(0, len(paths), 5):
        idx = torch.arange(start, min(start + 5, len(paths)))
        ev.step(
            module,
            {
                "student_input": idx[:, None].float(),
                "index": idx,
                "label": labels[idx],
                "teacher_input": face_in[idx],
            },
            "test",
        )
    got = ev.compute("test")
    assert got["test/match_1of2"] == 1.0 and got["test/match_1of5"] == 1.0
    assert "test/match_1of7" not in got  # only 6 speakers


def test_snr_names():
    assert [snr_name(s) for s in (20.0, 0.0, -5.0, 2.5)] == ["snr20", "snr0", "snr-5", "snr2.5"]


# --------------------------------------------------------------------------- pipeline
@pytest.fixture()
def tiny_dm_cfg(tiny_face_voice):
    return tiny_face_voice


def test_fast_dev_run_distillation_with_cache(tiny_dm_cfg):
    cfg = tiny_dm_cfg("face_voice/c2kd_quality", "debug=fast_dev_run")
    summary = train(cfg)
    student, teacher = summary["student"], summary["teacher"]
    assert 0.0 <= student["test/eer"] <= 1.0 and student["test/min_dcf"] >= 0.0
    for snr in (20, 10, 0):
        assert f"test/eer_snr{snr}" in student
    assert "test/match_1of2" in student and "test/id_acc" in student
    assert json.loads((Path(summary["run_dir"]) / "metrics.json").read_text())["student"]
    cache_files = list(Path(cfg.paths.teacher_cache_dir, "features").glob("*.npy"))
    assert len(cache_files) == 1
    assert "test/eer" in teacher  # face verification of the teacher


@pytest.mark.parametrize("experiment", ["face_voice/no_kd", "face_voice/kd", "face_voice/rkd"])
def test_fast_dev_run_other_rows(tiny_dm_cfg, experiment):
    summary = train(tiny_dm_cfg(experiment, "debug=fast_dev_run"))
    assert 0.0 <= summary["student"]["test/eer"] <= 1.0
    assert "test/match_1of2" not in summary["student"]  # no projected teacher faces


def test_teacher_trains_with_face_verification_and_is_reused(tiny_dm_cfg, tmp_path):
    common = ("trainer.max_epochs=1", "teacher.max_epochs=1", "callbacks.progress_bar=null")
    cfg = tiny_dm_cfg("face_voice/feature_margin", *common)
    summary = train(cfg)
    assert "test/eer" in summary["teacher"] and "test/match_1of2" in summary["student"]
    assert (Path(summary["run_dir"]) / "teacher" / "teacher.ckpt").exists()
    ckpts = list((Path(summary["run_dir"]) / "teacher" / "checkpoints").glob("epoch_*.ckpt"))
    assert ckpts  # selected on the teacher's val/eer
    cfg2 = tiny_dm_cfg("face_voice/shared_classifier", *common)
    with open_dict(cfg2):
        cfg2.paths.output_dir = str(tmp_path / "run2")
    summary2 = train(cfg2)
    assert summary2["teacher"] == summary["teacher"]  # same teacher reused across rows
    assert not (Path(summary2["run_dir"]) / "teacher" / "checkpoints").exists()  # reused


def test_cached_teacher_features_equal_computed(tiny_dm_cfg):
    cfg = tiny_dm_cfg("face_voice/c2kd", "quality=feature_norm")
    dm = builders.build_datamodule(cfg)
    teacher = builders.build_teacher_module(cfg, dm)
    loss = LossComposer(OmegaConf.to_container(cfg.distill))
    module = builders.build_student_module(cfg, dm, loss, teacher)
    assert isinstance(module, DistillModule) and module.teacher_cache is not None
    batch = next(iter(dm.train_dataloader()))
    module.train()
    cached = module.loss_inputs(batch).teacher_raw_embedding
    with torch.no_grad():
        computed = module.teacher_encoder(batch["teacher_input"])
    torch.testing.assert_close(cached, computed, rtol=1e-5, atol=1e-5)

    # in training the cache replaces the teacher: a broken teacher forward is never called
    def boom(*_a, **_k):
        raise AssertionError("teacher ran although its features are cached")

    module.teacher_encoder.forward = boom
    module.loss_inputs(batch)

    # a second build with the same teacher/data reuses the published file
    again = builders.build_teacher_cache(cfg, dm, teacher)
    assert again.array_path == module.teacher_cache.array_path


def test_cache_refused_for_random_teacher_input(tiny_dm_cfg):
    cfg = tiny_dm_cfg("face_voice/c2kd", "data.train_face_frame=random")
    dm = builders.build_datamodule(cfg)
    teacher = builders.build_teacher_module(cfg, dm)
    with pytest.raises(ValueError, match="train_face_frame=per_index"):
        builders.build_teacher_cache(cfg, dm, teacher)


def test_per_index_face_is_deterministic(tiny_dm_cfg):
    dm = builders.build_datamodule(tiny_dm_cfg("face_voice/c2kd"))
    ds = dm.datasets["train"]
    assert dm.teacher_input_fixed_per_index
    for i in (0, 1, len(ds) - 1):
        torch.testing.assert_close(ds[i]["teacher_input"], ds[i]["teacher_input"])
