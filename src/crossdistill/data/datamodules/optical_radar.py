"""Optical -> radar data module: an optical teacher sees RGB images, a radar student the
radar-like view of the same sample.

Sources (``source``), all read through the paired-folder loader
(:mod:`crossdistill.data.readers.paired_folder`):

- ``synth``: built-in vessel scenes (:mod:`crossdistill.data.generators.synth_optical_radar`),
  generated under ``data_dir``; ``radar`` (the modality gap) changes only the radar images.
- ``paired_folder``: a user's dataset ``root/[{train,val,test}/]{optical,radar}/<class>/<id>.*``
  (missing splits carved stratified and seeded by ``split_seed``).
- ``mnist`` / ``image_folder``: real images (MNIST IDX files / ``root/<class>/<id>.*``) as the
  optical side, the radar side rendered from them with the ``radar`` knobs.

Batch: ``teacher_input`` float32 ``[B, 3, H, W]`` (normalised optical), ``student_input``
float32 ``[B, 1, h, w]`` (normalised radar; random horizontal flip in training when
``hflip``), ``label`` int64, ``index`` int64 = position in the split's dataset. Images are
decoded once into memory tensors; per-channel mean / std come from the training split.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from crossdistill.data.datamodules.base import PairedDataModule, Side, Split, check_side
from crossdistill.data.generators.synth_optical_radar import (
    RadarParams,
    SynthSceneParams,
    generate_radar_from_images,
    generate_synth_optical_radar,
    make_params,
)
from crossdistill.data.readers.paired_folder import PairedFolderSplit, read_paired_folder

log = logging.getLogger(__name__)

SOURCES: tuple[str, ...] = ("synth", "paired_folder", "mnist", "image_folder")


class PairedImageDataset(Dataset):
    """In-memory teacher / student image tensors of one split as batch dicts."""

    def __init__(self, teacher: Tensor, student: Tensor, labels: Tensor, hflip: bool) -> None:
        self.teacher, self.student, self.labels = teacher, student, labels
        self.hflip = hflip

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        student = self.student[i]
        if self.hflip and torch.rand(()) < 0.5:
            student = student.flip(-1)
        return {
            "teacher_input": self.teacher[i],
            "student_input": student,
            "label": self.labels[i],
            "index": torch.tensor(i, dtype=torch.long),
        }


def _to_tensor(images: np.ndarray) -> Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)


def _normalise(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    return (x - mean[None, :, None, None]) / std[None, :, None, None]


class OpticalRadarDataModule(PairedDataModule):
    """Paired optical / radar-like images (see module docstring).

    Args:
        source: ``synth`` | ``paired_folder`` | ``mnist`` | ``image_folder``.
        root: dataset folder (all sources but ``synth``).
        data_dir: cache folder of generated data.
        synth: :class:`SynthSceneParams` fields (scenes; ``synth`` only).
        radar: :class:`RadarParams` fields: the modality gap (``synth``, ``mnist``,
            ``image_folder``).
        val_fraction, test_fraction: shares carved (stratified) when a split is missing.
        max_per_class: cap of the training pool per class (``mnist`` / ``image_folder``).
        split_seed: seed of carved splits (fixed: every run sees the same data).
        teacher_image_size, student_image_size: resize on load (None = as stored).
        hflip: random horizontal flip of the student image in training.
    """

    def __init__(
        self,
        source: str = "synth",
        root: str | None = None,
        data_dir: str = "data",
        synth: Mapping[str, Any] | None = None,
        radar: Mapping[str, Any] | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        max_per_class: int | None = None,
        split_seed: int = 0,
        teacher_image_size: int | None = None,
        student_image_size: int | None = None,
        hflip: bool = True,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, num_workers, pin_memory)
        if source not in SOURCES:
            raise ValueError(f"source={source!r} is not valid; use one of {list(SOURCES)}")
        if source != "synth" and not root:
            raise ValueError(f"source={source!r} needs root=<dataset folder> (got {root!r})")
        self.source = source
        self.root = root
        self.data_dir = Path(data_dir)
        self.scene_params = make_params(SynthSceneParams, dict(synth or {}), "data.synth")
        self.radar_params = make_params(RadarParams, dict(radar or {}), "data.radar")
        self.val_fraction = float(val_fraction)
        self.test_fraction = float(test_fraction)
        self.max_per_class = max_per_class
        self.split_seed = int(split_seed)
        self.teacher_image_size = teacher_image_size
        self.student_image_size = student_image_size
        self.hflip = bool(hflip)
        self.folder: Path | None = None
        self.splits: dict[str, PairedFolderSplit] = {}
        self.datasets: dict[str, PairedImageDataset] = {}
        self.class_names: list[str] | None = None

    # ------------------------------------------------------------- attributes
    @property
    def num_classes(self) -> int:
        if self.class_names is not None:
            return len(self.class_names)
        if self.source == "synth":
            return self.scene_params.num_classes
        if self.source == "mnist":
            return 10
        raise RuntimeError(f"num_classes of source={self.source!r} is known after setup()")

    def _shape(self, side: Side) -> tuple[int, ...]:
        if not self.datasets:
            raise RuntimeError("input shapes are known after setup(); call setup('fit') first")
        data = self.datasets["train"]
        return tuple((data.teacher if side == "teacher" else data.student).shape[1:])

    def encoder_inputs(self, side: Side) -> dict[str, Any]:
        """Channels (``in_channels`` / timm ``in_chans``) and flattened size per side."""
        check_side(side)
        shape = self._shape(side)
        return {"in_channels": shape[0], "in_chans": shape[0], "input_dim": int(np.prod(shape))}

    @property
    def teacher_input_fixed_per_index(self) -> bool:
        """The optical image is never augmented."""
        return True

    # ---------------------------------------------------------------- loading
    def _folder(self) -> Path:
        if self.source == "synth":
            return generate_synth_optical_radar(self.data_dir, self.scene_params, self.radar_params)
        if self.source == "paired_folder":
            return Path(self.root).expanduser()
        return generate_radar_from_images(
            self.data_dir,
            self.source,
            self.root,
            self.radar_params,
            val_fraction=self.val_fraction,
            test_fraction=self.test_fraction,
            max_per_class=self.max_per_class,
            seed=self.split_seed,
        )

    def prepare_data(self) -> None:
        """Generate the pairs if needed (single process); nothing is downloaded."""
        if self.source != "paired_folder":
            self._folder()

    def setup(self, stage: str | None = None) -> None:
        """Match the two modalities, decode every image once, normalise (idempotent)."""
        if self.datasets:
            return
        self.folder = self._folder()
        self.splits = read_paired_folder(
            self.folder, self.val_fraction, self.test_fraction, self.split_seed
        )
        self.class_names = list(self.splits["train"].classes)
        tensors = {
            split: (
                _to_tensor(data.load("optical", "RGB", self.teacher_image_size)),
                _to_tensor(data.load("radar", "L", self.student_image_size)),
            )
            for split, data in self.splits.items()
        }
        teacher_train, student_train = tensors["train"]
        stats = [
            (x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3)).clamp_min(1e-6))
            for x in (teacher_train, student_train)
        ]
        for split, (teacher, student) in tensors.items():
            if teacher.shape[1:] != teacher_train.shape[1:] or (
                student.shape[1:] != student_train.shape[1:]
            ):
                raise ValueError(
                    f"{self.folder}: {split} images are {tuple(teacher.shape[1:])} / "
                    f"{tuple(student.shape[1:])}, train {tuple(teacher_train.shape[1:])} / "
                    f"{tuple(student_train.shape[1:])}; set data.teacher_image_size / "
                    "data.student_image_size to resize on load"
                )
            self.datasets[split] = PairedImageDataset(
                _normalise(teacher, *stats[0]),
                _normalise(student, *stats[1]),
                torch.as_tensor(self.splits[split].labels, dtype=torch.long),
                hflip=self.hflip and split == "train",
            )
        log.info(
            "optical_radar[%s]: %d classes, train %d, val %d, test %d, optical %s, radar %s",
            self.source,
            self.num_classes,
            *(len(self.datasets[s]) for s in ("train", "val", "test")),
            tuple(teacher_train.shape[1:]),
            tuple(student_train.shape[1:]),
        )

    def input_paths(self) -> list[Path]:
        """The paired folder read (generated under ``data_dir`` for the built-in sources)."""
        return [self.folder if self.folder is not None else self._folder()]

    def sample_ids(self, split: Split) -> list[str]:
        """``<class>/<id>`` of every sample of ``split`` in index order."""
        if not self.splits:
            raise RuntimeError("call setup() before requesting sample ids")
        return list(self.splits[split].ids)

    def dataset(self, split: Split) -> PairedImageDataset:
        if split not in self.datasets:
            raise RuntimeError("call setup() before requesting datasets or dataloaders")
        return self.datasets[split]
