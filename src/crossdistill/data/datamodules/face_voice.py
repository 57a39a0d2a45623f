"""Face (teacher) -> voice (student) speaker-recognition DataModule.

Reads the VoxCeleb layout of :mod:`crossdistill.data.readers.voxceleb`; with ``root=None`` it
first generates (or reuses) the built-in synthetic data set under ``data_dir``.

Batches (dicts, see docs/CONVENTIONS.md):

* ``teacher_input`` float [B, 3, H, W], normalised with ``mean``/``std``;
* ``student_input`` float [B, T] at ``sample_rate`` (``audio_input=waveform``) or the
  student's filter banks [B, frames, n_mels] (``audio_input=features``: computed once per
  utterance and cached, see :mod:`crossdistill.data.readers.voxceleb.features`); train:
  fixed ``crop_seconds`` crops (in frames: ``samples // hop + 1``); val/test: full
  utterances (cut at ``eval_max_seconds`` if set), zero-padded to the longest in the
  batch, with ``student_lengths`` int64 [B] giving the true lengths in samples or frames
  (train batches carry it too, all equal);
* ``label`` int64 [B]: speaker index *within the split* (val/test speakers are disjoint
  from the training speakers, so val/test labels are not training classes: use them for
  verification / clustering, not with the training classifier);
* ``index`` int64 [B]: index into that split's dataset (``eval_utterances(split)`` maps
  it to the utterance used by the trial lists);
* ``student_snr_db`` / ``student_quality`` float [B]: blind SNR estimate of the (possibly
  degraded) waveform (with ``estimate_snr``); ``teacher_degraded`` / ``student_degraded``
  bool [B] when a degradation config is given.

Verification (:class:`~crossdistill.data.datamodules.verification.VerificationData`):
``trials(split)`` lists ``Trial(label, enroll, test)`` with paths relative to the wav root;
embed every utterance of the split (``val/test_dataloader``) and score the trials at
``trial_index(split)``; ``noisy_eval_input`` gives the noise-robustness inputs.

Built-in data only: ``teacher_pool=True`` makes :meth:`teacher_stage_datamodule` train the
teacher on the generator's face-only identity pool
(:class:`~crossdistill.data.datamodules.face_pool.TeacherPoolDataModule`);
``teacher_input="oracle_factors"`` replaces every ``teacher_input`` by the identity's true
face factors + N(0, ``oracle_noise_std``^2) noise (a vector, for ``teacher=oracle``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from crossdistill.data.audio_features import FbankParams, RaggedFeatures
from crossdistill.data.datamodules.base import SPLITS, PairedDataModule, Side, Split, check_side
from crossdistill.data.datamodules.face_pool import (
    FacePoolDataset,
    OracleFactorDataset,
    TeacherPoolDataModule,
)
from crossdistill.data.datamodules.verification import VerificationData
from crossdistill.data.degrade import DegradationConfig, Degrader, noisy_utterances, to_plain
from crossdistill.data.generators.synth_face_voice import (
    IDENTITIES,
    TEACHER_FACES,
    TEACHER_IDENTITIES,
    TEACHER_POOL_LIST,
    SynthFaceVoiceConfig,
    generate_synth_face_voice,
)
from crossdistill.data.readers.voxceleb.bad_files import BAD_FILE_POLICIES
from crossdistill.data.readers.voxceleb.collate import LengthOrder, pad_collate
from crossdistill.data.readers.voxceleb.dataset import FaceVoiceDataset
from crossdistill.data.readers.voxceleb.features import utterance_features, wav_fingerprint
from crossdistill.data.readers.voxceleb.layout import Utterance, VoxCelebIndex
from crossdistill.data.readers.voxceleb.scan import scan_voxceleb
from crossdistill.data.readers.voxceleb.splits import (
    check_disjoint,
    read_identity_list,
    split_identities,
)
from crossdistill.data.readers.voxceleb.trials import Trial, make_trials, read_trials

log = logging.getLogger(__name__)

AUDIO_INPUTS = ("waveform", "features")
TEACHER_INPUTS = ("image", "oracle_factors")


class FaceVoiceDataModule(PairedDataModule, VerificationData):
    """Paired face/voice data; see the module docstring for the batch format.

    Args:
        root: data root holding ``wav/``; ``None`` -> built-in synthetic data.
        face_root: face-crop root (default ``<root>/faces``).
        data_dir: where synthetic data is generated and cached.
        generator: :class:`SynthFaceVoiceConfig` fields (synthetic data only).
        sample_rate: target rate; other rates are resampled (``resample``) or refused.
        image_size: faces are resized to this square size (synthetic default: native).
        crop_seconds: training crop length; eval_max_seconds: cut eval utterances.
        split_files: ``{train,val,test}`` -> identity-list files (relative to ``root`` or
            absolute); otherwise a seeded identity-disjoint split with
            ``n_val_identities`` / ``n_test_identities`` (counts, or fractions < 1); the
            speakers of a given val / test trial list form that split.
        val_trials / test_trials: trial-list files; if missing, ``n_generated_trials``
            balanced trials are drawn from the split (seeded).
        degradation: :class:`DegradationConfig` mapping (speech / face / splits / seed).
        train_face_frame: face frame of a training sample: ``random`` (default),
            ``per_index`` (fixed per sample; needed by ``teacher.cache_features``) or
            ``first`` (see :class:`FaceVoiceDataset`).
        on_bad_file: ``raise`` or ``skip`` (skipped files are logged and listed in
            ``skipped_files``). validate_files: check every file header at setup.
        audio_input: ``waveform`` or ``features`` (filter banks of every utterance, the
            degraded training inputs and the evaluator's noisy inputs included, computed
            once into a content-keyed memory-mapped cache; the student encoder is wired
            ``input=features`` and checks the settings).
        audio_features: :class:`~crossdistill.data.audio_features.FbankParams` fields
            (``n_mels``, ``n_fft``, ``win_length``, ``hop_length``: the student's) plus
            ``cache_dir`` (default ``<data_dir>/face_voice_features``) and ``cache_check``
            (``content``: hash the wav bytes, default; ``stat``: size + mtime).
        teacher_pool: (built-in data) the teacher stage trains on the face-only pool.
        teacher_input: ``image`` or (built-in data) ``oracle_factors``: true face factors
            + Gaussian noise of std ``oracle_noise_std``.
    """

    def __init__(self, root: str | None = None, face_root: str | None = None,
                 data_dir: str = "data", generator: Mapping[str, Any] | None = None,
                 sample_rate: int = 16000, image_size: int | None = None,
                 crop_seconds: float = 2.0, eval_max_seconds: float | None = None,
                 batch_size: int = 32, eval_batch_size: int | None = None,
                 num_workers: int = 0, pin_memory: bool = False,
                 split_files: Mapping[str, str] | None = None,
                 n_val_identities: int | float = 0.05, n_test_identities: int | float = 0.05,
                 val_trials: str | None = None, test_trials: str | None = None,
                 n_generated_trials: int = 2000,
                 degradation: Mapping[str, Any] | None = None, on_bad_file: str = "raise",
                 resample: bool = True, validate_files: bool = True, estimate_snr: bool = True,
                 mean: Sequence[float] = (0.5, 0.5, 0.5),
                 std: Sequence[float] = (0.5, 0.5, 0.5), seed: int = 0,
                 train_face_frame: str = "random", audio_input: str = "waveform",
                 audio_features: Mapping[str, Any] | None = None, teacher_pool: bool = False,
                 teacher_input: str = "image", oracle_noise_std: float = 0.2):
        super().__init__(batch_size, eval_batch_size, num_workers, pin_memory)
        if teacher_input not in TEACHER_INPUTS:
            raise ValueError(f"data.teacher_input={teacher_input!r}; valid: {list(TEACHER_INPUTS)}")
        if root is not None and teacher_input == "oracle_factors":
            raise ValueError("data.teacher_input=oracle_factors needs the built-in synthetic data "
                             f"(data.root=null): real data (data.root={root!r}) have no true "
                             "face factors")
        if root is not None and teacher_pool:
            raise ValueError("data.teacher_pool=true needs the built-in synthetic data "
                             f"(data.root=null); with data.root={root!r} set it to false")
        if not oracle_noise_std >= 0:
            raise ValueError(f"data.oracle_noise_std={oracle_noise_std!r}: must be >= 0")
        self.teacher_pool = bool(teacher_pool)
        self.teacher_input = teacher_input
        self.oracle_noise_std = float(oracle_noise_std)
        self._teacher_stage: TeacherPoolDataModule | None = None
        if on_bad_file not in BAD_FILE_POLICIES:
            raise ValueError(f"on_bad_file={on_bad_file!r}; valid: {list(BAD_FILE_POLICIES)}")
        self.root = root
        self.face_root = face_root
        self.data_dir = data_dir
        self.synthetic = root is None
        gen = to_plain(generator) or {}
        if not self.synthetic and gen:
            log.info("data.root is set; ignoring the synthetic generator settings")
        self.generator_cfg = (SynthFaceVoiceConfig.from_dict(gen, sample_rate=sample_rate)
                              if self.synthetic else None)
        if self.generator_cfg is not None:
            self.generator_cfg.validate()
            if self.teacher_pool and self.generator_cfg.n_teacher_identities < 2:
                raise ValueError("data.teacher_pool=true needs data.generator."
                                 "n_teacher_identities >= 2 (it is "
                                 f"{self.generator_cfg.n_teacher_identities})")
            if self.generator_cfg.sample_rate != sample_rate:
                raise ValueError(f"generator.sample_rate={self.generator_cfg.sample_rate} "
                                 f"differs from sample_rate={sample_rate}")
        if image_size is None:
            if not self.synthetic:
                raise ValueError("image_size must be set for real data (faces are resized "
                                 "to image_size x image_size)")
            image_size = self.generator_cfg.image_size
        self.sample_rate = int(sample_rate)
        self.image_size = int(image_size)
        self.crop_seconds = float(crop_seconds)
        self.eval_max_seconds = eval_max_seconds
        self.split_files = to_plain(split_files)
        self.n_val_identities = n_val_identities
        self.n_test_identities = n_test_identities
        self.val_trials_file = val_trials
        self.test_trials_file = test_trials
        self.n_generated_trials = n_generated_trials
        self.degradation = DegradationConfig.from_dict(degradation, default_seed=seed)
        self.on_bad_file = on_bad_file
        self.resample = resample
        self.validate_files = validate_files
        self.estimate_snr = estimate_snr
        self.mean, self.std = tuple(to_plain(mean)), tuple(to_plain(std))
        self.seed = seed
        if train_face_frame not in FaceVoiceDataset.FACE_FRAME_MODES:
            raise ValueError(f"train_face_frame={train_face_frame!r}; "
                             f"valid: {list(FaceVoiceDataset.FACE_FRAME_MODES)}")
        self.train_face_frame = train_face_frame
        self._init_audio_input(audio_input, audio_features)
        self._index: VoxCelebIndex | None = None
        self._splits: dict[str, list[str]] = {}
        self._datasets: dict[str, FaceVoiceDataset] = {}
        self._trials: dict[str, list[Trial]] = {}
        self.skipped_files: list[tuple[str, str]] = []

    # ------------------------------------------------------------------ setup
    def prepare_data(self) -> None:
        if self.synthetic:
            generate_synth_face_voice(self.data_dir, self.generator_cfg)

    def setup(self, stage: str | None = None) -> None:
        self._build()

    def _data_root(self) -> Path:
        if self.synthetic:
            return generate_synth_face_voice(self.data_dir, self.generator_cfg)  # cached
        return Path(self.root).expanduser()

    def _build(self) -> None:
        if self._index is not None:
            return
        root = self._data_root()
        index = scan_voxceleb(root, self.face_root, sample_rate=self.sample_rate,
                              resample=self.resample, on_bad_file=self.on_bad_file,
                              validate_files=self.validate_files)
        self.skipped_files = list(index.skipped)
        split_files = self.split_files
        trial_files = {"val": self.val_trials_file, "test": self.test_trials_file}
        if self.synthetic:
            split_files = split_files or {s: root / "splits" / f"{s}.txt" for s in SPLITS}
            for s in ("val", "test"):
                if trial_files[s] is None and (root / f"trials_{s}.txt").is_file():
                    trial_files[s] = root / f"trials_{s}.txt"
        self._splits = self._make_splits(index, root, split_files, trial_files)
        degrader = Degrader(self.degradation, self.sample_rate) if self.degradation.enabled \
            else None
        common = {"sample_rate": self.sample_rate, "image_size": self.image_size,
                  "mean": self.mean, "std": self.std, "resample": self.resample,
                  "degrader": degrader, "estimate_snr": self.estimate_snr}
        self._datasets = {
            "train": FaceVoiceDataset(index, self._splits["train"], split="train", train=True,
                                      crop_seconds=self.crop_seconds,
                                      train_face_frame=self.train_face_frame, **common),
            **{s: FaceVoiceDataset(index, self._splits[s], split=s, train=False,
                                   max_seconds=self.eval_max_seconds, **common)
               for s in ("val", "test")}}
        if not len(self._datasets["train"]):
            raise ValueError(f"no training utterances under {index.wav_root}")
        self._attach_audio_features()
        skipped = {Path(p).relative_to(index.wav_root).as_posix(): r
                   for p, r in index.skipped if _is_below(p, index.wav_root)}
        for s in ("val", "test"):
            ds = self._datasets[s]
            if trial_files[s] is not None:
                trials, dropped = read_trials(_resolve(trial_files[s], root), index.wav_root,
                                              allowed=ds.path_to_index, skipped=skipped)
                self.skipped_files.extend(dropped)
            elif len(ds.identities) >= 2:
                by_id: dict[str, list[str]] = {}
                for u in ds.items:
                    by_id.setdefault(u.identity, []).append(u.path)
                trials = make_trials(by_id, self.n_generated_trials, self.seed + 17 + len(s))
            else:
                trials = []
            self._trials[s] = trials
        if self.skipped_files:
            log.warning("%d file(s)/trial(s) skipped in total (see .skipped_files)",
                        len(self.skipped_files))
        if self.teacher_input == "oracle_factors":
            factors = _face_factors(root / IDENTITIES)
            self._datasets = {
                s: OracleFactorDataset(ds, [u.identity for u in ds.items], factors,
                                       self.oracle_noise_std, self.seed, s)
                for s, ds in self._datasets.items()}
        self._index = index
        log.info("face-voice data %s: %s speakers, %s utterances, %d/%d val/test trials", root,
                 {s: len(v) for s, v in self._splits.items()},
                 {s: len(d) for s, d in self._datasets.items()},
                 len(self._trials["val"]), len(self._trials["test"]))

    def _make_splits(self, index: VoxCelebIndex, root: Path,
                     split_files: Mapping[str, Any] | None,
                     trial_files: Mapping[str, Any]) -> dict[str, list[str]]:
        known = set(index.identities)
        if split_files:
            missing = [s for s in SPLITS if s not in split_files]
            if missing:
                raise KeyError(f"split_files lacks {missing}; give train, val and test files")
            splits = {}
            for s in SPLITS:
                f = _resolve(split_files[s], root)
                ids = read_identity_list(f)
                lost = {Path(p).relative_to(index.wav_root).parts[0]
                        for p, _ in index.skipped if _is_below(p, index.wav_root)}
                unknown = [i for i in ids if i not in known and i not in lost]
                if unknown:
                    raise ValueError(f"{f}: identities {unknown[:10]} have no utterances "
                                     f"under {index.wav_root}")
                splits[s] = sorted(i for i in ids if i in known)
        else:
            fixed: dict[str, set[str] | None] = {}
            for s in ("test", "val"):
                fixed[s] = None
                if trial_files.get(s) is not None:
                    f = _resolve(trial_files[s], root)
                    if not f.is_file():
                        raise FileNotFoundError(f"{s} trial list not found: {f}")
                    fixed[s] = {p.split("/")[0] for line in f.read_text().splitlines()
                                for p in line.split()[1:3]} & known
            splits = split_identities(index.identities, self.n_val_identities,
                                      self.n_test_identities, self.seed, fixed["test"],
                                      fixed["val"])
        check_disjoint(splits)
        return splits

    # ------------------------------------------------------------------ attributes
    @property
    def splits(self) -> dict[str, list[str]]:
        """Identity lists per split (``train`` / ``val`` / ``test``)."""
        self._build()
        return self._splits

    @property
    def datasets(self) -> dict[str, FaceVoiceDataset]:
        self._build()
        return self._datasets

    @property
    def num_classes(self) -> int:
        """Number of training speakers."""
        self._build()
        return len(self._splits["train"])

    @property
    def teacher_input_fixed_per_index(self) -> bool:
        """False with ``train_face_frame=random`` (a face frame drawn per step) and image
        input (oracle inputs are fixed per index)."""
        return self.train_face_frame != "random" or self.teacher_input == "oracle_factors"

    @property
    def oracle_dim(self) -> int:
        """Length of the oracle teacher input (the number of face factors)."""
        return self.generator_cfg.n_face_factors

    def teacher_stage_datamodule(self) -> PairedDataModule:
        """What the teacher trains on: ``self``, or with ``teacher_pool`` the face-only pool
        (train, labelled by pool identity) + this module's val / test speakers."""
        if not self.teacher_pool:
            return self
        if self._teacher_stage is None:
            root = self._data_root()
            pool_ids = (root / TEACHER_POOL_LIST).read_text().split()
            factors = (_face_factors(root / TEACHER_IDENTITIES)
                       if self.teacher_input == "oracle_factors" else None)
            pool = FacePoolDataset(root / TEACHER_FACES, pool_ids, self.image_size, self.mean,
                                   self.std, factors, self.oracle_noise_std, self.seed)
            self._teacher_stage = TeacherPoolDataModule(self, pool)
        return self._teacher_stage

    def encoder_inputs(self, side: Side) -> dict[str, Any]:
        """Face teacher: channels, image size (and flattened size for vector encoders);
        speech student: the sample rate."""
        check_side(side)
        if side == "teacher" and self.teacher_input == "oracle_factors":
            return {"input_dim": self.oracle_dim}
        if side == "teacher":
            size = self.image_size
            return {"in_chans": 3, "image_size": size, "input_dim": 3 * size * size}
        return {"sample_rate": self.sample_rate, **self._student_input_wiring()}

    @property
    def teacher_input_shape(self) -> tuple[int, ...]:
        if self.teacher_input == "oracle_factors":
            return (self.oracle_dim,)
        return (3, self.image_size, self.image_size)

    @property
    def student_input_shape(self) -> tuple[int, ...]:
        """Training crop shape: ``(samples,)`` or ``(frames, n_mels)`` (eval utterances vary
        in length)."""
        samples = int(round(self.crop_seconds * self.sample_rate))
        if self.audio_input == "features":
            return (self.fbank_params.num_frames(samples), self.fbank_params.n_mels)
        return (samples,)

    def dataset(self, split: Split) -> FaceVoiceDataset:
        """Training crops (``train``) or all utterances of the split's speakers, full length
        (``val`` / ``test``), one sample each."""
        self._build()
        return self._datasets[split]

    def collate(self, split: Split) -> Callable:
        return pad_collate

    def eval_sampler(self, split: Split) -> LengthOrder | None:
        """With cached features: val/test utterances in order of length (frames), so the
        evaluator embeds the utterances of one length together (no padding; metrics do not
        depend on the order)."""
        if self.audio_input != "features":
            return None
        return LengthOrder(self.dataset(split).features.lengths)

    def drop_last(self, num_samples: int) -> bool:
        return num_samples >= 2 * self.batch_size

    def sample_ids(self, split: Split) -> list[str]:
        """Utterance paths relative to the wav root, in index order."""
        return self.dataset(split).paths

    # ------------------------------------------------------------------ verification
    def trials(self, split: str) -> list[Trial]:
        self._build()
        return self._trials[split]

    def eval_utterances(self, split: str) -> list[Utterance]:
        return self.dataset(split).items

    def noisy_eval_input(
        self, batch: dict[str, Tensor], snr_db: float, seed: int, kind: str = "white",
        split: str | None = None,
    ) -> Tensor:
        """Each utterance noised over its true length (``student_lengths``; padding stays
        zero), see :func:`crossdistill.data.degrade.noisy_utterances`; with
        ``audio_input=features`` the cached filter banks of those noisy waveforms (of
        ``split``)."""
        if self.audio_input == "features":
            return self._noisy_features(batch, snr_db, seed, kind, split)
        return noisy_utterances(batch["student_input"], batch.get("student_lengths"),
                                batch["index"], snr_db, seed, kind)

    # ------------------------------------------------------------------ cached audio features
    def _init_audio_input(self, audio_input: str, audio_features: Mapping[str, Any] | None
                          ) -> None:
        if audio_input not in AUDIO_INPUTS:
            raise ValueError(f"data.audio_input={audio_input!r}; valid: {list(AUDIO_INPUTS)}")
        self.audio_input = audio_input
        options = dict(to_plain(audio_features) or {})
        self.features_cache_dir = Path(options.pop("cache_dir", None)
                                       or Path(self.data_dir) / "face_voice_features")
        self.features_cache_check = options.pop("cache_check", "content")
        self.fbank_params = FbankParams.from_config(options, "data.audio_features",
                                                    sample_rate=self.sample_rate)
        self._feature_stores: dict[tuple, RaggedFeatures] = {}
        self._wav_fingerprints: dict[str, str] = {}

    def _student_input_wiring(self) -> dict[str, Any]:
        """What the speech encoder must know about the input: filter banks and their
        settings (``input``, ``input_features``) with ``audio_input=features``."""
        if self.audio_input != "features":
            return {}
        return {"input": "features", "input_features": dict(vars(self.fbank_params))}

    def _utterance_features(self, split: str, noise: Mapping[str, Any] | None = None
                            ) -> RaggedFeatures:
        key = (split, tuple(sorted((noise or {}).items())))
        if key not in self._feature_stores:
            dataset = self._datasets[split]
            if split not in self._wav_fingerprints:
                self._wav_fingerprints[split] = wav_fingerprint(dataset,
                                                                self.features_cache_check)
            self._feature_stores[key] = utterance_features(
                dataset, self.fbank_params, self.features_cache_dir,
                self._wav_fingerprints[split], noise)
        return self._feature_stores[key]

    def _attach_audio_features(self) -> None:
        if self.audio_input != "features":
            return
        for split, dataset in self._datasets.items():
            crop_frames = self.fbank_params.num_frames(dataset.crop_samples)
            dataset.attach_features(self._utterance_features(split), crop_frames)

    def _noisy_features(self, batch: dict[str, Tensor], snr_db: float, seed: int, kind: str,
                        split: str | None) -> Tensor:
        if split not in ("val", "test"):
            raise ValueError(f"noisy_eval_input needs split='val' or 'test' with cached "
                             f"features (data.audio_input=features), got split={split!r}")
        store = self._utterance_features(
            split, {"snr_db": float(snr_db), "seed": int(seed), "kind": str(kind)})
        out = torch.zeros_like(batch["student_input"])
        for j, i in enumerate(batch["index"].tolist()):
            frames = torch.from_numpy(np.array(store[int(i)]))
            out[j, : frames.shape[0]] = frames.to(out)
        return out

    @property
    def wav_root(self) -> Path:
        self._build()
        return self._index.wav_root

    def input_paths(self) -> list[Path]:
        """Every file or folder this datamodule reads (audio, faces, split and trial lists),
        fingerprinted into the keys of cached teachers and teacher features."""
        self._build()
        root = self._data_root()
        data = [root] if self.synthetic else [self._index.wav_root, self._index.face_root]
        listed = [*(self.split_files or {}).values(), self.val_trials_file, self.test_trials_file]
        return data + [_resolve(f, root) for f in listed if f is not None]

    def teacher_stage_input_paths(self) -> list[Path]:
        """What the pool teacher stage reads (built-in data): the pool's faces, the paired
        faces, split and trial lists; the identity files only for oracle inputs (they hold
        the voice factors too). Not the audio: the teacher never sees it."""
        root = self._data_root()
        paths = [root / TEACHER_FACES, root / "faces", root / "splits",
                 *(root / f"trials_{s}.txt" for s in ("val", "test"))]
        if self.teacher_input == "oracle_factors":
            paths += [root / IDENTITIES, root / TEACHER_IDENTITIES]
        return paths  # every one is written by the generator; a missing one fails the fingerprint


def _face_factors(path: Path) -> dict[str, list[float]]:
    """Identity -> true face factors, from the generator's identity file."""
    return {d["identity"]: d["face_factors"] for d in json.loads(path.read_text())}


def _resolve(path: str | Path, root: Path) -> Path:
    """Absolute paths as they are; relative ones against ``root`` if that exists."""
    p = Path(path).expanduser()
    if p.is_absolute() or not (root / p).exists():
        return p
    return root / p


def _is_below(path: str, root: Path) -> bool:
    try:
        Path(path).relative_to(root)
    except ValueError:
        return False
    return True
