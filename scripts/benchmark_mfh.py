"""Speed of the MFH reproduction: batched (stacked) models vs one model at a time.

Runs, in one process, (a) the reproduction's batched protocol and (b) an independent
reference that trains the same models (same data, same initial weights) one by one with a
plain PyTorch loop, as the authors' code does (without its per-epoch evaluation). Prints
both wall times, the speed-up, and how far the two disagree in test accuracy.

    python scripts/benchmark_mfh.py            # full: 10 seeds, 1000 epochs (~4 min)
    python scripts/benchmark_mfh.py --seeds 2  # quicker
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import torch
from torch import nn

from crossdistill.analysis.mfh import protocol
from crossdistill.data.generators import gaussian


def fit(lin: nn.Linear, x, y, hp: protocol.Hyper, teacher_logits=None) -> nn.Linear:
    opt = torch.optim.SGD(lin.parameters(), lr=hp.lr)
    kl = nn.KLDivLoss()
    for _ in range(hp.epochs):
        out = lin(x)
        loss = nn.functional.cross_entropy(out, y)
        if teacher_logits is not None:
            loss = loss + kl(torch.log_softmax(out, 1), torch.softmax(teacher_logits, 1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return lin


def acc(lin, x, y) -> float:
    with torch.no_grad():
        return 100.0 * (lin(x).argmax(1) == y).float().mean().item()


def t(a):
    return torch.from_numpy(a)


def sequential_vary(layouts, seeds, hp, name, key) -> list[dict]:
    rows = []
    for value, layout in layouts.items():
        for seed in seeds:
            rng = np.random.RandomState(seed)
            a = gaussian.draw_hyperplane(rng, layout.z_dim, "gaussian")
            xa, xb, y = map(t, gaussian.sample(layout, hp.n_train, a, rng))
            txa, txb, ty = map(
                t, gaussian.sample(layout, hp.n_test, a, np.random.RandomState(seed + 1))
            )
            torch.manual_seed(seed + 1)  # the authors re-seed torch with the test draw
            teacher, kd, no_kd = (
                nn.Linear(layout.teacher_dim, 2),
                nn.Linear(layout.student_dim, 2),
                nn.Linear(layout.student_dim, 2),
            )
            fit(teacher, xa, y, hp)
            with torch.no_grad():
                tl = teacher(xa)
            fit(kd, xb, y, hp, tl)
            fit(no_kd, xb, y, hp)
            for role, model, x in (
                ("teacher", teacher, txa),
                ("kd", kd, txb),
                ("no_kd", no_kd, txb),
            ):
                rows.append(
                    {
                        "experiment": name,
                        key: value,
                        "seed": seed,
                        "role": role,
                        "acc": acc(model, x, ty),
                    }
                )
    return rows


def sequential_table2(seeds, hp) -> list[dict]:
    rows = []
    for shared, teacher_only in protocol.TABLE2_SETTINGS:
        layout = gaussian.modify_gamma_layout(shared, teacher_only, 50, 50)
        a = np.ones(layout.z_dim)
        for seed in seeds:
            rng = np.random.RandomState(seed)
            xa1, xb1, y1 = map(t, gaussian.sample(layout, hp.n_train, a, rng))
            txa, txb, ty = map(t, gaussian.sample(layout, hp.n_test, a, rng))
            xa2, xb2, y2 = map(t, gaussian.sample(layout, hp.n_train, a, rng))
            rand = np.random.RandomState(seed + 10_000).choice(50, shared, replace=False)
            torch.manual_seed(seed)  # initial weights per mode as in protocol.table2
            teacher, no_kd, kd = (nn.Linear(50, 2) for _ in range(3))
            mg = {"gt": (nn.Linear(shared, 2), nn.Linear(50, 2))}
            torch.manual_seed(seed)
            _ = [nn.Linear(50, 2) for _ in range(3)]
            mg["random"] = (nn.Linear(shared, 2), nn.Linear(50, 2))
            torch.manual_seed(seed)
            _, jt, js = (nn.Linear(50, 2) for _ in range(3))
            mg["alg1"] = (nn.Linear(shared, 2), nn.Linear(50, 2))
            fit(teacher, xa1, y1, hp)
            opt = torch.optim.SGD(
                [*jt.parameters(), *js.parameters()], lr=hp.joint_lr, momentum=hp.joint_momentum
            )
            for _ in range(hp.epochs):
                ot, os_ = jt(xa1), js(xb1)
                loss = (
                    nn.functional.cross_entropy(ot, y1)
                    + nn.functional.cross_entropy(os_, y1)
                    + nn.functional.mse_loss(ot, os_)
                )
                opt.zero_grad()
                loss.backward()
                opt.step()
            with torch.no_grad():  # Algorithm 1, one channel and one permutation at a time
                s_logits = js(xb1)
                score = np.zeros(50)
                for _ in range(hp.n_repeats):
                    for j in range(50):
                        x = xa1.clone()
                        x[:, j] = xa1[torch.randperm(len(x)), j]
                        score[j] += nn.functional.mse_loss(jt(x), s_logits).item()
            cols = {"gt": np.arange(shared), "alg1": np.argsort(-score)[:shared], "random": rand}
            fit(no_kd, xb2, y2, hp)
            with torch.no_grad():
                tl = teacher(xa2)
            fit(kd, xb2, y2, hp, tl)
            res = {
                "teacher": acc(teacher, txa, ty),
                "no_kd": acc(no_kd, txb, ty),
                "kd": acc(kd, txb, ty),
            }
            for mode, (mg_t, mg_kd) in mg.items():
                c = torch.as_tensor(cols[mode])
                fit(mg_t, xa2[:, c], y2, hp)
                with torch.no_grad():
                    mtl = mg_t(xa2[:, c])
                fit(mg_kd, xb2, y2, hp, mtl)
                res[f"mg_teacher_{mode}"] = acc(mg_t, txa[:, c], ty)
                res[f"mg_kd_{mode}"] = acc(mg_kd, txb, ty)
            for role, value in res.items():
                rows.append(
                    {
                        "experiment": "table2",
                        "gamma": layout.gamma,
                        "seed": seed,
                        "role": role,
                        "acc": value,
                    }
                )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--epochs", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=100)
    args = p.parse_args()
    hp = protocol.Hyper(epochs=args.epochs, n_repeats=args.repeats)
    seeds, t2_seeds = list(range(args.seeds)), list(range(42, 42 + args.seeds))

    start = time.perf_counter()
    batched = pd.concat(
        [
            protocol.experiment1(seeds, hp),
            protocol.experiment2(seeds, hp),
            protocol.table2(t2_seeds, hp)[0],
        ]
    )
    t_batched = time.perf_counter() - start
    print(f"batched (stacked) reproduction: {t_batched:.1f} s", flush=True)

    start = time.perf_counter()
    rows = sequential_vary(
        {o: gaussian.gamma_layout(o) for o in protocol.EXP1_OVERLAPS}, seeds, hp, "exp1", "overlap"
    )
    rows += sequential_vary(
        {k: gaussian.alpha_layout(k) for k in protocol.EXP2_TEACHER_ONLY},
        seeds,
        hp,
        "exp2",
        "teacher_only",
    )
    rows += sequential_table2(t2_seeds, hp)
    t_seq = time.perf_counter() - start
    sequential = pd.DataFrame(rows)
    print(f"one-by-one plain PyTorch loop:  {t_seq:.1f} s", flush=True)

    def means(df):
        return df.groupby(["experiment", "role"]).acc.mean()

    diff = (means(batched) - means(sequential)).abs()
    n_models = len(batched)
    print(f"models trained: {n_models} per path")
    print(f"speed-up (one-by-one / batched): {t_seq / t_batched:.1f}x")
    print(
        f"largest difference of a mean accuracy between the paths: {diff.max():.3f} points "
        "(float summation order; Algorithm 1 uses different random permutations)"
    )


if __name__ == "__main__":
    main()
