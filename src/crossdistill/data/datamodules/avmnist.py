"""AV-MNIST-style data: a spoken digit (FSDD recording) paired with a handwritten digit
(MNIST image) of the same class; which modality the teacher and the student see is a knob.

- Recordings (:mod:`crossdistill.data.readers.fsdd`) become fixed-size log-Mel / Fbank
  features, computed once and cached in one memory-mapped file keyed by content
  (:mod:`crossdistill.data.audio_features`), optionally with noise at ``features.snr_db``.
- Images (:mod:`crossdistill.data.readers.mnist_idx`, every IDX prefix present or
  ``mnist_splits``) are carved into train / val / test pools (stratified, ``split_seed``)
  and lose ``image_energy_removed`` of their energy by PCA fitted on the training pool
  (:mod:`crossdistill.data.pca`).
- Recording splits (``split``): ``customary`` (recording index < ``customary_test_indices``
  of every speaker and digit = test; val carved from the rest, stratified by speaker and
  digit, ``split_seed``) or ``speaker_disjoint`` (every recording of ``test_speakers`` =
  test; val carved from the other speakers).
- Pairing (``pairing``): each recording of a split gets an image of the same digit from that
  split's pool: ``fixed`` (seeded by ``pairing_seed``; a digit's images are used in a
  seeded random order, cycling when a pool is smaller than the recordings) or
  ``per_epoch`` (training: a new image from the pool at every load, from the run's seeded
  global RNG; val / test keep the fixed pairing).

Batch: ``teacher_input`` / ``student_input`` by modality: ``image`` float32 ``[1, 28, 28]``;
``audio`` float32 ``[1, n_mels, frames]`` (``audio_layout: spectrogram``, for 2-D CNNs) or
``[n_mels, frames]`` (``frames``, for 1-D CNNs); ``fusion`` float32
``[28 * 28 + n_mels * frames]`` = the flattened image followed by the flattened audio
(:class:`crossdistill.models.fusion.FusionEncoder` splits it; one tensor keeps every part
of the framework, caches and Algorithm 1 included, unchanged). ``label`` int64 digit,
``index`` int64 = position of the recording in the split's dataset. Inputs are normalised
with training statistics (audio: per Mel band; images: one mean / std).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from crossdistill.data.audio_features import FeatureParams, cached_features
from crossdistill.data.datamodules.base import PairedDataModule, Side, Split, check_side
from crossdistill.data.generators.synth_optical_radar import carve_splits
from crossdistill.data.pca import PcaEnergyRemover
from crossdistill.data.readers.captions import stratified_split
from crossdistill.data.readers.fsdd import (
    FsddRecording,
    read_recordings,
    recordings_dir,
    scan_fsdd,
)
from crossdistill.data.readers.mnist_idx import (
    PREFIXES,
    available_mnist_splits,
    find_idx_file,
    read_mnist_split,
)

log = logging.getLogger(__name__)

TEACHER_MODALITIES = ("image", "audio", "fusion")
STUDENT_MODALITIES = ("image", "audio")
SPLIT_PROTOCOLS = ("customary", "speaker_disjoint")
PAIRINGS = ("fixed", "per_epoch")
AUDIO_LAYOUTS = ("spectrogram", "frames")
SPLIT_ORDER: tuple[Split, ...] = ("train", "val", "test")


def _choice(value: str, valid: Sequence[str], key: str) -> str:
    if value not in valid:
        raise ValueError(f"data.{key}={value!r} is not valid; use one of {list(valid)}")
    return value


def split_recordings(
    recordings: Sequence[FsddRecording],
    protocol: str,
    test_speakers: Sequence[str],
    customary_test_indices: int,
    val_fraction: float,
    seed: int,
) -> dict[str, np.ndarray]:
    """Positions in ``recordings`` of train / val / test (see module docstring)."""
    speakers = np.array([r.speaker for r in recordings])
    known = sorted({r.speaker for r in recordings})
    if protocol == "customary":
        if test_speakers:
            raise ValueError(
                f"data.test_speakers={list(test_speakers)} is used by split=speaker_disjoint "
                "only; set data.split=speaker_disjoint or data.test_speakers=[]"
            )
        is_test = np.array([r.index < customary_test_indices for r in recordings])
    else:
        if not test_speakers or set(test_speakers) - set(known):
            raise ValueError(
                f"split=speaker_disjoint needs data.test_speakers from {known}, got "
                f"{list(test_speakers)}"
            )
        is_test = np.isin(speakers, list(test_speakers))
    test, rest = np.flatnonzero(is_test), np.flatnonzero(~is_test)
    if len(test) == 0 or len(rest) == 0:
        raise ValueError(f"split={protocol}: {len(test)} test and {len(rest)} other recordings")
    strata = np.array([f"{recordings[i].speaker}/{recordings[i].digit}" for i in rest])
    _, codes = np.unique(strata, return_inverse=True)
    keep, val = stratified_split(codes, val_fraction, seed)
    return {"train": rest[keep], "val": rest[val], "test": test}


def fixed_pairing(
    digits: np.ndarray, pool_labels: np.ndarray, seed: Sequence[int], split: str
) -> np.ndarray:
    """For each recording (digit ``digits[j]``) a position in the image pool of that digit:
    each digit's pool in a seeded random order, cycled."""
    chosen = np.zeros(len(digits), dtype=np.int64)
    for digit in np.unique(digits):
        pool = np.flatnonzero(pool_labels == digit)
        if len(pool) == 0:
            raise ValueError(f"{split}: no image of digit {digit} in the {split} image pool")
        rng = np.random.default_rng([*seed, int(digit)])
        order = rng.permutation(pool)
        where = np.flatnonzero(digits == digit)
        chosen[where] = order[np.arange(len(where)) % len(order)]
    return chosen


class AvMnistDataset(Dataset):
    """One split: recordings (in index order) paired with images of the split's pool."""

    def __init__(
        self,
        audio: Tensor,
        images: Tensor,
        labels: Tensor,
        paired_image: Tensor,
        pools: list[Tensor] | None,
        teacher_modality: str,
        student_modality: str,
    ) -> None:
        self.audio, self.images, self.labels = audio, images, labels
        self.paired_image = paired_image
        self.pools = pools  # per digit: image positions; set = re-draw at every load
        self.teacher_modality, self.student_modality = teacher_modality, student_modality

    def __len__(self) -> int:
        return len(self.labels)

    def image_position(self, i: int) -> int:
        if self.pools is None:
            return int(self.paired_image[i])
        pool = self.pools[int(self.labels[i])]
        return int(pool[torch.randint(len(pool), ())])

    def _input(self, modality: str, i: int, image: int) -> Tensor:
        if modality == "image":
            return self.images[image]
        if modality == "audio":
            return self.audio[i]
        return torch.cat((self.images[image].reshape(-1), self.audio[i].reshape(-1)))

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        image = self.image_position(i)
        return {
            "teacher_input": self._input(self.teacher_modality, i, image),
            "student_input": self._input(self.student_modality, i, image),
            "label": self.labels[i],
            "index": torch.tensor(i, dtype=torch.long),
        }


class AvMnistDataModule(PairedDataModule):
    """Spoken + handwritten digits (see module docstring).

    Args:
        fsdd_root: FSDD folder (``recordings/{digit}_{speaker}_{index}.wav``).
        mnist_root: folder of ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``.
        data_dir: cache root (features under ``<data_dir>/avmnist/features``).
        teacher_modality: ``image`` | ``audio`` | ``fusion``; student_modality: ``audio`` |
            ``image``.
        image_energy_removed: fraction of the image energy removed by PCA (0.75: CentralNet).
        features: :class:`FeatureParams` fields (kind, n_mels, n_fft, hop_length,
            clip_seconds, snr_db, noise_seed, sample_rate).
        audio_layout: ``spectrogram`` ``[1, n_mels, frames]`` | ``frames`` ``[n_mels, frames]``.
        split: ``customary`` | ``speaker_disjoint``; test_speakers: held-out speakers.
        customary_test_indices: recordings with a smaller index are the customary test set.
        val_fraction: share of the non-test recordings used for validation.
        image_val_fraction, image_test_fraction: shares of the MNIST images in each pool.
        mnist_splits: IDX prefixes to read (``train`` / ``t10k``; None: all present).
        speakers: valid speaker names (None: ``speakers.json`` when present).
        split_seed: seed of every carved split; pairing: ``fixed`` | ``per_epoch``;
        pairing_seed: seed of the fixed pairing.
    """

    def __init__(
        self,
        fsdd_root: str,
        mnist_root: str,
        data_dir: str = "data",
        teacher_modality: str = "image",
        student_modality: str = "audio",
        image_energy_removed: float = 0.75,
        features: Mapping[str, Any] | None = None,
        audio_layout: str = "frames",
        split: str = "customary",
        test_speakers: Sequence[str] | None = None,
        customary_test_indices: int = 5,
        val_fraction: float = 0.1,
        image_val_fraction: float = 0.1,
        image_test_fraction: float = 0.2,
        mnist_splits: Sequence[str] | None = None,
        speakers: Sequence[str] | None = None,
        split_seed: int = 0,
        pairing: str = "fixed",
        pairing_seed: int = 0,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, num_workers, pin_memory)
        self.fsdd_root = Path(fsdd_root).expanduser()
        self.mnist_root = Path(mnist_root).expanduser()
        self.data_dir = Path(data_dir)
        self.teacher_modality = _choice(teacher_modality, TEACHER_MODALITIES, "teacher_modality")
        self.student_modality = _choice(student_modality, STUDENT_MODALITIES, "student_modality")
        self.image_energy_removed = float(image_energy_removed)
        self.feature_params = FeatureParams.from_config(features, "data.features")
        self.audio_layout = _choice(audio_layout, AUDIO_LAYOUTS, "audio_layout")
        self.split = _choice(split, SPLIT_PROTOCOLS, "split")
        self.test_speakers = list(test_speakers or [])
        self.customary_test_indices = int(customary_test_indices)
        self.val_fraction = float(val_fraction)
        self.image_val_fraction = float(image_val_fraction)
        self.image_test_fraction = float(image_test_fraction)
        if mnist_splits is not None:
            for prefix in mnist_splits:
                _choice(prefix, PREFIXES, "mnist_splits[]")
        self.mnist_splits = list(mnist_splits) if mnist_splits is not None else None
        self.speakers = list(speakers) if speakers is not None else None
        self.split_seed = int(split_seed)
        self.pairing = _choice(pairing, PAIRINGS, "pairing")
        self.pairing_seed = int(pairing_seed)
        self.recordings: list[FsddRecording] = []
        self.split_recordings: dict[str, np.ndarray] = {}
        self.split_images: dict[str, np.ndarray] = {}
        self.datasets: dict[str, AvMnistDataset] = {}
        self.pca: PcaEnergyRemover | None = None

    # ------------------------------------------------------------- attributes
    @property
    def num_classes(self) -> int:
        return 10

    def _shape(self, modality: str) -> tuple[int, ...]:
        if not self.datasets:
            raise RuntimeError("input shapes are known after setup(); call setup('fit') first")
        data = self.datasets["train"]
        return tuple((data.images if modality == "image" else data.audio).shape[1:])

    def encoder_inputs(self, side: Side) -> dict[str, Any]:
        """Image / audio: channels (``in_channels``, timm ``in_chans``) and flattened size;
        fusion: ``image_shape`` and ``audio_shape`` (the parts of the packed input)."""
        check_side(side)
        modality = self.teacher_modality if side == "teacher" else self.student_modality
        if modality == "fusion":
            image, audio = self._shape("image"), self._shape("audio")
            size = int(np.prod(image) + np.prod(audio))
            return {"image_shape": list(image), "audio_shape": list(audio), "input_dim": size}
        shape = self._shape(modality)
        return {"in_channels": shape[0], "in_chans": shape[0], "input_dim": int(np.prod(shape))}

    @property
    def teacher_input_fixed_per_index(self) -> bool:
        """False only when the teacher sees the image and images are re-drawn per epoch."""
        return not (self.pairing == "per_epoch" and self.teacher_modality != "audio")

    # ---------------------------------------------------------------- loading
    def _mnist_prefixes(self) -> list[str]:
        prefixes = self.mnist_splits or available_mnist_splits(self.mnist_root)
        if not prefixes:
            raise FileNotFoundError(
                f"MNIST folder {self.mnist_root}: no {{train,t10k}}-images-idx3-ubyte[.gz] with "
                "its labels-idx1-ubyte[.gz]; point data.mnist_root at the IDX files "
                "(docs/avmnist.md)"
            )
        return prefixes

    def _load_images(self) -> tuple[np.ndarray, np.ndarray]:
        parts = [read_mnist_split(self.mnist_root, p) for p in self._mnist_prefixes()]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _load_audio(self) -> np.ndarray:
        files = [r.path for r in self.recordings]
        return cached_features(
            files,
            self.feature_params,
            self.data_dir / "avmnist" / "features",
            lambda _files: read_recordings(self.recordings, self.feature_params.sample_rate),
        )

    def setup(self, stage: str | None = None) -> None:
        """Read, split, transform and pair everything once (idempotent)."""
        if self.datasets:
            return
        self.recordings = scan_fsdd(self.fsdd_root, self.speakers)
        features = self._load_audio()
        self.split_recordings = split_recordings(
            self.recordings,
            self.split,
            self.test_speakers,
            self.customary_test_indices,
            self.val_fraction,
            self.split_seed,
        )
        images, image_labels = self._load_images()
        self.split_images = carve_splits(
            image_labels, None, self.image_val_fraction, self.image_test_fraction, None,
            self.split_seed,
        )  # fmt: skip
        self.pca = PcaEnergyRemover(self.image_energy_removed).fit(
            images[self.split_images["train"]]
        )
        digits = np.array([r.digit for r in self.recordings], dtype=np.int64)
        audio = torch.from_numpy(np.asarray(features[self.split_recordings["train"]]))
        audio_mean = audio.mean(dim=(0, 2), keepdim=True)[0]
        audio_std = audio.std(dim=(0, 2), keepdim=True)[0].clamp_min(1e-6)
        image_stats: tuple[float, float] | None = None
        for number, split in enumerate(SPLIT_ORDER):
            rows = self.split_recordings[split]
            pool = self.split_images[split]
            pool_images = torch.from_numpy(self.pca.transform(images[pool]))[:, None] / 255.0
            if image_stats is None:  # the training pool comes first
                image_stats = (float(pool_images.mean()), float(pool_images.std()) or 1.0)
            split_audio = (torch.from_numpy(np.asarray(features[rows])) - audio_mean) / audio_std
            if self.audio_layout == "spectrogram":
                split_audio = split_audio[:, None]
            pool_labels = image_labels[pool]
            paired = fixed_pairing(digits[rows], pool_labels, (self.pairing_seed, number), split)
            redraw = self.pairing == "per_epoch" and split == "train"
            pools = [torch.from_numpy(np.flatnonzero(pool_labels == d)) for d in range(10)]
            self.datasets[split] = AvMnistDataset(
                audio=split_audio.contiguous(),
                images=(pool_images - image_stats[0]) / image_stats[1],
                labels=torch.from_numpy(digits[rows]),
                paired_image=torch.from_numpy(paired),
                pools=pools if redraw else None,
                teacher_modality=self.teacher_modality,
                student_modality=self.student_modality,
            )
        log.info(
            "avmnist: %s -> %s, split=%s, recordings train %d / val %d / test %d, images "
            "%d / %d / %d, PCA keeps %d components (%.1f %% of the image energy removed), "
            "audio %s",
            self.teacher_modality,
            self.student_modality,
            self.split,
            *(len(self.split_recordings[s]) for s in SPLIT_ORDER),
            *(len(self.split_images[s]) for s in SPLIT_ORDER),
            self.pca.num_components,
            100 * self.pca.removed_fraction,
            tuple(self.datasets["train"].audio.shape[1:]),
        )

    def input_paths(self) -> list[Path]:
        """The recordings folder (and speakers.json) and the IDX files read."""
        folder = recordings_dir(self.fsdd_root)
        paths = [folder]
        if (folder.parent / "speakers.json").is_file():
            paths.append(folder.parent / "speakers.json")
        for prefix in self._mnist_prefixes():
            for kind in ("images-idx3", "labels-idx1"):
                found = find_idx_file(self.mnist_root, f"{prefix}-{kind}-ubyte")
                if found is not None:
                    paths.append(found)
        return paths

    def sample_ids(self, split: Split) -> list[str]:
        """``<recording>`` (per-epoch training pairs) or ``<recording>+mnist<pool position>``
        of every sample of ``split`` in index order."""
        if not self.datasets:
            raise RuntimeError("call setup() before requesting sample ids")
        data = self.datasets[split]
        names = [self.recordings[i].name for i in self.split_recordings[split]]
        if data.pools is not None:
            return names
        pool = self.split_images[split]
        return [f"{n}+mnist{pool[int(j)]}" for n, j in zip(names, data.paired_image, strict=True)]

    def dataset(self, split: Split) -> AvMnistDataset:
        if split not in self.datasets:
            raise RuntimeError("call setup() before requesting datasets or dataloaders")
        return self.datasets[split]
