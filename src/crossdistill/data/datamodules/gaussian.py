"""LightningDataModule over the MFH synthetic Gaussian data (full-batch by default)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from crossdistill.data.datamodules.base import PairedDataModule, Side, Split, check_side
from crossdistill.data.generators import gaussian

LAYOUTS = ("gamma", "alpha", "modify_gamma")


class PairedTensorDataset(Dataset):
    """Paired vectors ``(x_a, x_b, y)`` served as batch dicts (see docs/CONVENTIONS.md).

    A ``DataLoader`` over it fetches each batch with one ``__getitems__`` call, whose
    output is already the batch: pass ``collate_fn=batch_as_is`` (the datamodule does)."""

    def __init__(self, x_a: np.ndarray, x_b: np.ndarray, y: np.ndarray) -> None:
        self.x_a = torch.as_tensor(x_a)
        self.x_b = torch.as_tensor(x_b)
        self.y = torch.as_tensor(y, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "teacher_input": self.x_a[i],
            "student_input": self.x_b[i],
            "label": self.y[i],
            "index": torch.tensor(i),
        }

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """A whole batch by one index per tensor (the loader's fetcher calls this instead
        of ``__getitem__`` per sample; :func:`batch_as_is` is then the collate function):
        the same batch as collating the samples, 20x cheaper for a full-batch MFH step."""
        index = torch.as_tensor(indices, dtype=torch.long)
        return {
            "teacher_input": self.x_a[index],
            "student_input": self.x_b[index],
            "label": self.y[index],
            "index": index,
        }


def batch_as_is(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Collate function for :meth:`PairedTensorDataset.__getitems__`: already a batch."""
    return batch


def build_layout(
    layout: str, overlap: int, teacher_only: int, shared: int, teacher_dim: int, student_dim: int
) -> gaussian.ModalityLayout:
    if layout == "gamma":
        return gaussian.gamma_layout(overlap, teacher_dim, student_dim)
    if layout == "alpha":
        return gaussian.alpha_layout(teacher_only, teacher_dim, student_dim)
    if layout == "modify_gamma":
        return gaussian.modify_gamma_layout(shared, teacher_only, teacher_dim, student_dim)
    raise ValueError(f"data.layout must be one of {LAYOUTS}, got {layout!r}")


class GaussianMFHDataModule(PairedDataModule):
    """Train / val / test draws of one MFH setting.

    Train and hyperplane come from ``RandomState(seed)``, test from ``RandomState(seed+1)``
    (the authors' experiments 1-2); validation from ``RandomState(seed + 7919)``, used only
    for model selection outside the paper protocol. Every split is drawn by
    :func:`crossdistill.data.generators.gaussian.sample` in the layout's ``draw_order``, so
    ``layout=modify_gamma`` draws ``x_a`` before ``x_b`` like the authors' Table 2 and the
    reproduction: its train split is the authors' first Table-2 draw of the seed (their
    test set continues that stream; here it is drawn from ``seed + 1`` for every layout).
    ``teacher_columns`` keeps only those columns of x_a (a modality-general teacher, MFH
    Table 2). Training batches are the full training set unless ``batch_size`` is set;
    eval batches hold 1024 samples.
    """

    def __init__(
        self,
        layout: str = "gamma",
        overlap: int = 10,
        teacher_only: int = 10,
        shared: int = 10,
        teacher_dim: int = 25,
        student_dim: int = 50,
        hyperplane: str = "gaussian",
        n_train: int = 200,
        n_val: int = 200,
        n_test: int = 1000,
        batch_size: int | None = None,
        teacher_columns: Sequence[int] | None = None,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        batch_size = min(batch_size or n_train, n_train)  # full batch, as in the paper
        super().__init__(batch_size, eval_batch_size=1024, num_workers=num_workers)
        self.layout = build_layout(layout, overlap, teacher_only, shared, teacher_dim, student_dim)
        if teacher_columns is not None:
            bad = [c for c in teacher_columns if not 0 <= int(c) < teacher_dim]
            if bad:
                raise ValueError(
                    f"data.teacher_columns {bad} out of range: x_a has {teacher_dim} columns"
                )
        self.teacher_columns = (
            None if teacher_columns is None else [int(c) for c in teacher_columns]
        )
        self.hyperplane = hyperplane
        self.sizes = {"train": n_train, "val": n_val, "test": n_test}
        self.seed = seed
        self.teacher_input_dim = (
            len(self.teacher_columns) if self.teacher_columns is not None else teacher_dim
        )
        self.student_input_dim = student_dim
        self.datasets: dict[str, PairedTensorDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        rng = np.random.RandomState(self.seed)
        a = gaussian.draw_hyperplane(rng, self.layout.z_dim, self.hyperplane)
        draws = {"train": rng}
        draws["test"] = np.random.RandomState(self.seed + 1)
        draws["val"] = np.random.RandomState(self.seed + 7919)
        for split in ("train", "test", "val"):
            x_a, x_b, y = gaussian.sample(self.layout, self.sizes[split], a, draws[split])
            if self.teacher_columns is not None:
                x_a = x_a[:, self.teacher_columns]
            self.datasets[split] = PairedTensorDataset(x_a, x_b, y)

    @property
    def num_classes(self) -> int:
        return 2

    def encoder_inputs(self, side: Side) -> dict[str, Any]:
        check_side(side)
        dim = self.teacher_input_dim if side == "teacher" else self.student_input_dim
        return {"input_dim": dim}

    @property
    def teacher_input_fixed_per_index(self) -> bool:
        return True

    def input_paths(self) -> list[Path]:
        """Nothing: the draws are fully defined by the config (seed, sizes, layout)."""
        return []

    def dataset(self, split: Split) -> PairedTensorDataset:
        if not self.datasets:
            raise RuntimeError("call setup() before requesting datasets or dataloaders")
        return self.datasets[split]

    def drop_last(self, num_samples: int) -> bool:
        return False

    def collate(self, split: Split) -> Callable:
        """The datasets hand out whole batches (``__getitems__``)."""
        return batch_as_is
