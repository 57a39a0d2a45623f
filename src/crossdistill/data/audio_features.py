"""Fixed-size log-Mel / Fbank features of short recordings, computed once and cached.

Each waveform is cut or zero-padded (at the end) to ``clip_seconds``, optionally mixed with
white noise at ``snr_db`` (seeded per recording), then turned into ``[n_mels, frames]``:

- ``log_mel``: ``log(MelSpectrogram + 1e-6)`` (torchaudio; power spectrum, Hann window,
  centred frames: ``frames = 1 + clip_samples // hop_length``);
- ``fbank``: Kaldi filter banks (``torchaudio.compliance.kaldi.fbank``, log Mel energies,
  no dither; window ``n_fft / sample_rate``, shift ``hop_length / sample_rate``).

The features of a whole dataset live in ONE ``.npy`` file under ``cache_dir``, read back by
memory map, with a JSON sidecar; its key hashes the recordings (names and bytes) and every
feature parameter, so a changed file or parameter selects a new cache, and an unchanged one
is reused without recomputing. The array is written to a temporary file and published with
``os.replace`` (then the sidecar), so an interrupted build never reads as valid.

Recordings of different lengths (speech utterances) use :class:`FbankParams` (SpeechBrain's
``Fbank``, the filter banks the ECAPA encoder computes itself, ``[frames, n_mels]`` with
``frames = samples // hop + 1``) and :func:`cached_ragged_features`: ONE flat
``[total frames, n_mels]`` ``.npy`` read by memory map, plus offsets and per-recording
values (e.g. SNR estimates) in a small ``.index.npz``, keyed by a hash of everything that
determines them (the caller's payload: file contents, feature and degradation parameters).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchaudio

from crossdistill.data.degrade import add_noise_at_snr
from crossdistill.utils.fingerprint import fingerprint_paths

log = logging.getLogger(__name__)

FEATURE_KINDS = ("log_mel", "fbank")
FORMAT_VERSION = 1
RAGGED_FORMAT_VERSION = 1


@dataclass(frozen=True)
class FeatureParams:
    """How recordings become ``[n_mels, frames]`` features (see module docstring)."""

    kind: str = "log_mel"
    sample_rate: int = 8000
    n_mels: int = 40
    n_fft: int = 256
    hop_length: int = 128
    clip_seconds: float = 1.0
    snr_db: float | None = None
    noise_seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in FEATURE_KINDS:
            raise ValueError(f"data.features.kind={self.kind!r}; valid: {list(FEATURE_KINDS)}")
        for name in ("sample_rate", "n_mels", "n_fft", "hop_length"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"data.features.{name} must be > 0, got {getattr(self, name)}")
        if self.clip_seconds <= 0:
            raise ValueError(f"data.features.clip_seconds must be > 0, got {self.clip_seconds}")

    @classmethod
    def from_config(cls, values: Mapping[str, Any] | None, where: str) -> FeatureParams:
        values = dict(values or {})
        valid = {f.name for f in fields(cls)}
        unknown = set(values) - valid
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; valid: {sorted(valid)}")
        return cls(**values)

    @property
    def clip_samples(self) -> int:
        return int(round(self.clip_seconds * self.sample_rate))

    @property
    def num_frames(self) -> int:
        if self.kind == "fbank":
            return 1 + (self.clip_samples - self.n_fft) // self.hop_length
        return 1 + self.clip_samples // self.hop_length


def fix_length(wave: np.ndarray, num_samples: int) -> np.ndarray:
    """``wave`` cut to its first ``num_samples`` or zero-padded at the end."""
    if len(wave) >= num_samples:
        return wave[:num_samples]
    return np.pad(wave, (0, num_samples - len(wave)))


def prepare_wave(wave: np.ndarray, params: FeatureParams, recording: int) -> torch.Tensor:
    """The fixed-length waveform of recording number ``recording``, noise added when
    ``params.snr_db`` is set (noise seeded by ``(noise_seed, recording)``; the SNR is
    measured over the recording before padding)."""
    signal = torch.from_numpy(np.asarray(wave, dtype=np.float32))
    if params.snr_db is not None:
        rng = np.random.default_rng([params.noise_seed, recording])
        signal = add_noise_at_snr(signal, float(params.snr_db), rng)
    return torch.from_numpy(fix_length(signal.numpy(), params.clip_samples))


def compute_features(waves: Sequence[np.ndarray], params: FeatureParams) -> np.ndarray:
    """float32 ``[len(waves), n_mels, frames]`` features of ``waves`` (see module doc)."""
    batch = torch.stack([prepare_wave(w, params, i) for i, w in enumerate(waves)])
    if params.kind == "log_mel":
        mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=params.sample_rate,
            n_fft=params.n_fft,
            hop_length=params.hop_length,
            n_mels=params.n_mels,
        )
        with torch.no_grad():
            out = torch.log(mel(batch) + 1e-6)
    else:
        kaldi = torchaudio.compliance.kaldi
        ms = 1000.0 / params.sample_rate
        out = torch.stack(
            [
                kaldi.fbank(
                    w[None] * 32768.0,
                    sample_frequency=params.sample_rate,
                    num_mel_bins=params.n_mels,
                    frame_length=params.n_fft * ms,
                    frame_shift=params.hop_length * ms,
                    dither=0.0,
                    snip_edges=True,
                ).T
                for w in batch
            ]
        )
    expected = (len(waves), params.n_mels, params.num_frames)
    if tuple(out.shape) != expected:  # a parameter combination torchaudio sizes differently
        raise RuntimeError(f"features of shape {tuple(out.shape)}, expected {expected}")
    return out.numpy().astype(np.float32)


def cache_key(files: Sequence[Path], params: FeatureParams) -> str:
    """Hash of the recordings' names (in row order) and bytes plus every feature parameter
    (the bytes of every file in the recordings' folders)."""
    h = hashlib.sha256(f"v{FORMAT_VERSION}".encode())
    h.update(json.dumps(asdict(params), sort_keys=True).encode())
    h.update(fingerprint_paths(sorted({p.parent for p in files}), "content").encode())
    h.update("\n".join(p.name for p in files).encode())  # the row order
    return h.hexdigest()[:24]


def cached_features(
    files: Sequence[Path],
    params: FeatureParams,
    cache_dir: str | Path,
    load_waves: Any,
) -> np.ndarray:
    """The features of ``files`` (row i = ``files[i]``) as a read-only memory map, built
    with ``load_waves(files) -> list of waveforms`` when no complete cache exists."""
    cache_dir = Path(cache_dir)
    key = cache_key(files, params)
    array_path, meta_path = cache_dir / f"{key}.npy", cache_dir / f"{key}.json"
    if meta_path.is_file() and array_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("complete") and meta.get("num_recordings") == len(files):
            log.info("audio features: reusing %s", array_path)
            return np.load(array_path, mmap_mode="r")
    cache_dir.mkdir(parents=True, exist_ok=True)
    features = compute_features(load_waves(files), params)
    tmp = cache_dir / f"{key}.npy.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with tmp.open("wb") as fh:
            np.save(fh, features)
        os.replace(tmp, array_path)
    finally:
        tmp.unlink(missing_ok=True)
    meta = {
        "format_version": FORMAT_VERSION,
        "key": key,
        "complete": True,
        "num_recordings": len(files),
        "shape": list(features.shape),
        "params": asdict(params),
    }
    tmp_meta = cache_dir / f"{key}.json.tmp-{os.getpid()}"
    tmp_meta.write_text(json.dumps(meta, indent=2))
    os.replace(tmp_meta, meta_path)
    log.info("audio features: computed %s %s", array_path, features.shape)
    return np.load(array_path, mmap_mode="r")


# --------------------------------------------------------------------------- ragged
@dataclass(frozen=True)
class FbankParams:
    """SpeechBrain ``Fbank`` settings (those of ``models.speech.EcapaSpeechEncoder``):
    log-Mel filter banks ``[frames, n_mels]`` of a waveform at ``sample_rate``;
    ``win_length`` / ``hop_length`` in ms, ``frames = samples // hop_samples + 1``."""

    sample_rate: int = 16000
    n_mels: int = 80
    n_fft: int = 400
    win_length: float = 25.0
    hop_length: float = 10.0

    def __post_init__(self) -> None:
        for name in ("sample_rate", "n_mels", "n_fft", "win_length", "hop_length"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"audio_features.{name} must be > 0, got {getattr(self, name)}")

    @classmethod
    def from_config(cls, values: Mapping[str, Any] | None, where: str, **fixed: Any) -> FbankParams:
        """From a config mapping (``fixed`` values, e.g. the data's sample rate, added);
        an unknown key fails naming ``where`` and the valid keys."""
        values = {**dict(values or {}), **fixed}
        valid = {f.name for f in fields(cls)}
        unknown = set(values) - valid
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; valid: {sorted(valid)}")
        return cls(**values)

    @property
    def hop_samples(self) -> int:
        return int(round(self.sample_rate * self.hop_length / 1000.0))

    def num_frames(self, num_samples: int) -> int:
        """Frames of a waveform of ``num_samples`` samples (centred STFT frames)."""
        return int(num_samples) // self.hop_samples + 1


class FbankExtractor:
    """``wave [T] -> float32 [frames, n_mels]``: exactly SpeechBrain's ``Fbank`` on that
    waveform alone (as the ECAPA encoder computes it from a waveform batch of one)."""

    def __init__(self, params: FbankParams) -> None:
        from speechbrain.lobes.features import Fbank

        self.params = params
        self.fbank = Fbank(sample_rate=params.sample_rate, n_mels=params.n_mels,
                           n_fft=params.n_fft, win_length=params.win_length,
                           hop_length=params.hop_length)  # fmt: skip

    def __call__(self, wave: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            feats = self.fbank(wave.reshape(1, -1).float())[0]
        return feats.numpy().astype(np.float32, copy=False)


@dataclass
class RaggedFeatures:
    """Features of N recordings of different lengths: recording ``i`` is
    ``frames[offsets[i]:offsets[i + 1]]`` (``frames``: read-only memory map
    ``[total, n_mels]``); ``columns`` hold one value per recording (float32 ``[N]``)."""

    frames: np.ndarray
    offsets: np.ndarray
    columns: dict[str, np.ndarray]
    path: Path | None = None

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def length(self, i: int) -> int:
        return int(self.offsets[i + 1] - self.offsets[i])

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.frames[self.offsets[i] : self.offsets[i + 1]]


def ragged_cache_key(payload: Mapping[str, Any]) -> str:
    """Hash of the JSON ``payload`` (everything the features depend on) + format version."""
    text = json.dumps({"format": RAGGED_FORMAT_VERSION, **payload}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _load_ragged(cache_dir: Path, key: str, count: int) -> RaggedFeatures | None:
    array_path = cache_dir / f"{key}.npy"
    index_path, meta_path = cache_dir / f"{key}.index.npz", cache_dir / f"{key}.json"
    if not (meta_path.is_file() and array_path.is_file() and index_path.is_file()):
        return None
    meta = json.loads(meta_path.read_text())
    if not meta.get("complete") or meta.get("num_recordings") != count:
        return None
    with np.load(index_path) as index:
        offsets = index["offsets"]
        columns = {k[4:]: index[k] for k in index.files if k.startswith("col_")}
    return RaggedFeatures(np.load(array_path, mmap_mode="r"), offsets, columns, array_path)


def _publish(data: Callable[[Any], None], path: Path) -> None:
    """Write with ``data(file handle)`` to a temporary file, then rename it to ``path``."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with tmp.open("wb") as fh:
            data(fh)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def cached_ragged_features(
    payload: Mapping[str, Any],
    count: int,
    compute: Callable[[], Iterable[tuple[np.ndarray, Mapping[str, float]]]],
    cache_dir: str | Path,
) -> RaggedFeatures:
    """The features of ``count`` recordings keyed by ``payload``: reused from ``cache_dir``
    when a complete cache exists, else built from ``compute()`` (yielding, per recording in
    order, its ``[frames, n_mels]`` features and its column values), written (array, then
    index, then the sidecar that marks it complete, each published by rename) and read
    back by memory map."""
    cache_dir = Path(cache_dir)
    key = ragged_cache_key(payload)
    found = _load_ragged(cache_dir, key, count)
    if found is not None:
        log.info("audio features: reusing %s", found.path)
        return found
    cache_dir.mkdir(parents=True, exist_ok=True)
    chunks, columns = [], {}
    for i, (feats, values) in enumerate(compute()):
        chunks.append(np.asarray(feats, dtype=np.float32))
        for name, value in values.items():
            columns.setdefault(name, np.full(count, np.nan, dtype=np.float32))[i] = value
    if len(chunks) != count:
        raise RuntimeError(f"audio features: computed {len(chunks)} recordings, expected {count}")
    offsets = np.zeros(count + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(c) for c in chunks])
    frames = np.concatenate(chunks) if chunks else np.zeros((0, 0), dtype=np.float32)
    _publish(lambda fh: np.save(fh, frames), cache_dir / f"{key}.npy")
    _publish(
        lambda fh: np.savez(fh, offsets=offsets, **{f"col_{k}": v for k, v in columns.items()}),
        cache_dir / f"{key}.index.npz",
    )
    meta = {"format_version": RAGGED_FORMAT_VERSION, "key": key, "complete": True,
            "num_recordings": count, "shape": list(frames.shape), "payload": payload}  # fmt: skip
    _publish(lambda fh: fh.write(json.dumps(meta, indent=2, default=str).encode()),
             cache_dir / f"{key}.json")  # fmt: skip
    log.info("audio features: computed %s %s", cache_dir / f"{key}.npy", frames.shape)
    loaded = _load_ragged(cache_dir, key, count)
    assert loaded is not None
    return loaded
