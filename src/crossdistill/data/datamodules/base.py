"""The contract between the data and the rest of the framework: :class:`PairedDataModule`.

Every DataModule subclasses it and provides its datasets; the base class builds the
loaders. Builders, caches and evaluators read the data only through these members (see
``docs/architecture.md``, "a dataset").
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
from torch.utils.data import DataLoader, Dataset, Sampler

from crossdistill.utils.fingerprint import fingerprint_items, fingerprint_paths

Side = Literal["teacher", "student"]
Split = Literal["train", "val", "test"]
SIDES: tuple[str, ...] = ("teacher", "student")
SPLITS: tuple[str, ...] = ("train", "val", "test")


class PairedDataModule(pl.LightningDataModule, ABC):
    """Paired teacher/student data yielding the batch dict of ``docs/CONVENTIONS.md``.

    A subclass implements ``num_classes``, :meth:`encoder_inputs`,
    ``teacher_input_fixed_per_index``, :meth:`input_paths` and :meth:`dataset`; a missing
    one fails at instantiation (``TypeError: Can't instantiate abstract class ...``).
    It may override :meth:`collate`, :meth:`sample_ids`, :meth:`drop_last` and
    :meth:`eval_sampler`.

    Args:
        batch_size: training batch size; eval_batch_size: val/test (default: batch_size).
        num_workers, pin_memory: DataLoader options of every split.
    """

    #: data config keys (e.g. a generator's parameters) whose whole effect is in the files
    #: of :meth:`input_paths`: the teacher cache key leaves them out (the fingerprint has them)
    config_in_files: tuple[str, ...] = ()

    def __init__(
        self,
        batch_size: int,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.num_workers = int(num_workers)
        self.pin_memory = bool(pin_memory)
        self._content_fingerprints: dict[str, str | None] = {}

    # ------------------------------------------------------------------ what the data fix
    @property
    @abstractmethod
    def num_classes(self) -> int:
        """Number of training classes (the size of the classifier heads)."""

    @abstractmethod
    def encoder_inputs(self, side: Side) -> dict[str, Any]:
        """Constructor arguments an encoder of ``side`` needs from the data (``input_dim``,
        ``vocab_size``, ``in_chans``, ``image_size``, ``sample_rate``, ...); the builders
        pass those the encoder accepts and its config leaves unset."""

    @property
    @abstractmethod
    def teacher_input_fixed_per_index(self) -> bool:
        """Whether a training sample's ``teacher_input`` is a function of its ``index``
        (no random choice per step): required to cache the frozen teacher's outputs."""

    @abstractmethod
    def input_paths(self) -> list[Path]:
        """Every file or folder the data are read from ([] for in-memory data fully defined
        by the config); fingerprinted into the keys of cached teachers and features."""

    @abstractmethod
    def dataset(self, split: Split) -> Dataset:
        """The dataset of ``split`` (after ``setup``); ``batch['index']`` indexes it."""

    # ------------------------------------------------------------------ optional hooks
    def collate(self, split: Split) -> Callable | None:
        """Collate function of ``split``'s loader (None: torch's default collation)."""
        return None

    def drop_last(self, num_samples: int) -> bool:
        """Whether the training loader drops a last incomplete batch (default: when the
        split holds more than one batch)."""
        return num_samples > self.batch_size

    def eval_sampler(self, split: Split) -> Sampler[int] | None:
        """The order of the ``val`` / ``test`` loader (None: index order)."""
        return None

    def sample_ids(self, split: Split) -> list[str] | None:
        """A stable name per sample of ``split`` in index order (e.g. file paths), or None
        when the config and the input files already fix the sample order."""
        return None

    # ------------------------------------------------------------------ fingerprints
    def content_fingerprint(self, mode: str = "content") -> str | None:
        """Fingerprint of every file in :meth:`input_paths` (``content``: bytes, ``stat``:
        size + mtime; see :mod:`crossdistill.utils.fingerprint`), computed once per mode;
        None for in-memory data."""
        if mode not in self._content_fingerprints:
            paths = self.input_paths()
            self._content_fingerprints[mode] = fingerprint_paths(paths, mode) if paths else None
        return self._content_fingerprints[mode]

    def items_fingerprint(self, split: Split) -> str | None:
        """Fingerprint of :meth:`sample_ids` of ``split`` (None when it gives none)."""
        ids = self.sample_ids(split)
        return fingerprint_items(ids) if ids else None

    # ------------------------------------------------------------------ loaders
    def loader(self, split: Split, *, ordered: bool = False) -> DataLoader:
        """The loader of ``split``: training shuffles (and drops a last partial batch per
        :meth:`drop_last`) unless ``ordered``; val/test keep the index order (or that of
        :meth:`eval_sampler`)."""
        if split not in SPLITS:
            raise ValueError(f"split={split!r}; valid: {list(SPLITS)}")
        dataset = self.dataset(split)
        train = split == "train"
        shuffle = train and not ordered
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=shuffle,
            sampler=None if train else self.eval_sampler(split),
            drop_last=shuffle and self.drop_last(len(dataset)),
            collate_fn=self.collate(split),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self.loader("train")

    def val_dataloader(self) -> DataLoader:
        return self.loader("val")

    def test_dataloader(self) -> DataLoader:
        return self.loader("test")


def check_side(side: str) -> None:
    """Raise naming the valid sides when ``side`` is neither 'teacher' nor 'student'."""
    if side not in SIDES:
        raise ValueError(f"side must be one of {list(SIDES)}, got {side!r}")
