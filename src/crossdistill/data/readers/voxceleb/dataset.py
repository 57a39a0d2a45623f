"""Paired (face frame, utterance) samples of a set of identities, as batch dicts."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import soundfile as sf
import torch
from torch import Tensor
from torch.utils.data import Dataset

from crossdistill.data.audio_features import RaggedFeatures
from crossdistill.data.degrade import Degrader, estimate_snr_db
from crossdistill.data.readers.voxceleb.bad_files import BadFileError
from crossdistill.data.readers.voxceleb.layout import Utterance, VoxCelebIndex
from crossdistill.data.readers.voxceleb.media import load_face, load_waveform


class FaceVoiceDataset(Dataset):
    """Paired (face frame, utterance) samples of a set of identities.

    ``train=True``: random ``crop_seconds`` crop (short utterances are wrapped around)
    and a face frame of the same video (else identity) chosen by ``train_face_frame``:
    ``random`` (default), ``per_index`` (frame ``index mod n_frames``: fixed per sample,
    so a frozen teacher's output can be cached) or ``first``. ``train=False``: the full
    utterance (cut at ``max_seconds`` if given) and the first frame of the same video.
    Labels are the identity's index within ``identities`` (sorted).

    With ``features`` (:meth:`attach_features`: the filter banks of every
    :meth:`full_waveform`, computed once), ``student_input`` is ``[frames, n_mels]``:
    training crops of ``crop_frames`` frames taken in the frame domain (short utterances
    wrapped around), eval = all frames; the SNR estimate and the degradation flag come from
    the same cache (they were computed on the degraded full utterance).
    """

    FACE_FRAME_MODES = ("random", "per_index", "first")

    def __init__(self, index: VoxCelebIndex, identities: Sequence[str], *, split: str,
                 train: bool, sample_rate: int = 16000, crop_seconds: float = 2.0,
                 max_seconds: float | None = None, image_size: int | None = None,
                 mean: Sequence[float] = (0.5, 0.5, 0.5), std: Sequence[float] = (0.5, 0.5, 0.5),
                 resample: bool = True, degrader: Degrader | None = None,
                 estimate_snr: bool = True, train_face_frame: str = "random"):
        if train_face_frame not in self.FACE_FRAME_MODES:
            raise ValueError(f"train_face_frame={train_face_frame!r}; "
                             f"valid: {list(self.FACE_FRAME_MODES)}")
        self.train_face_frame = train_face_frame
        self.index = index
        self.identities = sorted(identities)
        self.label_of = {ident: i for i, ident in enumerate(self.identities)}
        self.items = [u for u in index.utterances if u.identity in self.label_of]
        self.paths = [u.path for u in self.items]
        self.path_to_index = {p: i for i, p in enumerate(self.paths)}
        self.split, self.train = split, train
        self.sample_rate = sample_rate
        self.crop_samples = int(round(crop_seconds * sample_rate))
        self.max_samples = int(round(max_seconds * sample_rate)) if max_seconds else -1
        self.image_size = image_size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.resample = resample
        self.degrader = degrader
        self.estimate_snr = estimate_snr
        self.features: RaggedFeatures | None = None
        self.crop_frames = 0

    def attach_features(self, features: RaggedFeatures | None, crop_frames: int = 0) -> None:
        """Serve cached filter banks (row ``i`` = utterance ``i``) instead of waveforms;
        ``crop_frames``: training crop length in frames. ``None`` -> waveforms again."""
        if features is not None and len(features) != len(self.items):
            raise ValueError(f"{len(features)} cached utterances for the {len(self.items)} of "
                             f"the {self.split} split")
        self.features, self.crop_frames = features, int(crop_frames)

    def full_waveform(self, i: int) -> tuple[Tensor, float | None]:
        """Utterance ``i`` as a whole (eval: cut at ``max_seconds``) with the split's
        degradation applied (seeded per index), and the SNR it was noised at (or None):
        what the cached features are computed from."""
        u = self.items[i]
        wave = load_waveform(self.index.wav_root / u.path, self.sample_rate,
                             resample=self.resample,
                             num_samples=-1 if self.train else self.max_samples)
        if self.degrader is None:
            return wave, None
        return self.degrader.speech(wave, self.split, i)
    def __len__(self) -> int:
        return len(self.items)

    @property
    def labels(self) -> list[int]:
        return [self.label_of[u.identity] for u in self.items]

    def _num_samples(self, u: Utterance) -> int:
        if u.num_frames < 0:
            path = self.index.wav_root / u.path
            try:
                info = sf.info(str(path))
            except Exception as e:  # noqa: BLE001
                raise BadFileError(f"corrupt or unreadable WAV: {path} "
                                   f"({type(e).__name__}: {e})") from e
            return int(info.frames * self.sample_rate / info.samplerate)
        return int(u.num_frames * self.sample_rate / u.native_rate)

    def _load_audio(self, u: Utterance) -> Tensor:
        path = self.index.wav_root / u.path
        if not self.train:
            return load_waveform(path, self.sample_rate, resample=self.resample,
                                 num_samples=self.max_samples)
        total = self._num_samples(u)
        if total > self.crop_samples:
            start = int(torch.randint(0, total - self.crop_samples + 1, ()).item())
            wave = load_waveform(path, self.sample_rate, resample=self.resample, start=start,
                                 num_samples=self.crop_samples)
        else:
            wave = load_waveform(path, self.sample_rate, resample=self.resample)
        if wave.numel() < self.crop_samples:  # short utterance: wrap around
            reps = math.ceil(self.crop_samples / wave.numel())
            wave = wave.repeat(reps)
        return wave[: self.crop_samples]

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        u = self.items[i]
        frames = self.index.face_frames(u.identity, u.video)
        k = 0
        if self.train and self.train_face_frame == "random":
            k = int(torch.randint(0, len(frames), ()).item())
        elif self.train and self.train_face_frame == "per_index":
            k = i % len(frames)
        face = load_face(frames[k], self.image_size)
        sample = {"label": torch.tensor(self.label_of[u.identity], dtype=torch.int64),
                  "index": torch.tensor(i, dtype=torch.int64)}
        if self.features is not None:
            return self._sample_from_features(sample, face, i)
        wave = self._load_audio(u)
        if self.degrader is not None:
            face, face_kind = self.degrader.face(face, self.split, i)
            wave, snr = self.degrader.speech(wave, self.split, i)
            sample["teacher_degraded"] = torch.tensor(face_kind is not None)
            sample["student_degraded"] = torch.tensor(snr is not None)
        sample["teacher_input"] = (face - self.mean) / self.std
        sample["student_input"] = wave.float()
        if self.estimate_snr:
            snr_est = torch.tensor(estimate_snr_db(wave, self.sample_rate), dtype=torch.float32)
            sample["student_snr_db"] = snr_est
            sample["student_quality"] = snr_est
        return sample


    def _feature_frames(self, i: int) -> Tensor:
        """Cached frames of utterance ``i``: all (eval) or a random training crop."""
        total = self.features.length(i)
        if not self.train:
            return torch.from_numpy(np.array(self.features[i]))
        n = self.crop_frames
        if total > n:
            start = int(torch.randint(0, total - n + 1, ()).item())
            return torch.from_numpy(np.array(self.features[i][start : start + n]))
        frames = torch.from_numpy(np.array(self.features[i]))
        return frames.repeat(math.ceil(n / total), 1)[:n]  # short utterance: wrap around

    def _sample_from_features(self, sample: dict[str, Tensor], face: Tensor,
                              i: int) -> dict[str, Tensor]:
        columns = self.features.columns
        if self.degrader is not None:
            face, face_kind = self.degrader.face(face, self.split, i)
            sample["teacher_degraded"] = torch.tensor(face_kind is not None)
            sample["student_degraded"] = torch.tensor(bool(columns["degraded"][i]))
        sample["teacher_input"] = (face - self.mean) / self.std
        sample["student_input"] = self._feature_frames(i)
        if self.estimate_snr:
            snr_est = torch.tensor(float(columns["snr_db"][i]), dtype=torch.float32)
            sample["student_snr_db"] = snr_est
            sample["student_quality"] = snr_est
        return sample
