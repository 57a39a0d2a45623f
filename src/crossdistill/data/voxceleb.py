"""VoxCeleb-style face + voice loader.

On-disk layout (the built-in synthetic generator writes exactly this)::

    <root>/wav/<identity>/<video>/<utterance>.wav        # e.g. id10001/1zcIwhmdeo4/00001.wav
    <face_root>/<identity>/<video>/<frame>.jpg|png       # face crops, default <root>/faces
    trial list: "<label 1|0> <enroll> <test>" per line, paths relative to <root>/wav
                (like VoxCeleb1's veri_test2.txt)
    identity lists (optional split files): one identity per line

A training sample pairs one utterance with a face frame of the same identity (same video
when that video has frames, else any video of the identity); its label is the speaker's
index within the split.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset, default_collate

from crossdistill.data.degrade import Degrader, estimate_snr_db

log = logging.getLogger(__name__)

AUDIO_EXTS = (".wav",)
IMAGE_EXTS = (".jpg", ".jpeg", ".png")
WAV_LAYOUT = ("<root>/wav/<identity>/<video>/<utterance>.wav "
              "(e.g. <root>/wav/id10001/1zcIwhmdeo4/00001.wav)")
FACE_LAYOUT = "<face_root>/<identity>/<video>/<frame>.jpg|png (default face_root: <root>/faces)"
TRIAL_FORMAT = ("'<label 1|0> <enroll> <test>' per line with paths relative to the wav root, "
                "e.g. '1 id10270/x6uYqmx31kE/00001.wav id10270/8jEAjG6SegY/00008.wav'")
BAD_FILE_POLICIES = ("raise", "skip")


class BadFileError(RuntimeError):
    """A corrupt, empty or unreadable data file."""


class TrialListError(ValueError):
    """A malformed trial list or one naming an unusable utterance."""


class Trial(NamedTuple):
    label: int  # 1 = same speaker, 0 = different
    enroll: str  # path relative to the wav root
    test: str


@dataclass(frozen=True)
class Utterance:
    path: str  # relative to the wav root, "/"-separated
    identity: str
    video: str
    num_frames: int = -1  # at the native rate; -1 = not read yet
    native_rate: int = -1


class BadFileLog:
    """Applies the ``on_bad_file`` policy: raise naming the file, or record and go on."""

    def __init__(self, policy: str = "raise"):
        if policy not in BAD_FILE_POLICIES:
            raise ValueError(f"data.on_bad_file={policy!r}; valid: {list(BAD_FILE_POLICIES)}")
        self.policy = policy
        self.skipped: list[tuple[str, str]] = []  # (path, reason)

    def report(self, path: str | Path, reason: str) -> None:
        if self.policy == "raise":
            raise BadFileError(f"{reason}: {path} (set data.on_bad_file=skip to skip and "
                               "count such files instead)")
        self.skipped.append((str(path), reason))

    def log_summary(self, what: str = "data") -> None:
        if self.skipped:
            lines = "\n".join(f"  {p}: {r}" for p, r in self.skipped)
            log.warning("skipped %d bad file(s) in %s (data.on_bad_file=skip):\n%s",
                        len(self.skipped), what, lines)


@dataclass
class VoxCelebIndex:
    """The scanned, validated data: utterances plus face frames per identity/video."""

    wav_root: Path
    face_root: Path
    utterances: list[Utterance]
    faces: dict[str, dict[str, list[str]]]  # identity -> video -> absolute frame paths
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def identities(self) -> list[str]:
        return sorted({u.identity for u in self.utterances})

    def by_identity(self) -> dict[str, list[Utterance]]:
        out: dict[str, list[Utterance]] = {}
        for u in self.utterances:
            out.setdefault(u.identity, []).append(u)
        return out

    def face_frames(self, identity: str, video: str) -> list[str]:
        """Frames of the same video when it has any, else all frames of the identity."""
        vids = self.faces.get(identity, {})
        if vids.get(video):
            return vids[video]
        return [p for v in sorted(vids) for p in vids[v]]


# --------------------------------------------------------------------------- scanning
def resolve_wav_root(root: str | Path) -> Path:
    """``<root>/wav`` (or ``root`` itself if it directly holds identity folders)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"VoxCeleb root not found: {root} (expected layout {WAV_LAYOUT})")
    if (root / "wav").is_dir():
        return root / "wav"
    if _has_identity_layout(root):
        return root
    raise FileNotFoundError(f"no audio folder at {root / 'wav'} (expected layout {WAV_LAYOUT})")


def resolve_face_root(root: str | Path, face_root: str | Path | None) -> Path:
    path = Path(face_root).expanduser() if face_root else Path(root).expanduser() / "faces"
    if not path.is_dir():
        raise FileNotFoundError(f"face root not found: {path} (expected layout {FACE_LAYOUT})")
    return path


def _has_identity_layout(root: Path) -> bool:
    """True if ``root/<identity>/<video>/*.wav`` exists."""
    return any(_files(video, AUDIO_EXTS) for ident in _subdirs(root) for video in _subdirs(ident))


def _subdirs(path: Path) -> list[Path]:
    return sorted(e for e in (Path(d.path) for d in os.scandir(path))
                  if e.is_dir() and not e.name.startswith("."))


def _files(path: Path, exts: tuple[str, ...]) -> list[Path]:
    return sorted(Path(d.path) for d in os.scandir(path)
                  if d.is_file() and not d.name.startswith(".") and d.name.lower().endswith(exts))


def scan_voxceleb(root: str | Path, face_root: str | Path | None = None, *,
                  sample_rate: int = 16000, resample: bool = True, on_bad_file: str = "raise",
                  validate_files: bool = True) -> VoxCelebIndex:
    """Find all utterances and face frames; check them per ``on_bad_file``.

    With ``validate_files`` every WAV header is read (corrupt / empty files, sample rate)
    and every image is opened and verified; otherwise problems surface when a file is
    loaded (always as an error naming the file). A WAV at another sample rate is accepted
    only with ``resample=True``. Identities without any usable face frame are bad data too.
    """
    bad = BadFileLog(on_bad_file)
    wav_root = resolve_wav_root(root)
    face_dir = resolve_face_root(root, face_root)

    utts: list[Utterance] = []
    other_rate = 0
    for ident in _subdirs(wav_root):
        for video in _subdirs(ident):
            for f in _files(video, AUDIO_EXTS):
                rel = f.relative_to(wav_root).as_posix()
                n, sr = -1, -1
                if validate_files:
                    try:
                        info = sf.info(str(f))
                        n, sr = int(info.frames), int(info.samplerate)
                    except Exception as e:  # noqa: BLE001 - libsndfile raises various types
                        bad.report(f, f"corrupt or unreadable WAV ({type(e).__name__}: {e})")
                        continue
                    if n <= 0:
                        bad.report(f, "empty WAV (0 samples)")
                        continue
                    if sr != sample_rate:
                        _check_rate(f, sr, sample_rate, resample)
                        other_rate += 1
                utts.append(Utterance(rel, ident.name, video.name, n, sr))
    if not utts and not bad.skipped:
        raise FileNotFoundError(f"no .wav files under {wav_root} (expected layout {WAV_LAYOUT})")
    if other_rate:
        log.info("%d WAV file(s) are not at %d Hz and will be resampled", other_rate, sample_rate)

    faces: dict[str, dict[str, list[str]]] = {}
    wanted = {u.identity for u in utts}
    for ident in _subdirs(face_dir):
        if ident.name not in wanted:
            continue
        for video in _subdirs(ident):
            frames = []
            for f in _files(video, IMAGE_EXTS):
                if validate_files:
                    reason = _image_problem(f)
                    if reason:
                        bad.report(f, reason)
                        continue
                frames.append(str(f))
            if frames:
                faces.setdefault(ident.name, {})[video.name] = frames

    no_face = set(wanted - set(faces))
    for ident in sorted(no_face):
        bad.report(face_dir / ident, "identity has utterances but no usable face frame "
                   f"(expected {FACE_LAYOUT}); its utterances are skipped")
    if no_face:
        bad.skipped.extend((str(wav_root / u.path), "identity has no face frames")
                           for u in utts if u.identity in no_face)
        utts = [u for u in utts if u.identity not in no_face]
    bad.log_summary(str(wav_root.parent))
    return VoxCelebIndex(wav_root, face_dir, utts, faces, bad.skipped)


def _check_rate(path: Path, sr: int, sample_rate: int, resample: bool) -> None:
    if not resample:
        raise ValueError(f"{path}: sample rate {sr} Hz differs from the configured "
                         f"{sample_rate} Hz; set resample=true to resample it "
                         "(torchaudio.functional.resample) or convert the data")


def _image_problem(path: Path) -> str | None:
    try:
        if path.stat().st_size == 0:
            return "empty image file"
        with Image.open(path) as im:
            im.verify()
    except Exception as e:  # noqa: BLE001 - PIL raises many types for bad images
        return f"corrupt or unreadable image ({type(e).__name__}: {e})"
    return None


# --------------------------------------------------------------------------- loading
def load_waveform(path: str | Path, sample_rate: int = 16000, *, resample: bool = True,
                  start: int = 0, num_samples: int = -1) -> Tensor:
    """Mono float32 waveform [T] at ``sample_rate``; ``start``/``num_samples`` are in
    samples at ``sample_rate`` (-1 = to the end). Unreadable/empty files raise
    :class:`BadFileError` naming the file; another rate is resampled or refused."""
    try:
        info = sf.info(str(path))
        sr = int(info.samplerate)
        s0 = int(start * sr / sample_rate)
        n = -1 if num_samples < 0 else math.ceil(num_samples * sr / sample_rate)
        data, _ = sf.read(str(path), start=s0, frames=n, dtype="float32", always_2d=True)
    except Exception as e:  # noqa: BLE001
        raise BadFileError(f"corrupt or unreadable WAV: {path} ({type(e).__name__}: {e})") from e
    if data.shape[0] == 0:
        raise BadFileError(f"empty WAV (0 samples): {path}")
    wave = torch.from_numpy(data.mean(axis=1) if data.shape[1] > 1 else data[:, 0])
    if sr != sample_rate:
        _check_rate(Path(path), sr, sample_rate, resample)
        wave = AF.resample(wave, sr, sample_rate)
        if num_samples >= 0:
            wave = wave[:num_samples]
    return wave.contiguous()


def load_face(path: str | Path, image_size: int | None = None) -> Tensor:
    """RGB float tensor [3, H, W] in [0, 1], resized to ``image_size`` x ``image_size``."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if image_size and im.size != (image_size, image_size):
                im = im.resize((image_size, image_size), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8).copy()
    except Exception as e:  # noqa: BLE001
        raise BadFileError(f"corrupt or unreadable image: {path} ({type(e).__name__}: {e})") from e
    return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)


# --------------------------------------------------------------------------- splits
def read_identity_list(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"identity list not found: {path} (one identity per line)")
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def split_identities(identities: Sequence[str], n_val: int | float, n_test: int | float,
                     seed: int, test_identities: Collection[str] | None = None,
                     val_identities: Collection[str] | None = None,
                     ) -> dict[str, list[str]]:
    """Deterministic identity-disjoint train/val/test split (counts, or fractions < 1).

    ``test_identities`` / ``val_identities`` (e.g. the speakers of given trial lists) fix
    those splits; the others are drawn from the remaining identities with ``seed``."""
    ids = sorted(set(identities))
    rng = np.random.default_rng(seed)

    def count(x: int | float) -> int:
        return int(round(x * len(ids))) if isinstance(x, float) and 0 < x < 1 else int(x)

    out: dict[str, list[str]] = {}
    rest = ids
    for name, n, fixed in (("test", n_test, test_identities), ("val", n_val, val_identities)):
        if fixed is not None:
            chosen = sorted(set(fixed))
            missing = sorted(set(chosen) - set(rest))
            if missing:
                raise ValueError(f"{name} identities {missing[:10]} are not in the data or "
                                 "are already in another split")
        else:
            k = count(n)
            if k >= len(rest):
                raise ValueError(f"cannot take {k} {name} identities out of {len(rest)} left "
                                 f"({len(ids)} in total) and keep a non-empty train split; "
                                 "lower n_val_identities / n_test_identities")
            chosen = sorted(rest[i] for i in rng.permutation(len(rest))[:k])
        out[name] = chosen
        rest = [i for i in rest if i not in set(chosen)]
    if not rest:
        raise ValueError(f"no training identities left out of {len(ids)}")
    return {"train": rest, "val": out["val"], "test": out["test"]}


def check_disjoint(splits: Mapping[str, Sequence[str]]) -> None:
    names = list(splits)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            both = sorted(set(splits[a]) & set(splits[b]))
            if both:
                raise ValueError(f"splits {a!r} and {b!r} share identities {both[:10]}; "
                                 "splits must be identity-disjoint")


# --------------------------------------------------------------------------- trials
def read_trials(path: str | Path, wav_root: str | Path,
                allowed: Collection[str] | None = None,
                skipped: Mapping[str, str] | None = None,
                ) -> tuple[list[Trial], list[tuple[str, str]]]:
    """Parse a trial list; every path must exist under ``wav_root``.

    If ``allowed`` is given every path must be in it, except paths in ``skipped`` (files
    dropped by ``on_bad_file=skip``): their trials are dropped and returned as
    ``(description, reason)``. Any other problem raises :class:`TrialListError` with the
    line number."""
    path, wav_root = Path(path), Path(wav_root)
    if not path.is_file():
        raise FileNotFoundError(f"trial list not found: {path} (format {TRIAL_FORMAT})")
    trials: list[Trial] = []
    dropped: list[tuple[str, str]] = []
    skipped = skipped or {}
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        where = f"{path}, line {lineno}"
        if len(parts) != 3 or parts[0] not in ("0", "1"):
            raise TrialListError(f"{where}: malformed trial {line!r}; expected {TRIAL_FORMAT}")
        enroll, test = (p.removeprefix("./") for p in parts[1:])
        bad_ref = None
        for p in (enroll, test):
            if not (wav_root / p).is_file():
                raise TrialListError(f"{where}: utterance {p!r} not found at {wav_root / p}")
            if allowed is not None and p not in allowed:
                if p in skipped:
                    bad_ref = (f"{where}: trial dropped", f"{p} was skipped ({skipped[p]})")
                else:
                    raise TrialListError(f"{where}: utterance {p!r} is not in this split's "
                                         "utterances (its identity belongs to another split)")
        if bad_ref:
            dropped.append(bad_ref)
            continue
        trials.append(Trial(int(parts[0]), enroll, test))
    if not trials:
        raise TrialListError(f"{path}: no usable trials (format {TRIAL_FORMAT})")
    return trials, dropped


def make_trials(utts_by_identity: Mapping[str, Sequence[str]], n_trials: int,
                seed: int) -> list[Trial]:
    """Balanced random trials (half target, half non-target), no duplicate pairs.

    Target pairs use different videos when the identity has several (video = second path
    component). If fewer distinct target pairs exist than ``n_trials // 2``, the number of
    non-targets is lowered to match."""
    rng = np.random.default_rng(seed)
    ids = sorted(k for k, v in utts_by_identity.items() if v)
    tgt_ids = [i for i in ids if len(utts_by_identity[i]) >= 2]
    seen: set[frozenset[str]] = set()
    out: list[Trial] = []
    n_target = n_trials // 2 if tgt_ids else 0

    def pick(xs: Sequence[str]) -> str:
        return xs[int(rng.integers(len(xs)))]

    for label in (1, 0):
        # non-targets: as many as the targets actually made (balanced lists)
        n = n_target if label == 1 else (0 if len(ids) < 2 else len(out) if tgt_ids else n_trials)
        made, attempts = 0, 0
        while made < n and attempts < 50 * n + 100:
            attempts += 1
            if label == 1:
                utts = utts_by_identity[pick(tgt_ids)]
                a = pick(utts)
                others = [u for u in utts if _video(u) != _video(a)] or [u for u in utts if u != a]
                b = pick(others)
            else:
                i, j = rng.choice(len(ids), size=2, replace=False)
                a, b = pick(utts_by_identity[ids[i]]), pick(utts_by_identity[ids[j]])
            key = frozenset((a, b))
            if key in seen:
                continue
            seen.add(key)
            out.append(Trial(label, a, b))
            made += 1
    return [out[k] for k in rng.permutation(len(out))]


def write_trials(path: str | Path, trials: Iterable[Trial]) -> None:
    Path(path).write_text("".join(f"{t.label} {t.enroll} {t.test}\n" for t in trials))


def _video(rel: str) -> str:
    parts = rel.split("/")
    return parts[1] if len(parts) > 2 else ""


# --------------------------------------------------------------------------- datasets
class FaceVoiceDataset(Dataset):
    """Paired (face frame, utterance) samples of a set of identities.

    ``train=True``: random ``crop_seconds`` crop (short utterances are wrapped around)
    and a face frame of the same video (else identity) chosen by ``train_face_frame``:
    ``random`` (default), ``per_index`` (frame ``index mod n_frames``: fixed per sample,
    so a frozen teacher's output can be cached) or ``first``. ``train=False``: the full
    utterance (cut at ``max_seconds`` if given) and the first frame of the same video.
    Labels are the identity's index within ``identities`` (sorted).
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

    def __len__(self) -> int:
        return len(self.items)

    @property
    def teacher_input_is_deterministic(self) -> bool:
        """True when ``teacher_input`` depends on the index only (no random face choice;
        degradations are seeded per index)."""
        return not self.train or self.train_face_frame != "random"

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
        wave = self._load_audio(u)
        sample = {"label": torch.tensor(self.label_of[u.identity], dtype=torch.int64),
                  "index": torch.tensor(i, dtype=torch.int64)}
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


def pad_collate(samples: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Stack a batch; ``student_input`` is zero-padded to the longest waveform [B, T_max]
    and ``student_lengths`` [B] (int64) holds the true lengths."""
    waves = [s["student_input"] for s in samples]
    lengths = torch.tensor([w.shape[-1] for w in waves], dtype=torch.int64)
    padded = torch.zeros(len(waves), int(lengths.max()), dtype=waves[0].dtype)
    for j, w in enumerate(waves):
        padded[j, : w.shape[-1]] = w
    rest = default_collate([{k: v for k, v in s.items() if k != "student_input"}
                            for s in samples])
    return {**rest, "student_input": padded, "student_lengths": lengths}
