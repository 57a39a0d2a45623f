"""C2KD, RKD and DSKD loss terms against hand-computed values."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from crossdistill.losses import LOSS_TERMS, LossComposer, LossInputs, build_loss_term

CONF = Path(__file__).resolve().parents[1] / "conf" / "distill"


def _inputs(**kw) -> LossInputs:
    kw.setdefault("labels", torch.zeros(2, dtype=torch.long))
    return LossInputs(**kw)


def test_terms_registered_with_requires():
    expected = {
        "feature_margin": ("student_embedding", "teacher_embedding"),
        "shared_classifier": ("teacher_shared_logits", "labels"),
        "rkd_distance": ("student_embedding", "teacher_embedding"),
        "rkd_angle": ("student_embedding", "teacher_embedding"),
        "channel_independence": ("student_embedding",),
        "spatial_uniformity": ("student_features",),
        "feature_hint": ("student_features", "teacher_features"),
    }
    for name, req in expected.items():
        assert LOSS_TERMS[name].requires == req
    assert build_loss_term("rkd_angle", teacher_field="teacher_raw_embedding").requires == (
        "student_embedding",
        "teacher_raw_embedding",
    )
    assert build_loss_term("channel_independence", target="teacher").requires == (
        "student_embedding",
        "teacher_embedding",
    )
    su = build_loss_term("spatial_uniformity", feature="l3", side="teacher")
    assert su.requires == ("teacher_features",)
    assert su.teacher_features == ("l3",) and su.student_features == ()


# ---------------------------------------------------------------- feature_margin


def test_feature_margin_cosine_and_l2():
    s = torch.tensor([[3.0, 4.0], [1.0, 0.0], [2.0, 0.0]])
    t = torch.tensor([[4.0, 3.0], [0.0, 1.0], [5.0, 0.0]])
    inp = _inputs(student_embedding=s, teacher_embedding=t, labels=torch.zeros(3).long())
    # cos: 24/25, 0, 1 -> d = 0.04, 1, 0
    out = build_loss_term("feature_margin", margin=0.02)(inp)
    np.testing.assert_allclose(out.numpy(), [0.02, 0.98, 0.0], atol=1e-6)
    out = build_loss_term("feature_margin", margin=0.0)(inp)
    np.testing.assert_allclose(out.numpy(), [0.04, 1.0, 0.0], atol=1e-6)
    # l2 on unit vectors: |(.6,.8)-(.8,.6)| = sqrt(.08), |(1,0)-(0,1)| = sqrt(2), 0
    out = build_loss_term("feature_margin", margin=0.1, distance="l2")(inp)
    np.testing.assert_allclose(
        out.numpy(), [math.sqrt(0.08) - 0.1, math.sqrt(2) - 0.1, 0.0], atol=1e-4
    )


def test_feature_margin_gradients_and_errors():
    s = torch.tensor([[1.0, 0.0], [1.0, 1.0]], requires_grad=True)
    t = torch.tensor([[1.0, 0.0], [1.0, 0.0]], requires_grad=True)
    for dist in ("cosine", "l2"):
        term = build_loss_term("feature_margin", margin=0.0, distance=dist)
        term(_inputs(student_embedding=s, teacher_embedding=t)).sum().backward()
        assert torch.isfinite(s.grad).all() and torch.isfinite(t.grad).all()
        assert t.grad.abs().sum() > 0  # the projection head is trained by default
        s.grad = t.grad = None
    term = build_loss_term("feature_margin", detach_teacher=True, margin=0.0)
    term(_inputs(student_embedding=s, teacher_embedding=t)).sum().backward()
    assert t.grad is None
    with pytest.raises(ValueError, match="distance must be one of"):
        build_loss_term("feature_margin", distance="l1")
    with pytest.raises(ValueError, match="margin must be >= 0"):
        build_loss_term("feature_margin", margin=-1)
    with pytest.raises(ValueError, match="projection head"):
        build_loss_term("feature_margin")(
            _inputs(student_embedding=torch.ones(2, 3), teacher_embedding=torch.ones(2, 4))
        )


# ---------------------------------------------------------------- shared_classifier


def test_shared_classifier_ce_by_hand():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    labels = torch.tensor([0, 2])
    inp = _inputs(teacher_shared_logits=logits, labels=labels)
    expected = [math.log(math.exp(2) + 2) - 2, math.log(2 + math.e)]
    out = build_loss_term("shared_classifier")(inp)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-6)
    out = build_loss_term("shared_classifier", lambda_t=0.5)(inp)
    np.testing.assert_allclose(out.numpy(), [0.5 * e for e in expected], rtol=1e-6)


# ---------------------------------------------------------------- RKD


def _smooth_l1(x):
    x = np.abs(x)
    return np.where(x < 1, 0.5 * x**2, x - 0.5)


# student: a 3-4-5 right triangle; teacher: a unit right isosceles triangle (3-D, raw)
S = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
T_RAW = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])


def test_rkd_distance_by_hand():
    # student distances 3, 4, 5 (pairs 01, 02, 12); mean over off-diagonal = 4
    ds = np.array([3, 4, 5]) / 4.0
    dt = np.array([1, 1, math.sqrt(2)]) / ((2 + math.sqrt(2)) / 3)
    expected = 2 * _smooth_l1(ds - dt).sum() / 9  # 9 entries, diagonal included
    term = build_loss_term("rkd_distance", teacher_field="teacher_raw_embedding")
    out = term(_inputs(student_embedding=S, teacher_raw_embedding=T_RAW))
    assert out.dim() == 0 and out.item() == pytest.approx(expected, rel=1e-5)
    # mse and un-normalised variants
    out = build_loss_term("rkd_distance", teacher_field="teacher_raw_embedding", loss="mse")(
        _inputs(student_embedding=S, teacher_raw_embedding=T_RAW)
    )
    assert out.item() == pytest.approx(2 * ((ds - dt) ** 2).sum() / 9, rel=1e-5)
    out = build_loss_term(
        "rkd_distance", teacher_field="teacher_raw_embedding", normalize=False, loss="mse"
    )(_inputs(student_embedding=S, teacher_raw_embedding=T_RAW))
    raw = np.array([3, 4, 5]) - np.array([1, 1, math.sqrt(2)])
    assert out.item() == pytest.approx(2 * (raw**2).sum() / 9, rel=1e-5)


def test_rkd_angle_by_hand():
    # cos of the angle at each vertex: student 0, 0.6, 0.8; teacher 0, 1/sqrt2, 1/sqrt2.
    # Each appears twice among the 27 triples (i, k ordered); the other triples agree.
    diff = np.array([0.0, 0.6 - 1 / math.sqrt(2), 0.8 - 1 / math.sqrt(2)])
    expected = 2 * _smooth_l1(diff).sum() / 27
    term = build_loss_term("rkd_angle", teacher_field="teacher_raw_embedding")
    out = term(_inputs(student_embedding=S, teacher_raw_embedding=T_RAW))
    assert out.item() == pytest.approx(expected, rel=1e-5)
    assert term.per_sample is False


def test_rkd_gradients_and_batch_of_one():
    s = S.clone().requires_grad_(True)
    t = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    for name in ("rkd_distance", "rkd_angle"):
        out = build_loss_term(name)(_inputs(student_embedding=s, teacher_embedding=t))
        out.backward()
        assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
        assert t.grad is None  # teacher detached by default
        s.grad = None
        one = build_loss_term(name)(
            _inputs(student_embedding=s[:1], teacher_embedding=t[:1], labels=torch.zeros(1).long())
        )
        assert one.item() == 0.0
        one.backward()
        assert torch.isfinite(s.grad).all()
        s.grad = None
    with pytest.raises(ValueError, match="teacher_field must be one of"):
        build_loss_term("rkd_distance", teacher_field="student_embedding")


# ---------------------------------------------------------------- DSKD


A = [1.0, -1.0, 1.0, -1.0]
B = [1.0, -1.0, -1.0, 1.0]
C = [1.0, 1.0, -1.0, -1.0]  # A, B, C: zero mean, unit (biased) variance, orthogonal


def test_channel_independence_by_hand():
    eps = 1e-5
    r = 1.0 / (1.0 + eps)  # correlation of two equal standardised channels
    x = torch.tensor([A, B, A]).t()  # channels 0 and 2 equal
    term = build_loss_term("channel_independence", eps=eps)
    assert term(_inputs(student_embedding=x)).item() == pytest.approx(2 * r**2 / 6, rel=1e-5)
    term_sum = build_loss_term("channel_independence", eps=eps, reduction="sum")
    assert term_sum(_inputs(student_embedding=x)).item() == pytest.approx(2 * r**2, rel=1e-5)
    # orthogonal channels: zero
    ortho = torch.tensor([A, B, C]).t()
    assert term(_inputs(student_embedding=ortho)).item() == pytest.approx(0.0, abs=1e-10)
    # target=teacher: teacher channels 1 and 2 equal -> entries (0,2) and (1,2) differ by r
    t = torch.tensor([A, B, B]).t()
    term_t = build_loss_term("channel_independence", target="teacher", eps=eps)
    out = term_t(_inputs(student_embedding=x, teacher_embedding=t))
    assert out.item() == pytest.approx(4 * r**2 / 6, rel=1e-5)
    assert term_t(_inputs(student_embedding=x, teacher_embedding=x)).item() == 0.0
    with pytest.raises(ValueError, match="channels like the student"):
        term_t(_inputs(student_embedding=x, teacher_embedding=torch.ones(4, 5)))


def test_channel_independence_degenerate():
    term = build_loss_term("channel_independence")
    x = torch.tensor([[1.0, 2.0, 3.0]], requires_grad=True)  # batch of 1
    out = term(_inputs(student_embedding=x, labels=torch.zeros(1).long()))
    out.backward()
    assert out.item() == 0.0 and torch.isfinite(x.grad).all()
    const = torch.tensor([A, [5.0] * 4]).t().requires_grad_(True)  # constant channel
    out = term(_inputs(student_embedding=const))
    out.backward()
    assert out.item() == 0.0 and torch.isfinite(const.grad).all()
    single = term(_inputs(student_embedding=torch.randn(4, 1)))
    assert single.item() == 0.0


def test_spatial_uniformity_by_hand():
    term = build_loss_term("spatial_uniformity")
    fmap = torch.tensor(
        [
            [[1.0, -1.0, 1.0, 1.0], [2.0, 2.0, -2.0, 2.0]],  # uniform energy -> 0
            [[2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]],  # all on one position -> log 4
            [[1.0, 1.0, 0.0, 0.0], [3.0, 3.0, 0.0, 0.0]],  # on two positions -> log 2
            [[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]],  # all zero -> uniform -> 0
        ]
    )
    inp = _inputs(student_features={"map": fmap}, labels=torch.zeros(4).long())
    out = term(inp)
    np.testing.assert_allclose(out.numpy(), [0.0, math.log(4), math.log(2), 0.0], atol=1e-6)
    # [B, C, H, W] gives the same values on the same positions
    out2d = term(_inputs(student_features={"map": fmap.reshape(4, 2, 2, 2)}, labels=inp.labels))
    np.testing.assert_allclose(out2d.numpy(), out.numpy(), atol=1e-6)
    normed = build_loss_term("spatial_uniformity", normalize=True)(inp)
    np.testing.assert_allclose(normed.numpy(), [0.0, 1.0, 0.5, 0.0], atol=1e-6)
    fmap_g = fmap.clone().requires_grad_(True)
    term(_inputs(student_features={"map": fmap_g}, labels=inp.labels)).sum().backward()
    assert torch.isfinite(fmap_g.grad).all()
    with pytest.raises(ValueError, match=r"student feature 'map' of shape \[B, C, H, W\]"):
        term(_inputs(student_features={"map": torch.ones(2, 3)}))
    # the teacher side reads teacher_features under its own name
    teacher_side = build_loss_term("spatial_uniformity", feature="t3", side="teacher")
    out_t = teacher_side(_inputs(teacher_features={"t3": fmap}, labels=inp.labels))
    np.testing.assert_allclose(out_t.numpy(), out.numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="spatial_uniformity.side"):
        build_loss_term("spatial_uniformity", side="both")


def test_spatial_uniformity_wang_isola_by_hand():
    term = build_loss_term("spatial_uniformity", mode="wang_isola", t=2.0)
    assert term.per_sample is False
    # pooled features e1, e2, -e1: squared distances 2, 4, 2 (each ordered pair twice)
    fmap = torch.tensor(
        [[[1.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [3.0, 3.0]], [[-2.0, -2.0], [0.0, 0.0]]]
    )
    out = term(_inputs(student_features={"map": fmap}, labels=torch.zeros(3).long()))
    expected = math.log((4 * math.exp(-4) + 2 * math.exp(-8)) / 6)
    assert out.item() == pytest.approx(expected, rel=1e-6)
    one = term(_inputs(student_features={"map": fmap[:1]}, labels=torch.zeros(1).long()))
    assert one.item() == 0.0


# ---------------------------------------------------------------- configs + composer


#: module paths the feature configs leave to the experiment (``???``)
FEATURE_PATHS = {
    "at": {"student": {"map": "encoder.ecapa.mfa"}, "teacher": {"map": "encoder.backbone.layer1"}},
    "nst": {"student": {"map": "encoder.ecapa.mfa"}, "teacher": {"map": "encoder.backbone.layer1"}},
    "dskd": {"student": {"map": "encoder.ecapa.mfa"}},
    "dskd_su": {"student": {"map": "encoder.ecapa.mfa"}},
    "fitnets_multi": {
        "student": {"l3": "encoder.backbone.layer3", "l4": "encoder.backbone.layer4"},
        "teacher": {"l3": "encoder.backbone.layer3", "l4": "encoder.backbone.layer4"},
    },
}


@pytest.mark.parametrize("name", sorted(p.stem for p in CONF.glob("*.yaml")))
def test_distill_configs_build(name):
    spec = yaml.safe_load((CONF / f"{name}.yaml").read_text())
    if name in FEATURE_PATHS:
        with pytest.raises(ValueError, match=r"distill.features.student.\w+ is not set"):
            LossComposer(spec)
        spec["features"] = FEATURE_PATHS[name]
    composer = LossComposer(spec)
    assert "ce" in composer.terms
    sides = ("student", "teacher")
    taps = {side: {n: t.path for n, t in composer.feature_taps[side].items()} for side in sides}
    assert taps == {side: FEATURE_PATHS.get(name, {}).get(side, {}) for side in sides}


def test_c2kd_composer_with_quality_weights():
    spec = yaml.safe_load((CONF / "c2kd.yaml").read_text())
    composer = LossComposer(spec)
    assert composer.required_fields == {
        "student_logits",
        "labels",
        "student_embedding",
        "teacher_embedding",
        "teacher_shared_logits",
    }
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # d = 0 and 1 -> hinge 0 and 0.8
    logits = torch.zeros(2, 3)  # CE = log 3 everywhere
    w = torch.tensor([0.5, 1.5])
    inp = LossInputs(
        labels=torch.tensor([0, 1]),
        student_logits=logits,
        student_embedding=s,
        teacher_embedding=t,
        teacher_shared_logits=logits,
        sample_weights=w,
    )
    total, parts = composer(inp)
    assert parts["feature_margin"].item() == pytest.approx((1.5 * 0.8) / 2.0)
    assert parts["shared_classifier"].item() == pytest.approx(math.log(3))
    assert total.item() == pytest.approx(2 * math.log(3) + 0.6)
