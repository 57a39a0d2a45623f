"""Quality estimators and the QualityWeighter."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from crossdistill.losses import LossComposer, LossInputs
from crossdistill.models.heads import LinearClassifier
from crossdistill.modules import DistillModule
from crossdistill.quality import (
    BatchFieldQuality,
    QualityWeighter,
    SNRQuality,
    TeacherEmbeddingNorm,
    snr,
    teacher_embedding_norm,
)

CONF = Path(__file__).resolve().parents[1] / "conf" / "quality"


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_estimators():
    raw = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    inp = LossInputs(labels=torch.zeros(2).long(), teacher_raw_embedding=raw)
    est = TeacherEmbeddingNorm()
    assert est.requires == ("teacher_raw_embedding",)
    assert est({}, inp).tolist() == pytest.approx([5.0, 1.0])
    assert TeacherEmbeddingNorm(log=True)({}, inp).tolist() == pytest.approx([math.log(5), 0.0])
    assert teacher_embedding_norm(raw).tolist() == pytest.approx([5.0, 1.0])
    with pytest.raises(ValueError, match="teacher_raw_embedding"):
        est({}, LossInputs(labels=torch.zeros(2).long()))
    batch = {"student_snr_db": torch.tensor([-10.0, 5.0, 60.0])}
    assert SNRQuality()(batch).tolist() == [-10.0, 5.0, 60.0]
    assert SNRQuality(clip=[-5, 40])(batch).tolist() == [-5.0, 5.0, 40.0]
    assert snr(batch).tolist() == [-10.0, 5.0, 60.0]
    with pytest.raises(KeyError, match="student_snr_db"):
        SNRQuality()({"label": torch.zeros(2)})


def test_sigmoid_weights_by_hand():
    q = torch.tensor([0.0, 1.0, 2.0])
    w = QualityWeighter(rule="sigmoid", stats="batch", eps=0.0)(q)
    # batch mean 1, unbiased std 1 -> z = -1, 0, 1
    raw = [_sig(-1), _sig(0), _sig(1)]
    assert w.tolist() == pytest.approx([3 * r / sum(raw) for r in raw], rel=1e-6)
    w = QualityWeighter(rule="sigmoid", stats="batch", eps=0.0, tau=0.5)(q)
    raw = [_sig(-2), _sig(0), _sig(2)]
    assert w.tolist() == pytest.approx([3 * r / sum(raw) for r in raw], rel=1e-6)


def test_softmax_and_none():
    q = torch.tensor([0.0, 1.0, 2.0])
    w = QualityWeighter(rule="softmax", stats="batch", eps=0.0)(q)
    e = [math.exp(-1), 1.0, math.exp(1)]
    assert w.tolist() == pytest.approx([3 * x / sum(e) for x in e], rel=1e-6)
    none = QualityWeighter(rule="none")
    assert none(q).tolist() == [1.0, 1.0, 1.0]
    assert none.num_batches_tracked.item() == 0
    assert none.from_batch({"label": torch.zeros(4)}).tolist() == [1.0] * 4


@pytest.mark.parametrize("rule", ["sigmoid", "softmax"])
def test_low_quality_gets_low_weight_and_mean_one(rule):
    g = torch.Generator().manual_seed(0)
    weighter = QualityWeighter(rule=rule).train()
    for _ in range(5):
        q = 20 + 3 * torch.randn(32, generator=g)  # scale far from 0/1, like embedding norms
        w = weighter(q)
        assert w.mean().item() == pytest.approx(1.0, rel=1e-5)
        order = torch.argsort(q)
        assert (w[order].diff() >= 0).all()  # monotone in quality
        assert w[q.argmin()] < 1.0 < w[q.argmax()]
        assert not w.requires_grad


def test_running_stats_train_and_eval():
    weighter = QualityWeighter(momentum=0.5)
    q1 = torch.tensor([10.0, 12.0, 14.0])  # mean 12, var 4
    weighter.train()(q1)
    assert weighter.running_mean.item() == pytest.approx(12.0)  # first batch initialises
    assert weighter.running_var.item() == pytest.approx(4.0)
    q2 = torch.tensor([20.0, 20.0, 20.0, 24.0])  # mean 21, var 4
    weighter(q2)
    assert weighter.running_mean.item() == pytest.approx(0.5 * 12 + 0.5 * 21)
    assert weighter.running_var.item() == pytest.approx(4.0)
    assert weighter.num_batches_tracked.item() == 2
    weighter.eval()
    before = {k: v.clone() for k, v in weighter.state_dict().items()}
    w = weighter(torch.tensor([0.0, 100.0]))
    after = weighter.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # eval uses the frozen running stats: z = (q - 16.5) / sqrt(4 + eps)
    raw = [_sig((0 - 16.5) / math.sqrt(4 + 1e-5)), _sig((100 - 16.5) / math.sqrt(4 + 1e-5))]
    assert w.tolist() == pytest.approx([2 * r / sum(raw) for r in raw], rel=1e-5)
    # buffers travel with checkpoints
    assert {"running_mean", "running_var", "num_batches_tracked"} <= set(after)
    fresh = QualityWeighter(momentum=0.5)
    fresh.load_state_dict(after)
    assert fresh.running_mean.item() == pytest.approx(16.5)
    # a batch of one updates the mean only and gives weight 1
    w1 = QualityWeighter().train()(torch.tensor([3.0]))
    assert w1.tolist() == [1.0]


def test_bad_input():
    with pytest.raises(ValueError, match="rule must be one of"):
        QualityWeighter(rule="linear")
    with pytest.raises(ValueError, match="tau must be > 0"):
        QualityWeighter(tau=0)
    with pytest.raises(ValueError, match="momentum"):
        QualityWeighter(momentum=0)
    with pytest.raises(ValueError, match="estimator must be one of"):
        QualityWeighter(estimator="nope")
    with pytest.raises(ValueError, match="finite"):
        QualityWeighter()(torch.tensor([1.0, float("nan")]))


def test_none_config_disables_the_group():
    cfg = OmegaConf.load(CONF / "none.yaml")
    assert cfg.get("_target_") is None  # builders.is_enabled -> False: no weighter at all


@pytest.mark.parametrize("name", ["explicit_none", "feature_norm", "snr", "teacher_quality"])
def test_configs_instantiate_and_feed_the_composer(name):
    if name == "explicit_none":
        cfg = OmegaConf.create({"_target_": "crossdistill.quality.QualityWeighter", "rule": "none"})
    else:
        cfg = OmegaConf.load(CONF / f"{name}.yaml")
    weighter = instantiate(cfg)
    assert isinstance(weighter, QualityWeighter)
    raw = torch.tensor([[3.0, 4.0], [0.3, 0.4], [6.0, 8.0], [1.0, 0.0]])
    batch = {
        "label": torch.zeros(4).long(),
        "student_snr_db": torch.tensor([20.0, 0.0, 30.0, 5.0]),
        "teacher_quality": torch.tensor([0.5, 0.1, 0.9, 0.3]),
    }
    inp = LossInputs(
        labels=batch["label"],
        student_embedding=torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]),
        teacher_embedding=torch.tensor([[1.0, 0.0]] * 4),
        teacher_raw_embedding=raw,
    )
    weighter.train()
    w = weighter(batch, inp)  # how the distillation module calls it
    assert w.mean().item() == pytest.approx(1.0, rel=1e-5)
    if name == "explicit_none":
        assert weighter.requires == () and w.tolist() == [1.0] * 4
    else:
        assert w[1] < 1.0 < w[2]  # worst / best quality sample in both estimators
    inp.sample_weights = w
    composer = LossComposer({"feature_margin": {"weight": 1.0, "margin": 0.0}})
    _, parts = composer(inp)
    per_sample = torch.tensor([0.0, 1.0, 0.0, 1.0])
    expected = (w * per_sample).sum() / w.sum()
    assert parts["feature_margin"].item() == pytest.approx(expected.item(), rel=1e-6)


# ------------------------------------------------------- what the DistillModule computes
class _CountingTeacher(nn.Module):
    """A teacher encoder that counts its forwards (or fails on one)."""

    def __init__(self, fail: bool) -> None:
        super().__init__()
        self.linear, self.fail, self.calls = nn.Linear(4, 3), fail, 0
        self.embedding_dim = 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fail:
            raise AssertionError("the teacher ran although nothing reads a teacher field")
        self.calls += 1
        return self.linear(x)


def _module_with_quality(estimator, teacher: nn.Module) -> DistillModule:
    student = nn.Linear(4, 3)
    student.embedding_dim = 3
    return DistillModule(
        student,
        LinearClassifier(3, 2),
        num_classes=2,
        optimizer=torch.optim.SGD,
        teacher_encoder=teacher,
        teacher_classifier=LinearClassifier(3, 2),
        loss=LossComposer({"ce": {}}),
        quality=QualityWeighter(estimator=estimator),
    )


def test_quality_from_a_batch_field_never_runs_the_teacher():
    module = _module_with_quality(BatchFieldQuality("teacher_quality"), _CountingTeacher(True))
    assert not module.needs_teacher
    batch = {
        "student_input": torch.randn(2, 4),
        "teacher_input": torch.randn(2, 4),
        "label": torch.tensor([0, 1]),
        "teacher_quality": torch.tensor([0.1, 0.9]),
    }
    module.train()
    inputs = module.loss_inputs(batch)  # the teacher's forward would raise
    assert inputs.teacher_raw_embedding is None and inputs.teacher_logits is None
    # first batch: running mean 0.5, unbiased variance 0.32; sigmoid weights, mean 1
    z = 0.4 / math.sqrt(0.32 + 1e-5)
    assert inputs.sample_weights.tolist() == pytest.approx([2 * _sig(-z), 2 * _sig(z)])


def test_quality_from_the_teacher_embedding_runs_the_teacher_once():
    teacher = _CountingTeacher(False)
    module = _module_with_quality(TeacherEmbeddingNorm(), teacher)
    assert module.needs_teacher and "teacher_raw_embedding" in module.needed
    batch = {
        "student_input": torch.randn(2, 4),
        "teacher_input": torch.randn(2, 4),
        "label": torch.tensor([0, 1]),
    }
    inputs = module.loss_inputs(batch)
    assert teacher.calls == 1
    torch.testing.assert_close(inputs.teacher_raw_embedding, teacher.linear(batch["teacher_input"]))
    assert inputs.sample_weights.shape == (2,)


def test_quality_without_requires_is_refused():
    class Opaque(nn.Module):
        def forward(self, batch, inputs):
            return torch.ones(len(batch["label"]))

    student = nn.Linear(4, 3)
    student.embedding_dim = 3
    with pytest.raises(TypeError, match="Opaque must declare `requires`"):
        DistillModule(
            student, LinearClassifier(3, 2), num_classes=2, optimizer=torch.optim.SGD,
            teacher_encoder=None, teacher_classifier=None, loss=LossComposer({"ce": {}}),
            quality=Opaque(),
        )  # fmt: skip
