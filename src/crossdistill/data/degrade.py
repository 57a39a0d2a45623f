"""Quality degradations for speech and faces, and a simple speech SNR estimator.

Degradations are configured with :class:`DegradationConfig` and applied by a
:class:`Degrader` to a chosen fraction of the samples of chosen splits. Every random
choice comes from a generator seeded by ``(seed, split, sample index, modality)``, so the
same sample is degraded the same way every time it is loaded (also across workers).

Speech and face degradations are drawn independently of each other.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch
import torchaudio.functional as AF
import torchvision.transforms.functional as VF
from torch import Tensor

SPLITS = ("train", "val", "test")
_SPLIT_ID = {name: i for i, name in enumerate(SPLITS)}
NOISE_KINDS = ("white", "pink")
FACE_KINDS = ("blur", "occlusion", "low_light")


@dataclass
class SpeechDegradationConfig:
    """Additive noise (and optionally synthetic reverberation) on speech."""

    prob: float = 0.0  # fraction of samples degraded
    snr_db: tuple[float, ...] = (0.0, 5.0, 10.0, 20.0)  # one drawn uniformly per sample
    noise: str = "white"  # white | pink
    reverb_prob: float = 0.0  # probability that a degraded sample is also reverberated
    rt60: tuple[float, float] = (0.2, 0.6)  # seconds, drawn uniformly


@dataclass
class FaceDegradationConfig:
    """Blur, occlusion or low light on face images (one kind per degraded sample)."""

    prob: float = 0.0
    kinds: tuple[str, ...] = FACE_KINDS
    blur_sigma: tuple[float, float] = (1.0, 2.5)  # pixels
    occlusion_size: tuple[float, float] = (0.3, 0.5)  # square side / image side
    low_light_gain: tuple[float, float] = (0.15, 0.4)  # brightness factor


@dataclass
class DegradationConfig:
    speech: SpeechDegradationConfig = field(default_factory=SpeechDegradationConfig)
    face: FaceDegradationConfig = field(default_factory=FaceDegradationConfig)
    splits: tuple[str, ...] = ("train", "val", "test")  # where degradations are applied
    seed: int = 0

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any] | DegradationConfig | None,
                  default_seed: int = 0) -> DegradationConfig:
        """Build from a (Hydra) mapping; unknown keys or values fail naming them."""
        if isinstance(cfg, DegradationConfig):
            return cfg
        cfg = dict(to_plain(cfg) or {})
        _check_keys(cfg, cls, "degradation")
        speech = dict(cfg.pop("speech", None) or {})
        face = dict(cfg.pop("face", None) or {})
        _check_keys(speech, SpeechDegradationConfig, "degradation.speech")
        _check_keys(face, FaceDegradationConfig, "degradation.face")
        for key in ("snr_db", "rt60"):
            if key in speech:
                speech[key] = _as_tuple(speech[key])
        for key in ("kinds", "blur_sigma", "occlusion_size", "low_light_gain"):
            if key in face:
                face[key] = _as_tuple(face[key])
        if cfg.get("seed") is None:
            cfg["seed"] = default_seed
        if "splits" in cfg:
            cfg["splits"] = _as_tuple(cfg["splits"])
        out = cls(speech=SpeechDegradationConfig(**speech), face=FaceDegradationConfig(**face),
                  **cfg)
        out.validate()
        return out

    def validate(self) -> None:
        for name, p in (("speech.prob", self.speech.prob), ("face.prob", self.face.prob),
                        ("speech.reverb_prob", self.speech.reverb_prob)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"degradation.{name}={p} must be within [0, 1]")
        bad = [s for s in self.splits if s not in SPLITS]
        if bad:
            raise ValueError(f"degradation.splits has {bad}; valid: {list(SPLITS)}")
        if self.speech.noise not in NOISE_KINDS:
            raise ValueError(f"degradation.speech.noise={self.speech.noise!r}; "
                             f"valid: {list(NOISE_KINDS)}")
        if self.speech.prob > 0 and not self.speech.snr_db:
            raise ValueError("degradation.speech.snr_db is empty; give at least one SNR in dB")
        bad = [k for k in self.face.kinds if k not in FACE_KINDS]
        if bad or (self.face.prob > 0 and not self.face.kinds):
            raise ValueError(f"degradation.face.kinds has {bad or 'nothing'}; "
                             f"valid: {list(FACE_KINDS)}")

    @property
    def enabled(self) -> bool:
        return bool(self.splits) and (self.speech.prob > 0 or self.face.prob > 0)


# --------------------------------------------------------------------------- speech
def make_noise(num_samples: int, rng: np.random.Generator, kind: str = "white") -> np.ndarray:
    """Unit-variance white or pink (1/f power) noise."""
    noise = rng.standard_normal(num_samples)
    if kind == "pink":
        spec = np.fft.rfft(noise)
        f = np.arange(spec.shape[0], dtype=np.float64)
        f[0] = 1.0
        noise = np.fft.irfft(spec / np.sqrt(f), n=num_samples)
    elif kind != "white":
        raise ValueError(f"noise kind {kind!r}; valid: {list(NOISE_KINDS)}")
    return noise / max(float(noise.std()), 1e-12)


def add_noise_at_snr(wave: Tensor, snr_db: float, rng: np.random.Generator,
                     kind: str = "white") -> Tensor:
    """Add noise so that 10*log10(P_wave / P_noise) equals ``snr_db`` exactly.

    The power is the mean square over the whole waveform (pauses included). A silent
    waveform is returned unchanged.
    """
    p_sig = float(wave.double().pow(2).mean())
    if p_sig <= 0.0:
        return wave
    noise = make_noise(wave.shape[-1], rng, kind)
    noise *= math.sqrt(p_sig / (float(np.mean(noise**2)) * 10.0 ** (snr_db / 10.0)))
    return wave + torch.from_numpy(noise).to(wave.dtype)


def noisy_utterances(waves: Tensor, lengths: Tensor | None, index: Tensor, snr_db: float,
                     seed: int, kind: str = "white") -> Tensor:
    """A copy of the padded batch ``waves`` [B, T] with utterance ``j`` mixed with noise at
    ``snr_db`` over its true length ``lengths[j]`` (all of T when None; padding stays
    zero). Utterance ``j``'s noise is seeded by ``(seed, snr_db, index[j])``, so it is the
    same in every run, whatever the batch it is in."""
    out = waves.clone()
    code = int(round(snr_db * 100)) + 100_000
    for j, idx in enumerate(index.tolist()):
        n = int(lengths[j]) if lengths is not None else waves.shape[-1]
        rng = np.random.default_rng([seed, code, int(idx)])
        out[j, :n] = add_noise_at_snr(waves[j, :n].cpu(), snr_db, rng, kind).to(waves)
    return out


def synthetic_rir(rt60: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Exponentially decaying random impulse response (60 dB decay after ``rt60`` s),
    with a unit direct path."""
    n = max(int(rt60 * sample_rate), 2)
    t = np.arange(n) / sample_rate
    h = rng.standard_normal(n) * np.exp(-3.0 * math.log(10.0) * t / rt60) * 0.3
    h[0] = 1.0
    return h / np.linalg.norm(h)


def add_reverb(wave: Tensor, rt60: float, sample_rate: int, rng: np.random.Generator) -> Tensor:
    """Convolve with :func:`synthetic_rir`, keeping the length and the RMS level."""
    h = torch.from_numpy(synthetic_rir(rt60, sample_rate, rng)).to(wave.dtype)
    out = AF.fftconvolve(wave, h)[..., : wave.shape[-1]]
    rms_in, rms_out = wave.pow(2).mean().sqrt(), out.pow(2).mean().sqrt()
    return out * (rms_in / rms_out) if rms_out > 0 else out


def estimate_snr_db(wave: Tensor | np.ndarray, sample_rate: int = 16000, frame_ms: float = 20.0,
                    low_percentile: float = 15.0, high_percentile: float = 85.0,
                    min_db: float = -20.0, max_db: float = 80.0) -> float:
    """Blind SNR estimate from frame energies.

    Noise power = mean energy of the frames at or below the ``low_percentile``;
    speech power = mean energy of the frames at or above ``high_percentile`` minus the
    noise power. Assumes the speech has pauses; the value is a monotone quality score
    (biased high versus the global SNR, since it measures loud frames), clamped to
    ``[min_db, max_db]``; silent or near-empty input gives ``min_db``.
    """
    x = torch.as_tensor(wave, dtype=torch.float64).reshape(-1)
    flen = max(min(int(sample_rate * frame_ms / 1000.0), x.numel() // 8), 1)
    n_frames = x.numel() // flen
    if n_frames < 2:
        return float(min_db)  # (almost) empty: nothing to measure
    energy = x[: n_frames * flen].reshape(n_frames, flen).pow(2).mean(dim=1)
    lo_thr = torch.quantile(energy, low_percentile / 100.0)
    hi_thr = torch.quantile(energy, high_percentile / 100.0)
    noise = float(energy[energy <= lo_thr].mean())
    loud = float(energy[energy >= hi_thr].mean())
    tiny = 1e-20
    if loud <= tiny:
        return float(min_db)  # digital silence
    snr = 10.0 * math.log10(max(loud - noise, tiny) / max(noise, tiny))
    return float(min(max(snr, min_db), max_db))


def measured_snr_db(clean: Tensor, noisy: Tensor) -> float:
    """True SNR of ``noisy`` against the known ``clean`` signal (for tests/analysis)."""
    noise = (noisy - clean).double()
    return 10.0 * math.log10(float(clean.double().pow(2).mean()) / float(noise.pow(2).mean()))


# --------------------------------------------------------------------------- faces
def blur(img: Tensor, sigma: float) -> Tensor:
    k = 2 * math.ceil(3.0 * sigma) + 1
    k = min(k, (min(img.shape[-2:]) // 2) * 2 - 1) if min(img.shape[-2:]) > 2 else 1
    return VF.gaussian_blur(img, kernel_size=[k, k], sigma=[sigma, sigma]) if k > 1 else img


def occlude(img: Tensor, size_frac: float, rng: np.random.Generator) -> Tensor:
    """Grey square of side ``size_frac`` * image side at a random position."""
    h, w = img.shape[-2:]
    side_h, side_w = max(1, round(size_frac * h)), max(1, round(size_frac * w))
    y0 = int(rng.integers(0, h - side_h + 1))
    x0 = int(rng.integers(0, w - side_w + 1))
    out = img.clone()
    out[..., y0 : y0 + side_h, x0 : x0 + side_w] = float(rng.uniform(0.0, 0.6))
    return out


def low_light(img: Tensor, gain: float, rng: np.random.Generator) -> Tensor:
    """Darken (gain and gamma) and add sensor noise; input and output in [0, 1]."""
    noise = torch.from_numpy(rng.standard_normal(tuple(img.shape)) * 0.03).to(img.dtype)
    return (img.clamp(0, 1).pow(1.3) * gain + noise).clamp(0.0, 1.0)


# --------------------------------------------------------------------------- applier
class Degrader:
    """Applies a :class:`DegradationConfig` deterministically per (split, index)."""

    def __init__(self, cfg: DegradationConfig, sample_rate: int = 16000):
        self.cfg = cfg
        self.sample_rate = sample_rate

    def _rng(self, split: str, index: int, stream: int) -> np.random.Generator:
        return np.random.default_rng([self.cfg.seed, _SPLIT_ID[split], int(index), stream])

    def active(self, split: str) -> bool:
        return self.cfg.enabled and split in self.cfg.splits

    def speech(self, wave: Tensor, split: str, index: int) -> tuple[Tensor, float | None]:
        """Returns (waveform, requested SNR in dB or None if left clean)."""
        c = self.cfg.speech
        if not self.active(split) or c.prob <= 0:
            return wave, None
        rng = self._rng(split, index, 0)
        if rng.random() >= c.prob:
            return wave, None
        snr = float(c.snr_db[int(rng.integers(len(c.snr_db)))])
        if c.reverb_prob > 0 and rng.random() < c.reverb_prob:
            wave = add_reverb(wave, float(rng.uniform(*c.rt60)), self.sample_rate, rng)
        return add_noise_at_snr(wave, snr, rng, c.noise), snr

    def face(self, img: Tensor, split: str, index: int) -> tuple[Tensor, str | None]:
        """``img`` float [3, H, W] in [0, 1]. Returns (image, kind applied or None)."""
        c = self.cfg.face
        if not self.active(split) or c.prob <= 0:
            return img, None
        rng = self._rng(split, index, 1)
        if rng.random() >= c.prob:
            return img, None
        kind = c.kinds[int(rng.integers(len(c.kinds)))]
        if kind == "blur":
            img = blur(img, float(rng.uniform(*c.blur_sigma)))
        elif kind == "occlusion":
            img = occlude(img, float(rng.uniform(*c.occlusion_size)), rng)
        else:
            img = low_light(img, float(rng.uniform(*c.low_light_gain)), rng)
        return img, kind


# --------------------------------------------------------------------------- helpers
def to_plain(cfg: Any) -> Any:
    """OmegaConf containers -> plain Python (no-op for plain objects)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(cfg, DictConfig | ListConfig):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return cfg


def _as_tuple(value: Any) -> tuple:
    value = to_plain(value)
    return tuple(value) if isinstance(value, list | tuple) else (value,)


def _check_keys(cfg: Mapping[str, Any], cls: type, where: str) -> None:
    valid = {f.name for f in fields(cls)}
    unknown = sorted(set(cfg) - valid)
    if unknown:
        raise KeyError(f"{where}: unknown key(s) {unknown}; valid keys: {sorted(valid)}")
