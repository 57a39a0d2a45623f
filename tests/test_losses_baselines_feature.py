"""AT, NST, SP and PKT: values computed by hand on small fixed inputs, the position
matching of AT/NST (pooling, flattened sequences), their shape errors, and fast_dev_runs
of the configs on the face -> voice pair."""

from __future__ import annotations

import math

import pytest
import torch

from crossdistill.losses import LossInputs, build_loss_term
from crossdistill.train import train

torch.set_num_threads(1)

EPS_PKT = 1e-7


def feature_inputs(student: dict, teacher: dict, **fields) -> LossInputs:
    """LossInputs with the given feature maps (nested lists -> float tensors)."""
    return LossInputs(
        labels=torch.zeros(len(next(iter(student.values()))), dtype=torch.long),
        student_features={k: torch.tensor(v, dtype=torch.float32) for k, v in student.items()},
        teacher_features={k: torch.tensor(v, dtype=torch.float32) for k, v in teacher.items()},
        **fields,
    )


def unit(values: list[float]) -> list[float]:
    norm = math.sqrt(sum(v * v for v in values))
    return [v / norm for v in values]


def mean_sq_diff(a: list[float], b: list[float]) -> float:
    return sum((x - y) ** 2 for x, y in zip(a, b, strict=True)) / len(a)


def pair(student: str, teacher: str) -> dict[str, str]:
    return {"student": student, "teacher": teacher}


# ---------------------------------------------------------------- AT


def test_at_by_hand_on_2x2_maps_two_pairs():
    # sample 0: student channels [[1, 0], [0, 1]] and [[1, 2], [0, 0]] -> mean_c F^2 =
    # [1, 2, 0, 0.5]; teacher one channel [[2, 0], [0, 0]] -> [4, 0, 0, 0]
    # sample 1: student [[0, 0], [0, 0]] and [[0, 3], [0, 0]] -> [0, 4.5, 0, 0];
    # teacher [[1, 1], [1, 1]] -> [1, 1, 1, 1]
    student = [
        [[[1.0, 0.0], [0.0, 1.0]], [[1.0, 2.0], [0.0, 0.0]]],
        [[[0.0, 0.0], [0.0, 0.0]], [[0.0, 3.0], [0.0, 0.0]]],
    ]
    teacher = [[[[2.0, 0.0], [0.0, 0.0]]], [[[1.0, 1.0], [1.0, 1.0]]]]
    # second pair: [B, C, T] maps, student 1 channel [3, 4], teacher 2 channels [1, 0], [1, 2]
    seq_s = [[[3.0, 4.0]], [[0.0, 5.0]]]
    seq_t = [[[1.0, 0.0], [1.0, 2.0]], [[2.0, 0.0], [0.0, 0.0]]]
    inputs = feature_inputs({"m": student, "q": seq_s}, {"m": teacher, "q": seq_t})
    term = build_loss_term("at", pairs=[pair("m", "m"), pair("q", "q")])

    expected = [
        mean_sq_diff(unit([1, 2, 0, 0.5]), unit([4, 0, 0, 0]))
        + mean_sq_diff(unit([9, 16]), unit([(1 + 1) / 2, (0 + 4) / 2])),
        mean_sq_diff(unit([0, 4.5, 0, 0]), unit([1, 1, 1, 1]))
        + mean_sq_diff(unit([0, 25]), unit([(4 + 0) / 2, 0])),
    ]
    assert term(inputs).tolist() == pytest.approx(expected, rel=1e-6)
    single = build_loss_term("at", pairs=[pair("m", "m")])(inputs)
    assert single.tolist() == pytest.approx(
        [
            mean_sq_diff(unit([1, 2, 0, 0.5]), unit([4, 0, 0, 0])),
            mean_sq_diff([0, 1, 0, 0], [0.5, 0.5, 0.5, 0.5]),
        ],
        rel=1e-6,
    )
    # p = 1: mean_c |F|; the teacher gets no gradient (frozen)
    s_map, t_map = (
        torch.tensor(student, requires_grad=True),
        torch.tensor(teacher, requires_grad=True),
    )
    p1 = build_loss_term("at", pairs=[pair("m", "m")], p=1.0)
    value = p1(
        LossInputs(
            labels=torch.zeros(2, dtype=torch.long),
            student_features={"m": s_map},
            teacher_features={"m": t_map},
        )
    )
    assert value[0].item() == pytest.approx(
        mean_sq_diff(unit([1, 1, 0, 0.5]), unit([2, 0, 0, 0])), rel=1e-6
    )
    value.sum().backward()
    assert s_map.grad.abs().sum() > 0 and t_map.grad is None


def test_at_pools_the_larger_attention_map():
    # 1-D: student T = 4 ([1, 3, 0, 2] -> squares [1, 9, 0, 4] -> pooled pairs [5, 2]),
    # teacher T = 2 ([1, 1] -> [1, 1]); the attention map is pooled, not the features
    # (pooled features [2, 1] would give squares [4, 1])
    inputs = feature_inputs({"s": [[[1.0, 3.0, 0.0, 2.0]]]}, {"t": [[[1.0, 1.0]]]})
    value = build_loss_term("at", pairs=[pair("s", "t")])(inputs)
    assert value.item() == pytest.approx(mean_sq_diff(unit([5, 2]), unit([1, 1])), rel=1e-6)
    assert value.item() != pytest.approx(mean_sq_diff(unit([4, 1]), unit([1, 1])), rel=1e-3)

    # 2-D, the teacher larger: teacher 4x4 (one channel, entries 0..15) pooled to 2x2 by
    # averaging 2x2 blocks of its squares; student 2x2
    big = [[float(4 * r + c) for c in range(4)] for r in range(4)]
    blocks = [
        sum(big[r][c] ** 2 for r in (br, br + 1) for c in (bc, bc + 1)) / 4
        for br in (0, 2)
        for bc in (0, 2)
    ]
    inputs = feature_inputs({"s": [[[[1.0, 2.0], [3.0, 4.0]]]]}, {"t": [[big]]})
    value = build_loss_term("at", pairs=[pair("s", "t")])(inputs)
    assert value.item() == pytest.approx(mean_sq_diff(unit([1, 4, 9, 16]), unit(blocks)), rel=1e-6)

    # [B, C, T] vs [B, C, H, W] with flatten_positions: the student's 8 steps pooled to the
    # teacher's 2x2 = 4 flattened positions (row-major)
    seq = [1.0, 1.0, 2.0, 0.0, 0.0, 0.0, 3.0, 1.0]  # squares pooled by twos: [1, 2, 0, 5]
    inputs = feature_inputs({"s": [[seq]]}, {"t": [[[[1.0, 0.0], [0.0, 2.0]]]]})
    value = build_loss_term("at", pairs=[pair("s", "t")], flatten_positions=True)(inputs)
    assert value.item() == pytest.approx(mean_sq_diff(unit([1, 2, 0, 5]), unit([1, 0, 0, 4])))


@pytest.mark.parametrize("name", ["at", "nst"])
def test_map_terms_reject_pairs_without_a_common_grid(name):
    inputs = feature_inputs(
        {"seq": [[[1.0, 2.0, 3.0, 4.0]]], "vec": [[1.0, 2.0]]},
        {"img": [[[[1.0, 2.0], [3.0, 4.0]]]], "seq": [[[1.0, 2.0]]]},
    )
    mixed = build_loss_term(name, pairs=[pair("seq", "seq"), pair("seq", "img")])
    with pytest.raises(
        ValueError,
        match=rf"^{name} pair 1 \(student 'seq', teacher 'img'\): student \[B, C, T\] "
        rf"\(1, 1, 4\) and teacher \[B, C, H, W\] \(1, 1, 2, 2\) .*{name}.flatten_positions=true",
    ):
        mixed(inputs)
    flat = build_loss_term(name, pairs=[pair("vec", "seq")], flatten_positions=True)
    with pytest.raises(
        ValueError,
        match=rf"^{name} pair 0 \(student 'vec', teacher 'seq'\): needs feature maps "
        r"\[B, C, T\] or \[B, C, H, W\], got student \(1, 2\), teacher \(1, 1, 2\)",
    ):
        flat(inputs)
    with pytest.raises(ValueError, match=rf"{name}.pairs must be a non-empty list"):
        build_loss_term(name, pairs=[])
    with pytest.raises(ValueError, match=rf"{name}.pairs\[0\] must be"):
        build_loss_term(name, pairs=[{"student": "seq"}])


# ---------------------------------------------------------------- NST


def nst_by_hand(student: list[list[float]], teacher: list[list[float]]) -> float:
    """Squared MMD, polynomial kernel (x.y)^2, of the L2-normalised channel vectors."""
    s, t = [unit(c) for c in student], [unit(c) for c in teacher]

    def k_mean(a: list[list[float]], b: list[list[float]]) -> float:
        total = 0.0
        for x in a:
            for y in b:
                total += sum(xi * yi for xi, yi in zip(x, y, strict=True)) ** 2
        return total / (len(a) * len(b))

    return k_mean(s, s) + k_mean(t, t) - 2 * k_mean(s, t)


def test_nst_by_hand():
    # student channels [3, 4] -> [.6, .8] and [1, 0]; teacher one channel [0, 2] -> [0, 1]:
    # mean k_ss = (1 + .36 + .36 + 1) / 4 = .68, k_tt = 1, mean k_st = (.64 + 0) / 2 = .32
    student = [[[3.0, 4.0], [1.0, 0.0]], [[1.0, 1.0], [2.0, -1.0]]]
    teacher = [[[0.0, 2.0]], [[1.0, 0.0]]]
    inputs = feature_inputs({"m": student}, {"m": teacher})
    value = build_loss_term("nst", pairs=[pair("m", "m")])(inputs)
    assert value[0].item() == pytest.approx(0.68 + 1 - 2 * 0.32, rel=1e-6)
    assert value.tolist() == pytest.approx([nst_by_hand(student[i], teacher[i]) for i in (0, 1)])
    # the same distribution (channels permuted, scaled) gives 0
    same = feature_inputs({"m": [[[1.0, 0.0], [3.0, 4.0]]]}, {"m": [[[6.0, 8.0], [2.0, 0.0]]]})
    assert build_loss_term("nst", pairs=[pair("m", "m")])(same).item() == pytest.approx(
        0.0, abs=1e-6
    )


def test_nst_pools_the_larger_map_per_channel():
    # student 2x2 maps (2 channels), teacher one 4x4 channel pooled to the student's 2x2 by
    # averaging 2x2 blocks (the features are pooled, channel by channel)
    big = [[float((r * 4 + c) % 5) for c in range(4)] for r in range(4)]
    pooled = [
        sum(big[r][c] for r in (br, br + 1) for c in (bc, bc + 1)) / 4
        for br in (0, 2)
        for bc in (0, 2)
    ]
    student = [[[1.0, 2.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]]
    inputs = feature_inputs({"m": [student]}, {"m": [[big]]})
    value = build_loss_term("nst", pairs=[pair("m", "m")])(inputs)
    flat_student = [[v for row in channel for v in row] for channel in student]
    assert value.item() == pytest.approx(nst_by_hand(flat_student, [pooled]), rel=1e-6)


# ---------------------------------------------------------------- SP and PKT


def sp_by_hand(q_s: list[list[float]], q_t: list[list[float]]) -> float:
    def similarity(q: list[list[float]]) -> list[list[float]]:
        gram = [[sum(a * b for a, b in zip(x, y, strict=True)) for y in q] for x in q]
        return [unit(row) for row in gram]

    g_s, g_t = similarity(q_s), similarity(q_t)
    batch = len(q_s)
    return sum((g_s[i][j] - g_t[i][j]) ** 2 for i in range(batch) for j in range(batch)) / (
        batch * batch
    )


def pkt_by_hand(q_s: list[list[float]], q_t: list[list[float]]) -> float:
    def probabilities(q: list[list[float]]) -> list[list[float]]:
        units = [unit(x) for x in q]
        kernel = [[(sum(a * b for a, b in zip(x, y, strict=True)) + 1) / 2 for y in units]
                  for x in units]  # fmt: skip
        return [[k / sum(row) for k in row] for row in kernel]

    p_s, p_t = probabilities(q_s), probabilities(q_t)
    batch = len(q_s)
    return sum(
        p_t[i][j] * math.log((p_t[i][j] + EPS_PKT) / (p_s[i][j] + EPS_PKT))
        for i in range(batch)
        for j in range(batch)
    ) / (batch * batch)


Q_STUDENT = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
Q_TEACHER = [[1.0, 0.0, 2.0], [2.0, 1.0, 0.0], [-1.0, 0.0, 1.0]]


def embedding_inputs(field: str = "teacher_raw_embedding") -> LossInputs:
    return LossInputs(
        labels=torch.zeros(3, dtype=torch.long),
        student_embedding=torch.tensor(Q_STUDENT),
        **{field: torch.tensor(Q_TEACHER)},
    )


def test_sp_by_hand():
    # G_s = [[1, 0, 1], [0, 1, 1], [1, 1, 2]]: rows / sqrt 2, sqrt 2, sqrt 6
    # G_t = [[5, 2, 1], [2, 5, -2], [1, -2, 2]]: rows / sqrt 30, sqrt 33, 3
    g_s = [[1, 0, 1], [0, 1, 1], [1, 1, 2]]
    g_t = [[5, 2, 1], [2, 5, -2], [1, -2, 2]]
    direct = sum(
        (g_s[i][j] / math.sqrt(sum(v * v for v in g_s[i]))
         - g_t[i][j] / math.sqrt(sum(v * v for v in g_t[i]))) ** 2
        for i in range(3) for j in range(3)
    ) / 9  # fmt: skip
    assert sp_by_hand(Q_STUDENT, Q_TEACHER) == pytest.approx(direct)
    term = build_loss_term("sp")
    assert term.requires == ("student_embedding", "teacher_raw_embedding")
    value = term(embedding_inputs())
    assert value.dim() == 0 and value.item() == pytest.approx(direct, rel=1e-6)
    projected = build_loss_term("sp", teacher_field="teacher_embedding")
    assert projected(embedding_inputs("teacher_embedding")).item() == pytest.approx(direct, 1e-6)
    # a batch of 1: G = [[1]] on both sides
    one = LossInputs(
        labels=torch.zeros(1, dtype=torch.long),
        student_embedding=torch.tensor([[3.0, 1.0]]),
        teacher_raw_embedding=torch.tensor([[-2.0, 0.0, 5.0]]),
    )
    assert term(one).item() == 0.0
    with pytest.raises(ValueError, match="sp.teacher_field must be one of"):
        build_loss_term("sp", teacher_field="teacher_logits")


def test_pkt_by_hand():
    # student [1, 0], [0, 1]: cos 0 -> kernel [[1, .5], [.5, 1]] -> rows [2/3, 1/3];
    # teacher [1, 0], [3, 0]: cos 1 -> kernel all 1 -> rows [1/2, 1/2];
    # mean of the 4 entries of p_t log(p_t / p_s) = 2 (.5 ln .75 + .5 ln 1.5) / 4
    two = LossInputs(
        labels=torch.zeros(2, dtype=torch.long),
        student_embedding=torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
        teacher_raw_embedding=torch.tensor([[1.0, 0.0], [3.0, 0.0]]),
    )
    assert build_loss_term("pkt")(two).item() == pytest.approx(0.25 * math.log(1.125), 1e-5)
    value = build_loss_term("pkt")(embedding_inputs())
    assert value.dim() == 0
    assert value.item() == pytest.approx(pkt_by_hand(Q_STUDENT, Q_TEACHER), rel=1e-5)
    # identical relations (the teacher a rotated, scaled copy of the student) give 0
    rotated = LossInputs(
        labels=torch.zeros(3, dtype=torch.long),
        student_embedding=torch.tensor(Q_STUDENT),
        teacher_raw_embedding=2 * torch.tensor(Q_STUDENT) @ torch.tensor([[0.0, 1.0], [-1.0, 0.0]]),
    )
    assert build_loss_term("pkt")(rotated).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("name", ["sp", "pkt"])
def test_sp_pkt_on_tapped_features(name):
    """student_feature / teacher_feature read flattened tapped features instead of the
    embeddings; the composer is asked for exactly those."""
    s_map = torch.tensor(Q_STUDENT).reshape(3, 1, 2)  # [B, C, T], flattens to Q_STUDENT
    s_map.requires_grad_(True)
    t_map = torch.tensor(Q_TEACHER).reshape(3, 3, 1, 1)
    inputs = LossInputs(
        labels=torch.zeros(3, dtype=torch.long),
        student_features={"s": s_map},
        teacher_features={"t": t_map.requires_grad_(True)},
    )
    term = build_loss_term(name, student_feature="s", teacher_feature="t")
    assert term.requires == () and term.student_features == ("s",)
    assert term.teacher_features == ("t",)
    by_hand = {"sp": sp_by_hand, "pkt": pkt_by_hand}[name](Q_STUDENT, Q_TEACHER)
    value = term(inputs)
    assert value.item() == pytest.approx(by_hand, rel=1e-5)
    value.backward()
    assert t_map.grad is None  # the teacher side is detached
    mixed = build_loss_term(name, student_feature="s")
    assert mixed.requires == ("teacher_raw_embedding",) and mixed.teacher_features == ()


# ---------------------------------------------------------------- training


def test_fast_dev_run_at_speech_student_face_teacher(tiny_face_voice):
    """ECAPA map [B, C, T] -> timm map [B, C, H, W], set from the command line only; without
    flatten_positions the first step fails naming the pair and both shapes."""
    overrides = [
        "face_voice/no_kd", "distill=at", "debug=fast_dev_run",
        "teacher.cache_features=false",  # the cache holds embeddings, not feature maps
        "distill.features.student.map=encoder.ecapa.mfa",
        "distill.features.teacher.map=encoder.backbone.layer1",
    ]  # fmt: skip
    summary = train(tiny_face_voice(*overrides, "distill.at.flatten_positions=true"))
    assert summary["teacher"]  # AT reads teacher maps: a teacher was trained
    assert 0.0 <= summary["student"]["test/eer"] <= 1.0
    with pytest.raises(
        ValueError,
        match=r"at pair 0 \(student 'map', teacher 'map'\): student \[B, C, T\] \(8, 24, \d+\) "
        r"and teacher \[B, C, H, W\] \(8, 4, 4, 4\)",
    ):
        train(tiny_face_voice(*overrides))


def test_fast_dev_run_pkt_on_embeddings(tiny_face_voice):
    cfg = tiny_face_voice("face_voice/no_kd", "distill=pkt", "debug=fast_dev_run")
    summary = train(cfg)
    assert summary["teacher"]
    assert 0.0 <= summary["student"]["test/eer"] <= 1.0
