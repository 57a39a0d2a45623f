"""Stacked (batched) training equals one-by-one training; Algorithm 1 finds planted
shared channels."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from crossdistill.analysis.algorithm1 import permutation_scores, recovery_rate, top_channels
from crossdistill.analysis.mfh import protocol
from crossdistill.analysis.stacked import StackedLinear, composer_loss, train_full_batch
from crossdistill.data.generators import gaussian


def plain_train(lin: nn.Linear, x, y, epochs, lr, teacher_logits=None):
    """The reference: a plain PyTorch loop, one model, as in the MFH code."""
    opt = torch.optim.SGD(lin.parameters(), lr=lr)
    for _ in range(epochs):
        out = lin(x)
        loss = nn.functional.cross_entropy(out, y)
        if teacher_logits is not None:
            loss = loss + nn.KLDivLoss()(
                torch.log_softmax(out, 1), torch.softmax(teacher_logits, 1)
            )
        opt.zero_grad()
        loss.backward()
        opt.step()
    return lin


def _data(seed, d, n=64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, 2, (n,), generator=g)


def test_stacked_training_equals_one_by_one_including_padding_and_kd():
    torch.manual_seed(0)
    dims = [6, 9, 9]
    linears = [nn.Linear(d, 2) for d in dims]
    xs, ys = zip(*[_data(i, d) for i, d in enumerate(dims)], strict=True)
    t_logits = torch.randn(3, 64, 2)
    x = torch.zeros(3, 64, 9)
    for i, xi in enumerate(xs):
        x[i, :, : xi.shape[1]] = xi
    y = torch.stack(ys)
    stacked = StackedLinear.from_linears(linears)
    train_full_batch(
        stacked, x, composer_loss(protocol.kd_composer(), y, t_logits), epochs=40, lr=0.1
    )
    for i, lin in enumerate(linears):
        plain_train(lin, xs[i], ys[i], 40, 0.1, t_logits[i])
        d = dims[i]
        assert torch.allclose(stacked.weight[i, :d].T, lin.weight, atol=1e-5)
        assert torch.allclose(stacked.bias[i], lin.bias, atol=1e-5)
        assert torch.all(stacked.weight[i, d:] == 0)  # padded inputs never learn


def test_lightning_teacher_matches_plain_loop(compose_cfg):
    """The CLI path (Lightning, Hydra) trains exactly the model the protocol describes."""
    from crossdistill import builders

    cfg = compose_cfg(
        "experiment=mfh/exp1",
        "seed=5",
        "teacher.max_epochs=25",
        "logger=[]",
        "callbacks=[]",
        "+trainer.enable_progress_bar=false",
        "trainer.check_val_every_n_epoch=1000",
    )
    dm = builders.build_datamodule(cfg)
    torch.manual_seed(5)
    teacher = builders.build_teacher_module(cfg, dm)
    init = teacher.classifier.fc
    ref = nn.Linear(init.in_features, 2)
    ref.load_state_dict(init.state_dict())
    trainer = builders.build_trainer(cfg, max_epochs=25, logger=False, enable_checkpointing=False)
    trainer.fit(teacher, datamodule=dm)
    x, y = dm.datasets["train"].x_a, dm.datasets["train"].y
    plain_train(ref, x, y, 25, 0.1)
    assert torch.allclose(teacher.classifier.fc.weight, ref.weight, atol=1e-5)


def test_algorithm1_recovers_planted_shared_channels():
    """Joint training + permutation scores rank the truly shared x_a columns first."""
    hp = protocol.Hyper(epochs=300, n_repeats=10)
    layout = gaussian.modify_gamma_layout(shared=8, teacher_only=10)
    xs_a, xs_b, ys, t_init, s_init = [], [], [], [], []
    for seed in range(4):
        rng = np.random.RandomState(seed)
        a = gaussian.draw_hyperplane(rng, layout.z_dim, "ones")
        x_a, x_b, y = gaussian.sample(layout, 400, a, rng)
        xs_a.append(x_a)
        xs_b.append(x_b)
        ys.append(y)
        torch.manual_seed(seed)
        t_init.append(nn.Linear(50, 2))
        s_init.append(nn.Linear(50, 2))
    xa, xb = torch.tensor(np.stack(xs_a)), torch.tensor(np.stack(xs_b))
    y = torch.tensor(np.stack(ys))
    jt, js = protocol.joint_train(
        xa, xb, y, StackedLinear.from_linears(t_init), StackedLinear.from_linears(s_init), hp
    )
    with torch.no_grad():
        s_logits = js(xb)
    scores = permutation_scores(
        jt, xa, s_logits, hp.n_repeats, torch.Generator().manual_seed(0), vectorize=True
    )
    assert scores.shape == (4, 50)
    assert torch.allclose(scores.max(-1).values, torch.ones(4, dtype=scores.dtype))
    top = top_channels(scores, 8)
    rate = recovery_rate(top, layout.shared_teacher_columns)
    assert rate >= 0.9, f"recovered only {rate:.0%} of the shared channels"
    # teacher-only decisive columns (8..17) must score below the shared ones on average
    assert scores[:, :8].mean() > scores[:, 8:18].mean() + 0.2


def test_permutation_scores_loop_and_vectorized_agree_and_image_channels():
    torch.manual_seed(0)
    model = StackedLinear(torch.randn(2, 5, 3), torch.randn(2, 3))
    x, s = torch.randn(2, 30, 5), torch.randn(2, 30, 3)
    a = permutation_scores(model, x, s, 2, torch.Generator().manual_seed(3), vectorize=True)
    b = permutation_scores(model, x, s, 2, torch.Generator().manual_seed(3))
    assert torch.allclose(a, b)
    # an image-like input [N, C, H, W]: only channel 1 matters to the "teacher"
    imgs = torch.randn(40, 3, 4, 4)

    def teacher(batch):
        return batch[:, 1].flatten(1)[:, :2]

    scores = permutation_scores(teacher, imgs, teacher(imgs), 3, event_dims=2)
    assert scores.argmax().item() == 1 and scores[0] == 0 and scores[2] == 0
