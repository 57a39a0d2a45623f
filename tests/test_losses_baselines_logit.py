"""DKD and DIST against values computed by hand (plain Python loops over explicit numbers),
their configs, and a fast_dev_run of DKD on the face -> voice pair."""

from __future__ import annotations

import math

import pytest
import torch
import yaml

from conftest import TINY_TEXT_IMAGE
from crossdistill.losses import LossComposer, LossInputs, build_loss_term
from crossdistill.train import train
from crossdistill.utils.config import CONFIG_DIR

CONF = CONFIG_DIR / "distill"

STUDENT = [[2.0, 1.0, 0.0], [0.0, 1.0, 1.0]]
TEACHER = [[3.0, 0.0, 0.0], [1.0, 2.0, 0.0]]
LABELS = [0, 1]


def _inputs(student=STUDENT, teacher=TEACHER, labels=LABELS) -> LossInputs:
    return LossInputs(
        labels=torch.tensor(labels),
        student_plain_logits=torch.tensor(student),
        teacher_logits=torch.tensor(teacher),
    )


def _softmax(row: list[float]) -> list[float]:
    exps = [math.exp(v) for v in row]
    return [e / sum(exps) for e in exps]


def _kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True) if pi > 0)


# ---------------------------------------------------------------------------- DKD


def _dkd_by_hand(t_temp: float) -> tuple[list[float], list[float]]:
    """TCKD and NCKD per sample (times T^2), as in Zhao et al. 2022, eqs. 1-4."""
    tckd, nckd = [], []
    for s_row, t_row, g in zip(STUDENT, TEACHER, LABELS, strict=True):
        p_s = _softmax([v / t_temp for v in s_row])
        p_t = _softmax([v / t_temp for v in t_row])
        b_s, b_t = [p_s[g], 1 - p_s[g]], [p_t[g], 1 - p_t[g]]
        tckd.append(_kl(b_t, b_s) * t_temp**2)
        others = [j for j in range(3) if j != g]
        q_s = [p_s[j] / (1 - p_s[g]) for j in others]  # p^ = p_j / (1 - p_g)
        q_t = [p_t[j] / (1 - p_t[g]) for j in others]
        nckd.append(_kl(q_t, q_s) * t_temp**2)
    return tckd, nckd


@pytest.mark.parametrize("t_temp", [1.0, 4.0])
def test_dkd_parts_match_a_hand_calculation(t_temp):
    term = build_loss_term("dkd", alpha=1.0, beta=8.0, temperature=t_temp)
    tckd, nckd = term.parts(_inputs())
    hand_tckd, hand_nckd = _dkd_by_hand(t_temp)
    assert tckd.tolist() == pytest.approx(hand_tckd, rel=1e-5)
    assert nckd.tolist() == pytest.approx(hand_nckd, rel=1e-5)
    total = term(_inputs())
    expected = [a + 8.0 * b for a, b in zip(hand_tckd, hand_nckd, strict=True)]
    assert total.tolist() == pytest.approx(expected, rel=1e-5)


def test_dkd_closed_form_values():
    """Sample 1 at T=1: non-target logits [0, ln 3] (teacher) vs [0, 0] (student) give
    p^_t = [1/4, 3/4], p^_s = [1/2, 1/2]: NCKD = 1/4 ln(1/2) + 3/4 ln(3/2); equal target
    probabilities (both 1/2 against the two others summed) give TCKD = 0."""
    student = [[math.log(2.0), 0.0, 0.0]]  # p_g = 2 / 4 = 1/2
    teacher = [[math.log(5.0), 0.0, math.log(3.0)]]  # p_g = 5 / 9, others 1/9, 3/9
    tckd, nckd = build_loss_term("dkd", temperature=1.0).parts(
        _inputs(student, teacher, labels=[0])
    )
    assert nckd.item() == pytest.approx(0.25 * math.log(0.5) + 0.75 * math.log(1.5), rel=1e-6)
    b_t, b_s = [5 / 9, 4 / 9], [0.5, 0.5]
    assert tckd.item() == pytest.approx(
        5 / 9 * math.log(5 / 9 / 0.5) + 4 / 9 * math.log(4 / 9 / 0.5), rel=1e-5
    )
    assert b_t[0] + b_t[1] == pytest.approx(1.0) and sum(b_s) == 1.0
    # identical student and teacher: both parts vanish
    same = build_loss_term("dkd")(_inputs(TEACHER, TEACHER))
    assert same.abs().max().item() < 1e-6


def test_dkd_decomposes_classical_kd():
    """The paper's eq. 4: KD = TCKD + (1 - p_t,g) NCKD (same T, both times T^2)."""
    term = build_loss_term("dkd", temperature=4.0)
    tckd, nckd = term.parts(_inputs())
    kd = build_loss_term("kd", temperature=4.0)(_inputs())
    p_t_gt = [_softmax([v / 4.0 for v in row])[g] for row, g in zip(TEACHER, LABELS, strict=True)]
    parts = zip(tckd.tolist(), nckd.tolist(), p_t_gt, strict=True)
    expected = [a + (1 - p) * b for a, b, p in parts]
    assert kd.tolist() == pytest.approx(expected, rel=1e-5)


def test_dkd_gradient_reaches_the_student_only_and_bad_parameters_fail():
    inputs = _inputs()
    inputs.student_plain_logits.requires_grad_(True)
    inputs.teacher_logits.requires_grad_(True)
    build_loss_term("dkd")(inputs).sum().backward()
    assert inputs.student_plain_logits.grad.abs().sum() > 0
    assert inputs.teacher_logits.grad is None  # teacher detached
    with pytest.raises(ValueError, match="dkd.temperature must be > 0"):
        build_loss_term("dkd", temperature=0.0)
    with pytest.raises(ValueError, match="at least 2 classes"):
        build_loss_term("dkd")(_inputs([[1.0]], [[2.0]], [0]))


# ---------------------------------------------------------------------------- DIST


def _pearson(u: list[float], v: list[float]) -> float:
    mu, mv = sum(u) / len(u), sum(v) / len(v)
    cu, cv = [x - mu for x in u], [x - mv for x in v]
    num = sum(a * b for a, b in zip(cu, cv, strict=True))
    return num / (math.sqrt(sum(a * a for a in cu)) * math.sqrt(sum(b * b for b in cv)))


DIST_S = [[2.0, 1.0, 0.0], [0.0, 1.0, 1.0], [1.0, 0.0, 3.0]]
DIST_T = [[3.0, 0.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.5, 2.0]]


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_dist_matches_pearson_by_hand(tau):
    y_s = [_softmax([v / tau for v in row]) for row in DIST_S]
    y_t = [_softmax([v / tau for v in row]) for row in DIST_T]
    inter = 1 - sum(_pearson(a, b) for a, b in zip(y_s, y_t, strict=True)) / 3
    cols_s = [[row[c] for row in y_s] for c in range(3)]
    cols_t = [[row[c] for row in y_t] for c in range(3)]
    intra = 1 - sum(_pearson(a, b) for a, b in zip(cols_s, cols_t, strict=True)) / 3
    term = build_loss_term("dist", beta=2.0, gamma=0.5, tau=tau)
    inputs = _inputs(DIST_S, DIST_T, [0, 1, 2])
    got_inter, got_intra = term.parts(inputs)
    assert got_inter.item() == pytest.approx(inter * tau**2, rel=1e-5)
    assert got_intra.item() == pytest.approx(intra * tau**2, rel=1e-5)
    value = term(inputs)
    assert value.dim() == 0  # one scalar per batch
    assert value.item() == pytest.approx((2.0 * inter + 0.5 * intra) * tau**2, rel=1e-5)


def test_dist_perfect_and_anti_correlation():
    """A student whose probabilities are an affine copy of the teacher's has rho = 1 (loss
    0); the floor leaves these well-spread rows untouched."""
    teacher = [[2.0, 0.0, -1.0], [0.0, 1.0, -2.0]]
    term = build_loss_term("dist")
    # up to the authors' eps = 1e-8 against |u||v| = 2.5e-5 (class 2's column): 4e-4
    assert term(_inputs(teacher, teacher, [0, 1])).item() == pytest.approx(0.0, abs=5e-4)
    assert build_loss_term("dist", eps=0.0)(_inputs(teacher, teacher, [0, 1])).item() == (
        pytest.approx(0.0, abs=1e-6)
    )
    # two classes: the rows centre to +-d, so rho is +-1 exactly: reversed logits give -1
    inter, _ = term.parts(_inputs([[0.0, 1.0]], [[1.0, 0.0]], [0]))
    assert inter.item() == pytest.approx(2.0, rel=1e-6)


def test_dist_floor_only_changes_near_constant_predictions():
    """Equal student logits: the centred row is 0, rho = 0 (loss 1) with the floor; a row
    varying by ~1e-4 has its rho scaled by |u| / 1e-3 (norm_floor=0: the exact Pearson)."""
    term = build_loss_term("dist")
    inter, _ = term.parts(_inputs([[0.0, 0.0, 0.0]], [[1.0, 0.0, 2.0]], [0]))
    assert inter.item() == pytest.approx(1.0, abs=1e-6)
    student, teacher = [[1e-4, 0.0, 2e-4]], [[1.0, 0.0, 2.0]]
    y_s = _softmax(student[0])
    exact = _pearson(y_s, _softmax(teacher[0]))
    cu = [v - sum(y_s) / 3 for v in y_s]
    norm_u = math.sqrt(sum(v * v for v in cu))
    floored, _ = term.parts(_inputs(student, teacher, [0]))
    assert floored.item() == pytest.approx(1 - exact * norm_u / 1e-3, rel=1e-3)
    raw, _ = build_loss_term("dist", norm_floor=0.0).parts(_inputs(student, teacher, [0]))
    assert raw.item() == pytest.approx(1 - exact, abs=1e-3)


# ------------------------------------------------------------------------- configs


@pytest.mark.parametrize(
    "name,term,params",
    [
        ("dkd", "dkd", {"weight": 1.0, "alpha": 1.0, "beta": 8.0, "temperature": 4.0}),
        ("dist", "dist", {"weight": 1.0, "beta": 1.0, "gamma": 1.0, "tau": 1.0}),
    ],
)
def test_configs_carry_the_papers_settings(name, term, params):
    spec = yaml.safe_load((CONF / f"{name}.yaml").read_text())
    assert spec["ce"] == {"weight": 1.0}
    assert spec[term] == params
    composer = LossComposer(spec)
    assert composer.required_fields >= {"student_plain_logits", "teacher_logits"}


def test_fast_dev_run_dkd_face_voice(tiny_face_voice):
    cfg = tiny_face_voice("face_voice/no_kd", "distill=dkd", "debug=fast_dev_run")
    summary = train(cfg)
    assert summary["teacher"]  # DKD reads the teacher's logits: a teacher was trained
    assert 0.0 <= summary["student"]["test/eer"] <= 1.0


def test_fast_dev_run_dist_text_image(compose_cfg):
    cfg = compose_cfg("experiment=text_image/no_kd", "distill=dist", "debug=fast_dev_run",
                      *TINY_TEXT_IMAGE)  # fmt: skip
    summary = train(cfg)
    assert 0.0 <= summary["student"]["test/acc"] <= 1.0
