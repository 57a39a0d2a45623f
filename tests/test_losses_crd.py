"""CRD: the NCE / softmax losses and the momentum bank update by hand on a tiny bank with
fixed negatives, the negative sampler, index errors, the heads in the optimizer, sizes bound
when the module is built, and a run whose checkpoint round-trips the memory banks."""

from __future__ import annotations

import logging
import math

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from conftest import TINY_TEXT_IMAGE
from crossdistill.losses import DataSizes, LossComposer, LossInputs, build_loss_term
from crossdistill.models.encoders import MLPEncoder
from crossdistill.models.heads import LinearClassifier
from crossdistill.modules import DistillModule
from crossdistill.run_dir import load_run
from crossdistill.train import train
from crossdistill.utils.config import CONFIG_DIR

N = 5  # training samples
NCE_T = 0.5
# explicit unit rows of the two banks: teacher bank at angles j pi / 5, student at -j pi / 7
M_T = [[math.cos(j * math.pi / 5), math.sin(j * math.pi / 5)] for j in range(N)]
M_S = [[math.cos(-j * math.pi / 7), math.sin(-j * math.pi / 7)] for j in range(N)]
S_EMB = [[3.0, 4.0], [1.0, 0.0]]  # heads = identity: v_s = [.6, .8], [1, 0]
T_RAW = [[0.0, 2.0, 5.0], [1.0, 1.0, 0.0]]  # head drops the last dim: v_t = [0, 1], [1, 1]/r2
INDICES = [1, 3]
CONTRAST = [[1, 0, 4], [3, 2, 0]]  # column 0 = the positive, then K = 2 fixed negatives


def _unit(v: list[float]) -> list[float]:
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


V_S = [_unit(v) for v in S_EMB]
V_T = [_unit(v[:2]) for v in T_RAW]


def tiny_term(**params) -> torch.nn.Module:
    """A bound CRD term with identity-like heads, the explicit banks and fixed negatives."""
    term = build_loss_term("crd", feat_dim=2, num_negatives=2, nce_t=NCE_T, **params)
    dims = {"student_embedding": 2, "teacher_raw_embedding": 3, "teacher_embedding": 2}
    term.bind_data_sizes(DataSizes(N, dims))
    with torch.no_grad():
        term.embed_student.weight.copy_(torch.eye(2))
        term.embed_student.bias.zero_()
        term.embed_teacher.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]))
        term.embed_teacher.bias.zero_()
        term.memory_teacher.copy_(torch.tensor(M_T))
        term.memory_student.copy_(torch.tensor(M_S))
    term.contrast_indices = lambda indices: torch.tensor(CONTRAST)
    return term


def crd_inputs(s_emb=S_EMB, t_raw=T_RAW, indices=INDICES) -> LossInputs:
    return LossInputs(
        labels=torch.zeros(len(s_emb), dtype=torch.long),
        student_embedding=torch.tensor(s_emb),
        teacher_raw_embedding=torch.tensor(t_raw),
        indices=None if indices is None else torch.tensor(indices),
    )


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def _scores(v: list[list[float]], bank: list[list[float]]) -> list[list[float]]:
    return [[_dot(v[i], bank[j]) / NCE_T for j in CONTRAST[i]] for i in range(len(v))]


def _nce_by_hand(scores: list[list[float]], z: float) -> list[float]:
    """-log(h0 / (h0 + c + eps)) - sum_k log(c / (hk + c + eps)), h = exp(score) / Z."""
    c, eps = 2 / N, 1e-7
    out = []
    for row in scores:
        h = [math.exp(x) / z for x in row]
        loss = -math.log(h[0] / (h[0] + c + eps))
        loss -= sum(math.log(c / (hk + c + eps)) for hk in h[1:])
        out.append(loss)
    return out


def _z_by_hand(scores: list[list[float]]) -> float:
    flat = [math.exp(x) for row in scores for x in row]
    return sum(flat) / len(flat) * N


def test_nce_loss_and_z_by_hand():
    term = tiny_term()
    loss = term(crd_inputs())
    s_scores, t_scores = _scores(V_S, M_T), _scores(V_T, M_S)  # student vs teacher bank ...
    z_s, z_t = _z_by_hand(s_scores), _z_by_hand(t_scores)
    expected = [
        a + b for a, b in zip(_nce_by_hand(s_scores, z_s), _nce_by_hand(t_scores, z_t), strict=True)
    ]
    assert loss.shape == (2,)
    assert loss.tolist() == pytest.approx(expected, rel=1e-5)
    assert term.z_student.item() == pytest.approx(z_s, rel=1e-6)
    assert term.z_teacher.item() == pytest.approx(z_t, rel=1e-6)
    # Z stays fixed after the first batch (the paper's estimate), whatever comes next
    term(crd_inputs([[0.0, 1.0], [1.0, 1.0]], [[5.0, 0.0, 1.0], [0.0, 3.0, 0.0]]))
    assert term.z_student.item() == pytest.approx(z_s, rel=1e-6)


@pytest.mark.parametrize("num_samples", [5, 100])  # all-scores product / gathered rows
def test_scores_are_the_drawn_dot_products_on_both_paths(num_samples):
    term = build_loss_term("crd", feat_dim=2, num_negatives=2, nce_t=NCE_T)
    term.bind_data_sizes(
        DataSizes(num_samples, {"student_embedding": 2, "teacher_raw_embedding": 3})
    )
    bank = torch.tensor([[math.cos(j / 7), math.sin(j / 7)] for j in range(num_samples)])
    contrast = torch.tensor([[1, 0, 4], [3, 2, num_samples - 1]])
    scores = term.scores(torch.tensor(V_S), bank, contrast)
    expected = [
        [sum(a * b for a, b in zip(V_S[i], bank[j].tolist(), strict=True)) / NCE_T for j in row]
        for i, row in enumerate(contrast.tolist())
    ]
    torch.testing.assert_close(scores, torch.tensor(expected))


def test_bank_update_by_hand_with_momentum():
    term = tiny_term()
    term(crd_inputs())
    for bank, old, new in ((term.memory_teacher, M_T, V_T), (term.memory_student, M_S, V_S)):
        expected = [list(row) for row in old]
        for i, j in enumerate(INDICES):  # M[j] <- normalise(0.5 M[j] + 0.5 v_i)
            expected[j] = _unit([0.5 * a + 0.5 * b for a, b in zip(old[j], new[i], strict=True)])
        assert bank.tolist() == [pytest.approx(row, rel=1e-6) for row in expected]
    # eval mode: the loss is computed, the banks stay
    term.eval()
    before = term.memory_student.clone()
    term(crd_inputs())
    assert torch.equal(term.memory_student, before)


def test_softmax_objective_by_hand():
    term = tiny_term(objective="softmax")
    loss = term(crd_inputs())
    expected = []
    for i in range(2):
        total = 0.0
        for scores in (_scores(V_S, M_T)[i], _scores(V_T, M_S)[i]):
            total += -(scores[0] - math.log(sum(math.exp(x) for x in scores)))
        expected.append(total)
    assert loss.tolist() == pytest.approx(expected, rel=1e-5)


def test_teacher_is_detached_and_heads_get_gradients():
    term = tiny_term()
    inputs = crd_inputs()
    inputs.student_embedding.requires_grad_(True)
    inputs.teacher_raw_embedding.requires_grad_(True)
    term(inputs).mean().backward()
    assert inputs.student_embedding.grad.abs().sum() > 0
    assert inputs.teacher_raw_embedding.grad is None
    assert term.embed_student.weight.grad.abs().sum() > 0
    assert term.embed_teacher.weight.grad.abs().sum() > 0


def test_negatives_are_seeded_uniform_and_never_the_positive(caplog):
    with caplog.at_level(logging.WARNING):
        term = build_loss_term("crd", feat_dim=4)  # paper's 16384 negatives, N = 5
        term.bind_data_sizes(DataSizes(N, {"student_embedding": 3, "teacher_raw_embedding": 3}))
    assert term.k == N - 1 and "capped at N - 1 = 4" in caplog.text
    indices = torch.tensor([0, 2, 4])
    torch.manual_seed(7)
    first = term.contrast_indices(indices)
    torch.manual_seed(7)
    assert torch.equal(term.contrast_indices(indices), first)  # torch's generator: resumable
    assert first.shape == (3, N) and torch.equal(first[:, 0], indices)
    many = torch.cat([term.contrast_indices(indices) for _ in range(200)])
    negatives, positives = many[:, 1:], many[:, :1]
    assert (negatives != positives).all() and negatives.min() >= 0 and negatives.max() < N
    counts = torch.bincount(negatives[positives[:, 0] == 2].flatten(), minlength=N).tolist()
    assert counts[2] == 0 and min(counts[j] for j in (0, 1, 3, 4)) > 150  # ~200 each


def test_index_errors_are_clear():
    term = tiny_term()
    with pytest.raises(ValueError, match="crd needs the sample indices, but the batch has none"):
        term(crd_inputs(indices=None))
    with pytest.raises(ValueError, match=r"sample indices \[5\] are outside \[0, 5\)"):
        term(crd_inputs(indices=[0, 5]))
    with pytest.raises(ValueError, match=r"sample indices \[-1\] are outside"):
        term(crd_inputs(indices=[-1, 2]))
    bad = crd_inputs()
    bad.indices = torch.tensor([0.0, 1.0])
    with pytest.raises(ValueError, match="indices must be integers"):
        term(bad)
    with pytest.raises(RuntimeError, match="bind_data_sizes"):
        build_loss_term("crd")(crd_inputs())
    with pytest.raises(ValueError, match="crd.teacher_field must be one of"):
        build_loss_term("crd", teacher_field="teacher_logits")
    with pytest.raises(ValueError, match="at least 2 training samples"):
        build_loss_term("crd").bind_data_sizes(DataSizes(1, {}))


# ----------------------------------------------------------------- in a DistillModule


def crd_module(num_train_samples: int | None = 10) -> DistillModule:
    torch.manual_seed(0)
    student, teacher = MLPEncoder(6, (5,)), MLPEncoder(4, (3,))
    return DistillModule(
        student,
        LinearClassifier(5, 3),
        num_classes=3,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.5),
        teacher_encoder=teacher,
        teacher_classifier=LinearClassifier(3, 3),
        loss=LossComposer({"ce": {}, "crd": {"feat_dim": 4, "num_negatives": 3}}),
        num_train_samples=num_train_samples,
    )


def crd_batch(with_index: bool = True) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    batch = {
        "student_input": torch.randn(4, 6, generator=gen),
        "teacher_input": torch.randn(4, 4, generator=gen),
        "label": torch.tensor([0, 1, 2, 0]),
    }
    if with_index:
        batch["index"] = torch.tensor([9, 0, 4, 7])
    return batch


def test_heads_are_sized_by_the_module_trained_by_the_optimizer_and_saved():
    module = crd_module()
    term = module.loss.terms["crd"]
    assert term.embed_student.in_features == 5 and term.embed_teacher.in_features == 3
    assert term.memory_student.shape == (10, 4) and term.k == 3
    optimizer = module.configure_optimizers()
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    heads = [*term.embed_student.parameters(), *term.embed_teacher.parameters()]
    assert {id(p) for p in heads} <= in_optimizer
    before = [p.detach().clone() for p in heads]
    bank_before = term.memory_teacher.clone()
    module.train()
    total, _ = module.loss(module.loss_inputs(crd_batch()))
    optimizer.zero_grad()
    total.backward()
    optimizer.step()
    assert all(not torch.equal(p, b) for p, b in zip(heads, before, strict=True))
    changed = (term.memory_teacher != bank_before).any(1)
    assert changed.nonzero().flatten().tolist() == [0, 4, 7, 9]  # the batch's rows only
    state = module.state_dict()
    for key in ("memory_student", "memory_teacher", "z_student", "z_teacher"):
        assert f"loss.terms.crd.{key}" in state
    again = crd_module()
    again.load_state_dict(state, strict=True)
    assert torch.equal(again.loss.terms["crd"].memory_teacher, term.memory_teacher)
    assert again.loss.terms["crd"].z_student.item() == term.z_student.item() > 0


def test_module_errors_without_index_or_training_set_size():
    module = crd_module()
    with pytest.raises(ValueError, match="the batch has no 'index'"):
        module.loss_inputs(crd_batch(with_index=False))
    with pytest.raises(ValueError, match="give the DistillModule num_train_samples"):
        crd_module(num_train_samples=None)


def test_config_carries_the_papers_settings():
    spec = yaml.safe_load((CONFIG_DIR / "distill" / "crd.yaml").read_text())
    assert spec["ce"] == {"weight": 1.0}
    assert spec["crd"] == {
        "weight": 0.8, "feat_dim": 128, "num_negatives": 16384, "nce_t": 0.07,
        "momentum": 0.5, "teacher_field": "teacher_raw_embedding", "objective": "nce",
    }  # fmt: skip
    assert LossComposer(spec).required_fields >= {"indices", "teacher_raw_embedding"}


# ------------------------------------------------------------------------- pipelines


def test_fast_dev_run_crd_face_voice(tiny_face_voice):
    cfg = tiny_face_voice("face_voice/no_kd", "distill=crd", "debug=fast_dev_run")
    summary = train(cfg)
    assert 0.0 <= summary["student"]["test/eer"] <= 1.0


def test_crd_checkpoint_round_trips_the_memory_banks(compose_cfg):
    cfg = compose_cfg(
        "experiment=text_image/no_kd", "distill=crd", *TINY_TEXT_IMAGE,
        "trainer.max_epochs=1", "teacher.max_epochs=1", "test_ckpt=last",
    )  # fmt: skip
    summary = train(cfg)
    run = summary["run_dir"]
    blob = torch.load(f"{run}/checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    saved = blob["state_dict"]["loss.terms.crd.memory_student"]
    num_train = 3 * 12  # TINY_TEXT_IMAGE: 3 classes x 12 training captions
    assert saved.shape == (num_train, 128)
    # the rows one epoch visited (4 full batches of 8) are unit vectors now; rows of the
    # uniform init have norms of 1 +- 0.1, never within 1e-5 of 1
    updated = ((saved.norm(dim=1) - 1).abs() < 1e-5).sum().item()
    assert 32 <= updated < num_train
    loaded = load_run(run, ckpt="last")
    term = loaded.module.loss.terms["crd"]
    assert torch.equal(term.memory_student, saved)
    assert term.z_teacher.item() == blob["state_dict"]["loss.terms.crd.z_teacher"].item() > 0
    assert OmegaConf.select(loaded.cfg, "distill.crd.num_negatives") == 16384
    assert term.k == num_train - 1


@pytest.mark.parametrize("experiment", ["face_voice/no_kd", "text_image/no_kd", "mfh/exp1"])
def test_every_datamodule_gives_the_training_position_as_index(experiment, compose_cfg):
    """CRD's banks are indexed by ``batch["index"]``: it must be the sample's position in
    the training dataset, every position once per epoch."""
    from conftest import TINY_FACE_VOICE
    from crossdistill import builders

    tiny = {"face_voice/no_kd": TINY_FACE_VOICE, "text_image/no_kd": TINY_TEXT_IMAGE}
    cfg = compose_cfg(f"experiment={experiment}", *tiny.get(experiment, []))
    datamodule = builders.build_datamodule(cfg)
    dataset = datamodule.dataset("train")
    for i in (0, len(dataset) // 2, len(dataset) - 1):
        assert int(dataset[i]["index"]) == i
    seen = torch.cat([batch["index"] for batch in datamodule.train_dataloader()])
    assert seen.dtype == torch.int64
    assert len(set(seen.tolist())) == len(seen) and seen.min() >= 0 and seen.max() < len(dataset)


def _ddp_bank_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world
    )
    try:
        torch.manual_seed(0)  # the same heads and banks on both ranks, as DDP starts them
        term = build_loss_term("crd", feat_dim=3, num_negatives=2)
        term.bind_data_sizes(DataSizes(6, {"student_embedding": 2, "teacher_raw_embedding": 2}))
        torch.manual_seed(10 + rank)  # each rank its own batch (uneven sizes) and negatives
        batch = 3 if rank == 0 else 2
        indices = torch.tensor([0, 1, 2]) if rank == 0 else torch.tensor([3, 4])
        term(
            LossInputs(
                labels=torch.zeros(batch, dtype=torch.long),
                student_embedding=torch.randn(batch, 2),
                teacher_raw_embedding=torch.randn(batch, 2),
                indices=indices,
            )
        )
        torch.save(term.state_dict(), f"{out_dir}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_ranks_keep_the_same_banks(tmp_path):
    """Two gloo processes with different batches: after one step both hold identical banks
    (every rank's rows updated on every rank) and the same Z."""
    import torch.multiprocessing as mp

    mp.spawn(_ddp_bank_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    states = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    torch.manual_seed(0)
    fresh = build_loss_term("crd", feat_dim=3, num_negatives=2)
    fresh.bind_data_sizes(DataSizes(6, {"student_embedding": 2, "teacher_raw_embedding": 2}))
    for key in ("memory_student", "memory_teacher", "z_student", "z_teacher"):
        assert torch.equal(states[0][key], states[1][key]), key
    changed = (states[0]["memory_student"] != fresh.memory_student).any(1)
    assert changed.tolist() == [True] * 5 + [False]  # rows 0-2 of rank 0, 3-4 of rank 1
