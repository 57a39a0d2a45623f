"""The face teacher's own training data: a face-only identity pool, and oracle inputs.

* :class:`FacePoolDataset`: faces of the built-in teacher pool (``teacher_faces/<id>/*.png``,
  no audio), labelled by pool identity; or, with ``factors``, the identity's true face
  factors + noise instead of the image (the oracle teacher input).
* :class:`OracleFactorDataset`: wraps a paired dataset and replaces its ``teacher_input``
  by the true face factors of the sample's identity + Gaussian noise.
* :class:`TeacherPoolDataModule`: the teacher stage's datamodule (what
  ``FaceVoiceDataModule.teacher_stage_datamodule()`` returns with ``teacher_pool=true``):
  train = the pool, val / test = the paired data's val / test samples with their trial
  lists, so the teacher's face-verification metrics are those of the paired speakers.

Oracle noise is fixed per (seed, split, sample index): the same in every epoch and run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from crossdistill.data.datamodules.base import PairedDataModule, Side, Split
from crossdistill.data.datamodules.verification import VerificationData
from crossdistill.data.readers.voxceleb.layout import Utterance
from crossdistill.data.readers.voxceleb.media import load_face
from crossdistill.data.readers.voxceleb.trials import Trial

SPLIT_CODES = {"train": 0, "val": 1, "test": 2, "pool": 3}


def oracle_input(
    factors: Sequence[float], noise_std: float, seed: int, split: str, index: int
) -> Tensor:
    """``factors`` + N(0, noise_std^2) noise fixed by (seed, split, index), float32."""
    rng = np.random.default_rng([seed, SPLIT_CODES[split], index])
    x = np.asarray(factors, dtype=np.float64)
    return torch.from_numpy(x + noise_std * rng.standard_normal(x.shape)).float()


class FacePoolDataset(Dataset):
    """Face frames of the teacher pool: ``{teacher_input, label, index}`` per frame, label =
    the identity's position in ``identities`` (sorted). With ``factors`` (identity -> true
    face factors) the input is the oracle vector instead of the image."""

    def __init__(
        self,
        face_dir: str | Path,
        identities: Sequence[str],
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        factors: Mapping[str, Sequence[float]] | None = None,
        noise_std: float = 0.0,
        seed: int = 0,
    ) -> None:
        face_dir = Path(face_dir)
        self.identities = sorted(identities)
        self.label_of = {ident: i for i, ident in enumerate(self.identities)}
        self.frames: list[tuple[str, str]] = []
        for ident in self.identities:
            files = sorted((face_dir / ident).glob("*.png"))
            if not files:
                raise FileNotFoundError(
                    f"teacher pool identity {ident}: no faces under {face_dir / ident}"
                )
            self.frames += [(ident, str(f)) for f in files]
        self.face_dir = face_dir
        self.image_size = image_size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.factors = factors
        self.noise_std = noise_std
        self.seed = seed

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def paths(self) -> list[str]:
        """Frame paths relative to the pool folder, in index order."""
        return [str(Path(p).relative_to(self.face_dir)) for _, p in self.frames]

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        ident, path = self.frames[i]
        if self.factors is not None:
            x = oracle_input(self.factors[ident], self.noise_std, self.seed, "pool", i)
        else:
            x = (load_face(path, self.image_size) - self.mean) / self.std
        return {
            "teacher_input": x,
            "label": torch.tensor(self.label_of[ident]),
            "index": torch.tensor(i, dtype=torch.int64),
        }


class OracleFactorDataset(Dataset):
    """A paired dataset whose ``teacher_input`` is replaced by the true face factors of the
    sample's identity (``identity_of[i]``) + noise fixed by (seed, split, i)."""

    def __init__(
        self,
        base: Dataset,
        identity_of: Sequence[str],
        factors: Mapping[str, Sequence[float]],
        noise_std: float,
        seed: int,
        split: str,
    ) -> None:
        self.base = base
        self.identity_of = list(identity_of)
        self.factors = factors
        self.noise_std = noise_std
        self.seed = seed
        self.split = split

    def __len__(self) -> int:
        return len(self.base)

    def __getattr__(self, name: str) -> Any:  # items, paths, identities of the paired set
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        sample = self.base[i]
        sample["teacher_input"] = oracle_input(
            self.factors[self.identity_of[i]], self.noise_std, self.seed, self.split, i
        )
        return sample


class TeacherPoolDataModule(PairedDataModule, VerificationData):
    """Teacher stage: train on ``pool`` (classes = pool identities), validate and test on
    ``paired``'s val / test splits with its trials (face verification of the speakers)."""

    def __init__(self, paired: Any, pool: FacePoolDataset) -> None:
        super().__init__(
            paired.batch_size, paired.eval_batch_size, paired.num_workers, paired.pin_memory
        )
        self.paired = paired
        self.pool = pool

    @property
    def num_classes(self) -> int:
        return len(self.pool.identities)

    def encoder_inputs(self, side: Side) -> dict[str, Any]:
        return self.paired.encoder_inputs(side)

    @property
    def teacher_input_fixed_per_index(self) -> bool:
        return True

    # the generator's parameters act on the teacher stage only through the files of
    # input_paths: the teacher key leaves them out, so e.g. every gamma shares one teacher
    config_in_files = ("generator",)

    def input_paths(self) -> list[Path]:
        """The files the teacher stage reads: the pool's faces, the paired faces, the split
        and trial lists (the paired speakers' audio, and with it gamma, is not among them)."""
        return self.paired.teacher_stage_input_paths()

    def dataset(self, split: Split) -> Dataset:
        return self.pool if split == "train" else self.paired.dataset(split)

    def collate(self, split: Split) -> Callable | None:
        return None if split == "train" else self.paired.collate(split)

    def sample_ids(self, split: Split) -> list[str] | None:
        return self.pool.paths if split == "train" else self.paired.sample_ids(split)

    # verification: the paired val / test speakers
    def trials(self, split: str) -> list[Trial]:
        return self.paired.trials(split)

    def eval_utterances(self, split: str) -> list[Utterance]:
        return self.paired.eval_utterances(split)

    def noisy_eval_input(
        self, batch: dict[str, Tensor], snr_db: float, seed: int, kind: str = "white"
    ) -> Tensor:
        return self.paired.noisy_eval_input(batch, snr_db, seed, kind)
