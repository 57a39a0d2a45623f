"""The MFH synthetic protocols (paper Fig. 2, Fig. 3, Table 2), batched over models.

Each function returns a long-format ``DataFrame`` with one row per (setting, seed, role)
and the test accuracy in percent. Every model of a role is trained at once as one
:class:`StackedLinear`; its initial weights are the ``nn.Linear`` draws the authors'
code makes (after ``torch.manual_seed(seed + 1)`` for experiments 1-2, ``seed`` for Table 2,
in their order of creation), and the data are drawn with numpy exactly as theirs (in each
layout's ``draw_order``). Corrections of the public code and the one remaining difference
(Algorithm 1's permutations): ``docs/mfh.md``.

The training hyperparameters (epochs, learning rate, data sizes, the KD and CE losses) are
read from the composed config of ``experiment=mfh/exp1`` (:func:`protocol_config`), the
same config ``crossdistill-train experiment=mfh/exp1`` runs, so each has one source.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from crossdistill.analysis.algorithm1 import permutation_scores, recovery_rate, top_channels
from crossdistill.analysis.stacked import (
    StackedLinear,
    accuracy,
    composer_loss,
    train_full_batch,
)
from crossdistill.data.generators import gaussian
from crossdistill.losses import LossComposer, LossInputs
from crossdistill.utils.config import compose_config

MFH_EXPERIMENT = "mfh/exp1"


@cache
def protocol_config(*overrides: str) -> DictConfig:
    """The composed ``experiment=mfh/exp1`` config (plus ``overrides``), checked to describe
    what the stacked trainer does: plain full-batch SGD, the same for teacher and student."""
    cfg = compose_config("train", [f"experiment={MFH_EXPERIMENT}", *overrides])
    for side in ("teacher", "student"):
        opt = cfg[side].optimizer
        extra = {k: v for k, v in opt.items() if k not in ("_target_", "_partial_", "lr")}
        if opt._target_ != "torch.optim.SGD" or extra or cfg[side].get("scheduler"):
            raise ValueError(
                f"experiment={MFH_EXPERIMENT}: {side}.optimizer must be plain SGD (lr only, no "
                f"scheduler) for the stacked MFH protocol, got {OmegaConf.to_container(opt)}"
            )
    if cfg.teacher.optimizer.lr != cfg.student.optimizer.lr or (
        cfg.teacher.max_epochs != cfg.trainer.max_epochs
    ):
        raise ValueError(
            f"experiment={MFH_EXPERIMENT}: the stacked protocol trains teacher and student "
            f"alike; teacher lr/epochs ({cfg.teacher.optimizer.lr}, {cfg.teacher.max_epochs}) "
            f"differ from the student's ({cfg.student.optimizer.lr}, {cfg.trainer.max_epochs})"
        )
    return cfg


def _composer(*overrides: str) -> LossComposer:
    spec = OmegaConf.to_container(protocol_config(*overrides).distill, resolve=True)
    return LossComposer(spec)


def kd_composer() -> LossComposer:
    """CE + KD as ``crossdistill-train experiment=mfh/exp1`` composes them (distill=kd_mfh)."""
    return _composer()


def ce_composer() -> LossComposer:
    """CE only, as the No-KD baseline ``experiment=mfh/exp1 distill=none``."""
    return _composer("distill=none")


@dataclass
class Hyper:
    """Protocol settings; the ``None`` ones are read from :func:`protocol_config`."""

    epochs: int | None = None  # trainer.max_epochs (= teacher.max_epochs)
    lr: float | None = None  # student.optimizer.lr (= teacher.optimizer.lr)
    joint_lr: float = 0.01  # Algorithm 1, step 1 (joint training; no CLI counterpart)
    joint_momentum: float = 0.9
    n_repeats: int = 100  # Algorithm-1 permutations per channel
    n_train: int | None = None  # data.n_train
    n_test: int | None = None  # data.n_test

    def __post_init__(self) -> None:
        cfg = protocol_config()
        if self.epochs is None:
            self.epochs = int(cfg.trainer.max_epochs)
        if self.lr is None:
            self.lr = float(cfg.student.optimizer.lr)
        if self.n_train is None:
            self.n_train = int(cfg.data.n_train)
        if self.n_test is None:
            self.n_test = int(cfg.data.n_test)


@dataclass
class Batch:
    """Stacked data of S models: ``x_a [S,N,Da]``, ``x_b [S,N,Db]``, ``y [S,N]``."""

    x_a: list[np.ndarray] = field(default_factory=list)
    x_b: list[np.ndarray] = field(default_factory=list)
    y: list[np.ndarray] = field(default_factory=list)

    def add(self, x_a: np.ndarray, x_b: np.ndarray, y: np.ndarray) -> None:
        self.x_a.append(x_a)
        self.x_b.append(x_b)
        self.y.append(y)

    def tensors(self, pad_a: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
        width = pad_a or max(a.shape[1] for a in self.x_a)
        xa = np.zeros((len(self.x_a), self.x_a[0].shape[0], width), dtype=np.float32)
        for i, a in enumerate(self.x_a):
            xa[i, :, : a.shape[1]] = a
        return (
            torch.from_numpy(xa),
            torch.from_numpy(np.stack(self.x_b)),
            torch.from_numpy(np.stack(self.y)),
        )


Group = tuple[Tensor, Tensor, list[nn.Linear], Tensor | None]  # x, y, inits, teacher logits


def train_groups(groups: list[Group], hp: Hyper) -> list[StackedLinear]:
    """Train several groups of independent models (same input width) as ONE stack.

    A step of a stack costs about the same for 50 or 250 tiny models, so independent
    roles are trained together. Groups either all have teacher logits (KD) or none (CE).
    """
    kd = [g[3] is not None for g in groups]
    if any(kd) and not all(kd):
        raise ValueError("train_groups needs all-KD or all-CE groups")
    x = torch.cat([g[0] for g in groups])
    y = torch.cat([g[1] for g in groups])
    inits = [lin for g in groups for lin in g[2]]
    model = StackedLinear.from_linears(inits, pad_to=x.shape[-1])
    if all(kd):
        loss = composer_loss(kd_composer(), y, torch.cat([g[3] for g in groups]).detach())
    else:
        loss = composer_loss(ce_composer(), y)
    train_full_batch(model, x, loss, hp.epochs, hp.lr)
    out, start = [], 0
    for g in groups:
        stop = start + len(g[2])
        out.append(
            StackedLinear(model.weight.detach()[start:stop], model.bias.detach()[start:stop])
        )
        start = stop
    return out


def _rows(name: str, settings: list[dict], seeds: list[int], accs: dict[str, Tensor]) -> list[dict]:
    rows = []
    for i, (setting, seed) in enumerate(zip(settings, seeds, strict=True)):
        for role, acc in accs.items():
            rows.append(
                {
                    "experiment": name,
                    **setting,
                    "seed": seed,
                    "role": role,
                    "acc": 100.0 * float(acc[i]),
                }
            )
    return rows


def run_vary(
    name: str,
    layouts: dict[float, gaussian.ModalityLayout],
    seeds: list[int],
    hp: Hyper,
    key: str,
) -> pd.DataFrame:
    """Experiments 1 and 2: teacher, KD student and No-KD student per (setting, seed)."""
    train, test = Batch(), Batch()
    settings, seed_list, inits = [], [], {"teacher": [], "kd": [], "no_kd": []}
    for value, layout in layouts.items():
        for seed in seeds:
            rng = np.random.RandomState(seed)
            a = gaussian.draw_hyperplane(rng, layout.z_dim, "gaussian")
            train.add(*gaussian.sample(layout, hp.n_train, a, rng))
            test.add(*gaussian.sample(layout, hp.n_test, a, np.random.RandomState(seed + 1)))
            # The authors' `seed(seed + 1)` before the test draw re-seeds torch as well, so
            # their models are initialised after torch.manual_seed(seed + 1), in the order
            # teacher, KD student, No-KD student.
            torch.manual_seed(seed + 1)
            inits["teacher"].append(nn.Linear(layout.teacher_dim, 2))
            inits["kd"].append(nn.Linear(layout.student_dim, 2))
            inits["no_kd"].append(nn.Linear(layout.student_dim, 2))
            settings.append({key: value, "gamma": layout.gamma})
            seed_list.append(seed)
    width = max(layout.student_dim for layout in layouts.values())
    xa, xb, y = train.tensors(pad_a=width)
    txa, txb, ty = test.tensors(pad_a=width)
    teacher, no_kd = train_groups(
        [(xa, y, inits["teacher"], None), (xb, y, inits["no_kd"], None)], hp
    )
    with torch.no_grad():
        t_logits = teacher(xa)
    (kd,) = train_groups([(xb, y, inits["kd"], t_logits)], hp)
    with torch.no_grad():
        accs = {
            "teacher": accuracy(teacher(txa), ty),
            "kd": accuracy(kd(txb), ty),
            "no_kd": accuracy(no_kd(txb), ty),
        }
    return pd.DataFrame(_rows(name, settings, seed_list, accs))


EXP1_OVERLAPS = (0, 2, 4, 6, 8, 10)
EXP2_TEACHER_ONLY = (0, 10, 20, 30, 40)
# (shared, teacher_only): gamma = shared / (shared + teacher_only). The public code's
# list (shared 5..30, teacher_only 10) has no gamma = .25; we use (5, 15) for it.
TABLE2_SETTINGS = ((5, 15), (5, 10), (10, 10), (20, 10), (30, 10))


def experiment1(seeds: list[int] | None = None, hp: Hyper | None = None) -> pd.DataFrame:
    """Fig. 2: sweep gamma with 10 decisive dims per modality."""
    layouts = {o: gaussian.gamma_layout(o) for o in EXP1_OVERLAPS}
    return run_vary("exp1", layouts, seeds or list(range(10)), hp or Hyper(), "overlap")


def experiment2(seeds: list[int] | None = None, hp: Hyper | None = None) -> pd.DataFrame:
    """Fig. 3: sweep alpha (teacher-only decisive dims), student fixed."""
    layouts = {k: gaussian.alpha_layout(k) for k in EXP2_TEACHER_ONLY}
    df = run_vary("exp2", layouts, seeds or list(range(10)), hp or Hyper(), "teacher_only")
    df["alpha"] = df["teacher_only"] / (df["teacher_only"] + 10)
    return df


def joint_train(
    xa: Tensor, xb: Tensor, y: Tensor, t_init: StackedLinear, s_init: StackedLinear, hp: Hyper
) -> tuple[StackedLinear, StackedLinear]:
    """Algorithm 1, step 1: CE(T) + CE(S) + MSE(T logits, S logits), SGD with momentum."""
    params = list(t_init.parameters()) + list(s_init.parameters())
    optimizer = torch.optim.SGD(params, lr=hp.joint_lr, momentum=hp.joint_momentum)
    ce = ce_composer()
    for _ in range(hp.epochs):
        t, s = t_init(xa), s_init(xb)
        loss = (
            ce(LossInputs(labels=y, student_logits=t))[0]
            + ce(LossInputs(labels=y, student_logits=s))[0]
            + (t - s).pow(2).mean((-1, -2))
        ).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return t_init, s_init


def table2(
    seeds: list[int] | None = None,
    hp: Hyper | None = None,
    settings: tuple[tuple[int, int], ...] = TABLE2_SETTINGS,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 2: regular vs modality-general teachers (gt, alg1, random).

    Returns per-model accuracies and Algorithm-1 recovery rates.
    """
    hp = hp or Hyper()
    seeds = seeds or list(range(42, 52))
    width = 50
    data1, test, data2 = Batch(), Batch(), Batch()
    meta, inits = [], {r: [] for r in ("teacher", "joint_t", "joint_s", "no_kd", "kd")}
    mg_inits: dict[str, list[nn.Linear]] = {m: [] for m in ("gt", "alg1", "random")}
    mg_kd_inits: dict[str, list[nn.Linear]] = {m: [] for m in ("gt", "alg1", "random")}
    random_cols = []
    for shared, teacher_only in settings:
        layout = gaussian.modify_gamma_layout(shared, teacher_only, width, width)
        a = gaussian.draw_hyperplane(np.random.RandomState(0), layout.z_dim, "ones")
        for seed in seeds:
            rng = np.random.RandomState(seed)
            data1.add(*gaussian.sample(layout, hp.n_train, a, rng))
            test.add(*gaussian.sample(layout, hp.n_test, a, rng))
            data2.add(
                *gaussian.sample(layout, hp.n_train, a, rng)
            )  # fresh draw for the student stage
            random_cols.append(
                np.random.RandomState(seed + 10_000).choice(width, shared, replace=False)
            )
            # Initial weights as the authors' script creates them: it runs each mode on its
            # own after seed(seed): regular teacher, [alg1 only: joint teacher, joint
            # student, then 100 x 100 torch.randperm], No-KD student, KD student, MG teacher,
            # MG student. gt and random therefore share the first three models.
            torch.manual_seed(seed)  # mode gt
            for role in ("teacher", "no_kd", "kd"):
                inits[role].append(nn.Linear(width, 2))
            mg_inits["gt"].append(nn.Linear(shared, 2))
            mg_kd_inits["gt"].append(nn.Linear(width, 2))
            torch.manual_seed(seed)  # mode random: the same three models, then its MG pair
            for _ in range(3):
                nn.Linear(width, 2)
            mg_inits["random"].append(nn.Linear(shared, 2))
            mg_kd_inits["random"].append(nn.Linear(width, 2))
            # mode alg1: the same regular teacher, the joint pair; its permutations come from
            # our own generator, so its MG pair follows the joint pair directly
            torch.manual_seed(seed)
            nn.Linear(width, 2)
            inits["joint_t"].append(nn.Linear(width, 2))
            inits["joint_s"].append(nn.Linear(width, 2))
            mg_inits["alg1"].append(nn.Linear(shared, 2))
            mg_kd_inits["alg1"].append(nn.Linear(width, 2))
            meta.append(
                {
                    "shared": shared,
                    "teacher_only": teacher_only,
                    "gamma": layout.gamma,
                    "seed": seed,
                }
            )
    xa1, xb1, y1 = data1.tensors()
    txa, txb, ty = test.tensors()
    xa2, xb2, y2 = data2.tensors()

    jt, js = joint_train(
        xa1,
        xb1,
        y1,
        StackedLinear.from_linears(inits["joint_t"]),
        StackedLinear.from_linears(inits["joint_s"]),
        hp,
    )
    with torch.no_grad():
        s_logits = js(xb1)
    scores = permutation_scores(
        jt, xa1, s_logits, hp.n_repeats, torch.Generator().manual_seed(seeds[0]), vectorize=True
    )

    recov_rows = []
    columns = {"gt": [], "alg1": [], "random": []}
    for i, m in enumerate(meta):
        columns["gt"].append(np.arange(m["shared"]))
        alg1_cols = top_channels(scores[i], m["shared"]).numpy()
        columns["alg1"].append(alg1_cols)
        columns["random"].append(random_cols[i])
        recovered = recovery_rate(torch.as_tensor(alg1_cols), list(range(m["shared"])))
        recov_rows.append({**m, "alg1_recovery": recovered})
    mg_train, mg_test = {}, {}
    for mode, cols in columns.items():  # MG teacher inputs: the chosen x_a columns, 0-padded
        sel2, sel_test = Batch(), Batch()
        for i, c in enumerate(cols):
            sel2.add(data2.x_a[i][:, c], data2.x_b[i], data2.y[i])
            sel_test.add(test.x_a[i][:, c], test.x_b[i], test.y[i])
        mg_train[mode] = sel2.tensors(pad_a=width)[0]
        mg_test[mode] = sel_test.tensors(pad_a=width)[0]

    # stage 1, one stack: the regular teacher, the No-KD student and the three MG teachers
    modes = list(columns)
    teacher, no_kd, *mg_teachers = train_groups(
        [(xa1, y1, inits["teacher"], None), (xb2, y2, inits["no_kd"], None)]
        + [(mg_train[m], y2, mg_inits[m], None) for m in modes],
        hp,
    )
    # stage 2, one stack: the students of the regular and of the three MG teachers
    with torch.no_grad():
        reg_logits = teacher(xa2)  # the regular teacher reads x_a (the public code fed x_b)
        mg_logits = [t(mg_train[m]) for t, m in zip(mg_teachers, modes, strict=True)]
    kd, *mg_kds = train_groups(
        [(xb2, y2, inits["kd"], reg_logits)]
        + [(xb2, y2, mg_kd_inits[m], lg) for m, lg in zip(modes, mg_logits, strict=True)],
        hp,
    )
    with torch.no_grad():
        accs = {
            "teacher": accuracy(teacher(txa), ty),
            "no_kd": accuracy(no_kd(txb), ty),
            "kd": accuracy(kd(txb), ty),
        }
        for m, mg_t, mg_kd in zip(modes, mg_teachers, mg_kds, strict=True):
            accs[f"mg_teacher_{m}"] = accuracy(mg_t(mg_test[m]), ty)
            accs[f"mg_kd_{m}"] = accuracy(mg_kd(txb), ty)
    rows = []
    for i, m in enumerate(meta):
        for role, acc in accs.items():
            rows.append({"experiment": "table2", **m, "role": role, "acc": 100.0 * float(acc[i])})
    return pd.DataFrame(rows), pd.DataFrame(recov_rows)
