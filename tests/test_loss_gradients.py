"""Every registered loss term keeps finite, bounded gradients on degenerate inputs; the
default ``hard_l2`` cannot be minimised by shrinking the embeddings.

The gradient tests iterate ``LOSS_TERMS``, so a newly registered term is covered without
editing this file; ``VARIANTS`` adds the non-default code paths of the existing terms.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import crossdistill.losses  # noqa: F401  (registers every term)
from crossdistill.losses import LossComposer, LossInputs, build_loss_term
from crossdistill.losses.base import LOSS_TERMS, DataSizes, LossTerm
from crossdistill.models.heads import AdditiveAngularMarginClassifier

B, D, D_RAW, C, H, W = 4, 16, 12, 5, 3, 3

#: Largest allowed |dL/dx| of one input element; see test_gradients_finite_and_bounded.
GRAD_BOUND = 1e3

#: AT/NST pairs on different grids: the teacher's [C, T] and the student's [C, H, W] pooled
POOLED_PAIRS = [{"student": "seq", "teacher": "seq_long"}, {"student": "fine", "teacher": "map"}]
#: Non-default code paths, on top of every registered term with its defaults.
VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("feature_margin", {"distance": "l2", "margin": 0.0}),
    ("hard_l2", {"normalize": False}),
    ("hard_l2", {"reduction": "mean"}),
    ("rkd_distance", {"detach_teacher": False, "loss": "mse"}),
    ("rkd_angle", {"detach_teacher": False, "teacher_field": "teacher_raw_embedding"}),
    ("channel_independence", {"target": "teacher", "detach_teacher": False}),
    ("spatial_uniformity", {"mode": "wang_isola"}),
    ("spatial_uniformity", {"normalize": True, "power": 1.0}),
    ("spatial_uniformity", {"side": "teacher"}),
    ("feature_hint", {"pairs": [{"student": "map", "teacher": "wide"}]}),  # 1x1 conv
    ("feature_hint", {"pairs": [{"student": "map", "teacher": "vec"}], "pool": True}),  # linear
    ("at", {"pairs": POOLED_PAIRS}),
    ("at", {"pairs": [{"student": "seq", "teacher": "map"}], "flatten_positions": True, "p": 1.0}),
    ("nst", {"pairs": POOLED_PAIRS}),
    ("nst", {"pairs": [{"student": "fine", "teacher": "seq"}], "flatten_positions": True}),
    ("sp", {"student_feature": "map", "teacher_feature": "wide"}),
    ("sp", {"teacher_field": "teacher_embedding"}),
    ("pkt", {"student_feature": "seq", "teacher_field": "teacher_embedding"}),
    ("dkd", {"beta": 0.5, "temperature": 1.0}),  # the DKD paper's ImageNet setting
    ("dist", {"tau": 4.0}),
    ("crd", {"objective": "softmax", "teacher_field": "teacher_embedding"}),
]
#: parameters a term cannot do without (the default entry of TERMS)
REQUIRED_PARAMS: dict[str, dict[str, Any]] = {
    "feature_hint": {"pairs": [{"student": "map", "teacher": "map"}]},
    "at": {"pairs": [{"student": "map", "teacher": "wide"}]},
    "nst": {"pairs": [{"student": "map", "teacher": "wide"}]},
}
TERMS = [(name, REQUIRED_PARAMS.get(name, {})) for name in sorted(LOSS_TERMS)] + VARIANTS

#: the named features make_inputs() records on each side (shape without the batch axis)
FEATURES = {"map": (C, H, W), "wide": (C + 2, H, W), "vec": (D,)}
FEATURES |= {"fine": (C, 2 * H, 2 * W + 1), "seq": (C, 6), "seq_long": (C + 1, 11)}  # AT/NST

# (how, which side: the student's fields, the teacher's, or both)
DEGENERATE = ["zeros", "one_zero_row", "tiny", "small", "duplicate_all", "duplicate_two"]
CASES = (
    [("ordinary", "both")]
    + [(how, side) for how in DEGENERATE for side in ("student", "teacher", "both")]
    + [("batch_of_1", "both"), ("bf16", "both"), ("bf16_tiny", "both")]
    + [("bf16_duplicate_two", "both")]
)


def _shape(field: str, batch: int) -> tuple[int, ...]:
    if field.endswith("_logits"):
        return (batch, C)
    if field == "teacher_raw_embedding":
        return (batch, D_RAW)
    if field.endswith("_embedding"):
        return (batch, D)
    raise AssertionError(f"LossInputs.{field} is new: give it a shape in _shape()")


def _degrade(x: Tensor, how: str) -> Tensor:
    if how == "zeros":
        return torch.zeros_like(x)
    if how == "one_zero_row":
        return torch.cat([torch.zeros_like(x[:1]), x[1:]])
    if how == "tiny":
        return x * 1e-12
    if how == "small":  # where floors of 1e-12 still leave gradients of 1 / scale = 1e6
        return x * 1e-6
    if how == "duplicate_all":
        return x[:1].expand_as(x).clone()
    if how == "duplicate_two":
        return torch.cat([x[:1], x[:1], x[2:]])
    raise AssertionError(how)


def make_inputs(how: str, side: str, seed: int = 0) -> tuple[LossInputs, dict[str, Tensor]]:
    """Every field of LossInputs filled, the feature dicts with ``FEATURES`` (float tensors
    as leaves that require grad, keyed ``field`` or ``field[name]``)."""
    batch = 1 if how == "batch_of_1" else B
    dtype = torch.bfloat16 if how.startswith("bf16") else torch.float32
    how = how.removeprefix("bf16").removeprefix("_")
    gen = torch.Generator().manual_seed(seed)
    values: dict[str, Any] = {}
    leaves: dict[str, Tensor] = {}

    def leaf(key: str, shape: tuple[int, ...], is_student: bool) -> Tensor:
        x = torch.randn(shape, generator=gen)
        if how in DEGENERATE and (side == "both" or is_student == (side == "student")):
            x = _degrade(x, how)
        leaves[key] = x.to(dtype).requires_grad_(True)
        return leaves[key]

    for field in LossInputs.field_names():
        is_student = field.startswith("student")
        if field == "labels":
            values[field] = torch.arange(batch) % C
        elif field == "indices":  # distinct training-set rows, as in one epoch
            values[field] = torch.arange(batch) * 2
        elif field == "sample_weights":
            values[field] = torch.rand(batch, generator=gen) + 0.5
        elif field.endswith("_features"):
            values[field] = {
                name: leaf(f"{field}[{name}]", (batch, *shape), is_student)
                for name, shape in FEATURES.items()
            }
        else:
            values[field] = leaf(field, _shape(field, batch), is_student)
    return LossInputs(**values), leaves


def build_term(name: str, params: dict[str, Any]) -> LossTerm:
    """The term, its connectors (if any) built for the shapes of ``FEATURES``."""
    term = build_loss_term(name, **params)
    if term.needs_feature_shapes:
        shapes = {n: (B, *shape) for n, shape in FEATURES.items()}
        term.bind_feature_shapes(shapes, shapes)
    if term.needs_data_sizes:  # a training set of 2 B samples (indices 0, 2, .. in make_inputs)
        dims = {"student_embedding": D, "teacher_embedding": D, "teacher_raw_embedding": D_RAW}
        term.bind_data_sizes(DataSizes(num_train_samples=2 * B, embedding_dims=dims))
    return term


def _id(params: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in params.items())


@pytest.mark.parametrize("how,side", CASES, ids=[f"{h}-{s}" for h, s in CASES])
@pytest.mark.parametrize("name,params", TERMS, ids=[f"{n}[{_id(p)}]" for n, p in TERMS])
def test_gradients_finite_and_bounded(name, params, how, side):
    """Finite loss and ``max |dL/dx| <= GRAD_BOUND = 1e3`` for every input element x.

    ``L`` is the term reduced as the composer reduces it (batch mean of a per-sample term),
    on unit-scale data (standard normal entries; B=4, D=16). Why 1e3: ordinary gradients
    here are O(1) (<= 1 for CE/KD/MSE, a few for the rest); every scale-invariant term
    divides by a norm with a floor of 1e-3 (``functional.NORM_EPS``), whose Jacobian is at
    most 1 / 1e-3 = 1e3, times O(1) factors and the 1 / B of the batch mean, so a correct
    term stays below ~5e2 on every case (measured maximum: 4e2, ``rkd_distance`` and
    ``hard_l2`` at the floor). The bound catches the 1 / scale blow-ups of the old floors
    (1e-8, 1e-12): 1.8e7 (``feature_margin``, zero student), 9e9 (``rkd_angle``, two
    identical rows), 1e11 (``spatial_uniformity`` wang_isola, tiny map), and 5e3 to 5e4 on
    1e-6-scale inputs (``rkd_distance``, ``spatial_uniformity``, ``feature_margin``).
    """
    inputs, leaves = make_inputs(how, side)
    term = build_term(name, params)
    missing = [f for f in term.requires if getattr(inputs, f) is None]
    assert not missing, f"make_inputs() left {missing} empty"
    value = term(inputs)
    assert value.dtype == torch.float32  # terms compute in float32, bf16 inputs included
    loss = value.mean()
    assert torch.isfinite(loss), f"{name} loss = {loss.item()} on {how}/{side}"
    loss.backward()
    grads = {f: x.grad for f, x in leaves.items() if x.grad is not None}
    assert grads, f"{name} sends no gradient to any input"
    for field, g in grads.items():
        assert g.dtype == leaves[field].dtype
        g = g.float()
        assert torch.isfinite(g).all(), f"{name}: non-finite d/d{field} on {how}/{side}"
        worst = g.abs().max().item()
        assert worst <= GRAD_BOUND, f"{name}: |d/d{field}| = {worst:.3g} on {how}/{side}"


def test_every_registered_term_is_covered():
    assert {name for name, _ in TERMS} == set(LOSS_TERMS)
    for name, params in VARIANTS:  # the variants still build (no stale parameter names)
        build_loss_term(name, **params)


def test_degenerate_values_are_the_documented_limits():
    """A zero embedding normalises to 0 (no direction): d = 1 for the cosine and chord
    distances; duplicates and a batch of 1 contribute nothing to the relational terms; a
    zero map is uniform."""
    inputs, _ = make_inputs("zeros", "student")
    assert build_loss_term("feature_margin", margin=0.0)(inputs).tolist() == [1.0] * B
    assert build_loss_term("hard_l2")(inputs).tolist() == pytest.approx([1.0] * B)  # |0 - t|^2
    assert build_loss_term("spatial_uniformity")(inputs).tolist() == [0.0] * B
    same, _ = make_inputs("duplicate_all", "both")
    for name in ("rkd_distance", "rkd_angle"):
        assert build_loss_term(name)(same).item() == 0.0
    one, _ = make_inputs("batch_of_1", "both")
    for name in ("rkd_distance", "rkd_angle", "channel_independence"):
        assert build_loss_term(name)(one).item() == 0.0


def test_rkd_angle_masks_only_undefined_directions():
    """Two identical rows: the edges between them have no direction (cosine 0, no
    gradient); every other triple keeps the exact cosine of the unfloored definition."""
    x = torch.tensor([[0.0, 0.0], [0.0, 0.0], [3.0, 0.0], [0.0, 4.0]], requires_grad=True)
    angles = build_loss_term("rkd_angle")._angles(x).reshape(4, 4, 4)
    assert angles[0, 1].abs().sum() == 0 and angles[1, 0].abs().sum() == 0
    assert angles[0, 2, 3].item() == pytest.approx(0.0, abs=1e-7)  # right angle at e_0
    assert angles[2, 0, 3].item() == pytest.approx(0.6)  # the 3-4-5 triangle at e_2
    assert angles[3, 0, 2].item() == pytest.approx(0.8)
    angles.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().max() < 10


def test_bf16_inputs_are_computed_in_float32():
    """bf16 inputs (and autocast, as under ``precision=bf16-mixed``) give exactly the
    float32 value of the upcast inputs, not a bf16 computation."""
    ref, _ = make_inputs("ordinary", "both")
    low = LossInputs(
        **{
            f: v.detach().bfloat16() if isinstance(v, Tensor) and v.is_floating_point() else v
            for f in LossInputs.field_names()
            if (v := getattr(ref, f)) is not None
        }
    )
    up = low.float32()
    assert up.student_embedding.dtype == torch.float32 and up.labels.dtype == torch.long
    for name in ("feature_margin", "rkd_angle", "channel_independence"):
        term = build_loss_term(name)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            value = term(low)
        assert value.dtype == torch.float32
        assert torch.equal(value, term(up))


# ---------------------------------------------------------------- hard_l2 well-posedness


def test_hard_l2_default_is_the_normalised_chord():
    s = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 0.0]])
    t = torch.tensor([[8.0, 6.0], [0.0, 5.0], [1.0, 0.0]])
    inp = LossInputs(labels=torch.zeros(3).long(), student_embedding=s, teacher_embedding=t)
    # unit vectors: cos = 0.96, 0 -> 2 - 2 cos; a zero student normalises to 0 -> |t_n|^2 = 1
    assert build_loss_term("hard_l2")(inp).tolist() == pytest.approx([0.08, 2.0, 1.0])
    assert build_loss_term("hard_l2", reduction="mean")(inp).tolist() == pytest.approx(
        [0.04, 1.0, 0.5]
    )
    raw = build_loss_term("hard_l2", normalize=False)(inp)  # FitNets MSE, mean over D
    assert raw.tolist() == pytest.approx([(25 + 4) / 2, (1 + 25) / 2, 1 / 2])
    # the margin-0 counterpart of feature_margin: hard_l2 = 2 d_cosine = d_l2^2
    fm = build_loss_term("feature_margin", margin=0.0)(inp)
    fm_l2 = build_loss_term("feature_margin", margin=0.0, distance="l2")(inp)
    hard = build_loss_term("hard_l2")(inp)
    assert hard[:2].tolist() == pytest.approx((2 * fm[:2]).tolist())
    assert hard.tolist() == pytest.approx(fm_l2.pow(2).tolist())
    with pytest.raises(ValueError, match="reduction"):
        build_loss_term("hard_l2", reduction="max")
    with pytest.raises(ValueError, match="projection head"):
        build_loss_term("hard_l2")(
            LossInputs(
                labels=torch.zeros(2).long(),
                student_embedding=torch.ones(2, 3),
                teacher_embedding=torch.ones(2, 4),
            )
        )


def _train_ce_plus_hard_l2(normalize: bool, steps: int = 300) -> dict[str, float]:
    """CE through an AAM (scale-invariant) classifier + hard_l2 (weight 1) with a trainable
    projection P, plain SGD on 64 random samples of 4 classes; embedding norms before/after."""
    gen = torch.Generator().manual_seed(0)
    n, k, d_in = 64, 4, 8
    y = torch.arange(n) % k
    x_s = torch.randn(k, d_in, generator=gen)[y] + 0.5 * torch.randn(n, d_in, generator=gen)
    x_t = torch.randn(k, d_in, generator=gen)[y] + 0.5 * torch.randn(n, d_in, generator=gen)
    torch.manual_seed(0)
    encoder, projection = nn.Linear(d_in, 8), nn.Linear(d_in, 8)  # student, P on frozen t
    head = AdditiveAngularMarginClassifier(8, k)
    loss = LossComposer({"ce": {}, "hard_l2": {"normalize": normalize}})
    params = [*encoder.parameters(), *projection.parameters(), *head.parameters()]
    opt = torch.optim.SGD(params, lr=0.1)

    def norms(tag: str) -> dict[str, float]:
        with torch.no_grad():
            s, p = encoder(x_s), projection(x_t)
            cos = nn.functional.cosine_similarity(s, p).mean().item()
            acc = (head(s).argmax(1) == y).float().mean().item()
        return {f"s_{tag}": s.norm(dim=1).mean().item(), f"p_{tag}": p.norm(dim=1).mean().item(),
                f"cos_{tag}": cos, f"acc_{tag}": acc}  # fmt: skip

    out = norms("start")
    for _ in range(steps):
        s, p = encoder(x_s), projection(x_t)
        total, _ = loss(
            LossInputs(labels=y, student_logits=head(s, y), student_embedding=s,
                       teacher_embedding=p)
        )  # fmt: skip
        opt.zero_grad()
        total.backward()
        opt.step()
    out.update(norms("end"))
    assert all(math.isfinite(v) for v in out.values())
    return out


@pytest.fixture
def one_thread():
    """600 tiny SGD steps: 3 s on one thread, 40 s when two threads fight for shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("one_thread")
def test_hard_l2_default_does_not_collapse_the_embeddings():
    """With a scale-invariant classifier the raw MSE is minimised by shrinking s and P(t)
    together (the classifier does not see the scale): measured here, both mean norms fall
    to ~0.4x in 300 steps (s 1.53 -> 0.64, P(t) 1.78 -> 0.61) while the cosine only reaches
    0.87. The normalised default has no scale to shrink: the norms do not fall (s grows,
    as scale-invariant losses do under SGD) and the cosine reaches 0.95."""
    default = _train_ce_plus_hard_l2(normalize=True)
    assert default["s_end"] >= default["s_start"]
    assert default["p_end"] >= 0.9 * default["p_start"]
    assert default["cos_end"] > 0.9 and default["acc_end"] == 1.0
    raw = _train_ce_plus_hard_l2(normalize=False)
    assert raw["s_end"] < 0.5 * raw["s_start"]
    assert raw["p_end"] < 0.5 * raw["p_start"]
    assert raw["acc_end"] == 1.0  # the classifier is as happy with the shrunken embeddings
