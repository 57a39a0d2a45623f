"""CE, logit KD and hard L2 against hand-computed values; the composer's behaviour."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from crossdistill.losses import (
    LOSS_TERMS,
    LossComposer,
    LossInputs,
    NonFiniteLossError,
    build_loss_term,
    functional,
)

S = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
T = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
Y = torch.tensor([0, 1])


def _softmax(row):
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


def _kl(t_row, s_row, temp=1.0):
    p = _softmax([v / temp for v in t_row])
    q = _softmax([v / temp for v in s_row])
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))


def test_kd_batchmean_matches_hand_computed_kl():
    expected = [_kl(T[i].tolist(), S[i].tolist()) for i in range(2)]
    got = functional.kd_kl(S, T, temperature=1.0, reduction="batchmean", scale_by_t2=False)
    assert got.tolist() == pytest.approx(expected, abs=1e-6)


def test_kd_temperature_and_t2_scaling():
    expected = [4.0 * _kl(T[i].tolist(), S[i].tolist(), 2.0) for i in range(2)]
    got = functional.kd_kl(S, T, temperature=2.0, reduction="batchmean", scale_by_t2=True)
    assert got.tolist() == pytest.approx(expected, abs=1e-6)


def test_kd_elementwise_mean_equals_mfh_kldivloss_default():
    """The MFH code's loss: KLDivLoss() ('mean' over batch*classes) at T=1."""
    s, t = torch.randn(7, 2), torch.randn(7, 2)
    reference = torch.nn.KLDivLoss()(torch.log_softmax(s, 1), torch.softmax(t, 1))
    ours = functional.kd_kl(s, t, 1.0, "elementwise_mean", scale_by_t2=False).mean()
    assert ours.item() == pytest.approx(reference.item(), rel=1e-5)
    batchmean = torch.nn.KLDivLoss(reduction="batchmean")(
        torch.log_softmax(s, 1), torch.softmax(t, 1)
    )
    assert functional.kd_kl(s, t, 1.0, "batchmean", False).mean().item() == pytest.approx(
        batchmean.item(), rel=1e-5
    )


def test_kd_supports_stacked_leading_dims():
    s, t = torch.randn(3, 5, 4), torch.randn(3, 5, 4)
    stacked = functional.kd_kl(s, t, 2.0)
    for i in range(3):
        assert torch.allclose(stacked[i], functional.kd_kl(s[i], t[i], 2.0))


def test_hard_l2_hand_computed_and_shape_error():
    s = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    t = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    assert functional.squared_error(s, t, "mean").tolist() == pytest.approx([2.5, 12.5])
    assert functional.squared_error(s, t, "sum").tolist() == pytest.approx([5.0, 25.0])
    with pytest.raises(ValueError, match="projection head"):
        functional.squared_error(s, torch.zeros(2, 3))


def test_cross_entropy_matches_torch():
    ce = functional.cross_entropy(S, Y)
    expected = [-math.log(_softmax(S[0].tolist())[0]), -math.log(_softmax(S[1].tolist())[1])]
    assert ce.tolist() == pytest.approx(expected, abs=1e-6)


def test_composer_weighted_sum_and_per_term_logging():
    composer = LossComposer(
        {"ce": {"weight": 1.0}, "kd": {"weight": 0.5, "temperature": 1.0, "scale_by_t2": False}}
    )
    total, parts = composer(
        LossInputs(labels=Y, student_logits=S, student_plain_logits=S, teacher_logits=T)
    )
    ce = F.cross_entropy(S, Y)
    kd = torch.tensor([_kl(T[i].tolist(), S[i].tolist()) for i in range(2)]).mean()
    assert total.item() == pytest.approx((ce + 0.5 * kd).item(), abs=1e-6)
    assert set(parts) == {"ce", "kd", "total"}
    assert parts["kd"].item() == pytest.approx(kd.item(), abs=1e-6)


def test_sample_weights_scale_distillation_terms_but_not_ce():
    composer = LossComposer({"ce": {}, "kd": {"temperature": 1.0, "scale_by_t2": False}})
    w = torch.tensor([3.0, 1.0])
    inputs = LossInputs(
        labels=Y, student_logits=S, student_plain_logits=S, teacher_logits=T, sample_weights=w
    )
    _, parts = composer(inputs)
    per = [_kl(T[i].tolist(), S[i].tolist()) for i in range(2)]
    assert parts["kd"].item() == pytest.approx((3 * per[0] + per[1]) / 4, abs=1e-6)
    assert parts["ce"].item() == pytest.approx(F.cross_entropy(S, Y).item(), abs=1e-6)


def test_zero_weight_terms_are_skipped_and_empty_loss_rejected():
    composer = LossComposer({"ce": {"weight": 1.0}, "kd": {"weight": 0.0}})
    assert list(composer.terms) == ["ce"]
    with pytest.raises(ValueError, match="no term"):
        LossComposer({"ce": {"weight": 0.0}})


def test_unknown_term_lists_valid_names():
    with pytest.raises(KeyError, match="unknown loss term 'kdd'.*'kd'"):
        build_loss_term("kdd")
    with pytest.raises(KeyError, match="registered terms"):
        LossComposer({"not_a_term": {"weight": 1.0}})


def test_bad_term_parameter_names_the_term():
    with pytest.raises(TypeError, match="'kd'"):
        LossComposer({"kd": {"temprature": 2.0}})
    with pytest.raises(ValueError, match="reduction"):
        LossComposer({"kd": {"reduction": "sum"}})


def test_missing_inputs_and_nan_fail_clearly():
    composer = LossComposer({"kd": {}})
    with pytest.raises(ValueError, match="needs \\['teacher_logits'\\]"):
        composer(LossInputs(labels=Y, student_logits=S, student_plain_logits=S))
    bad = S.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match="'kd'"):
        composer(
            LossInputs(labels=Y, student_logits=bad, student_plain_logits=bad, teacher_logits=T)
        )


def test_standard_terms_registered():
    assert {"ce", "kd", "hard_l2"} <= set(LOSS_TERMS)
