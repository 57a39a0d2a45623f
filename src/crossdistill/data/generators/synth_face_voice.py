"""Paired synthetic face + voice data, written in the VoxCeleb layout.

Each identity has a latent vector ``z = [z_shared, z_face_only, z_voice_only]`` (standard
normal). Face attributes (face width/height, skin tone, eye spacing/height, mouth
width/curvature, hair colour) are fixed random mixtures of the shared and face-only
factors; voice attributes (pitch, vocal-tract length, spectral tilt, second-formant
shift, breathiness) mix the shared and voice-only factors. Eye colour depends only on
the face-only factors and speaking rate only on the voice-only ones. So the shared
factors set e.g. both face shape and voice pitch, and ``n_shared`` controls how much
identity information the two modalities have in common.

Faces: ellipse faces drawn with PIL at 4x and downsampled, with per-video background and
lighting and per-frame shift / scale / lighting jitter and noise. Voices: a source-filter
model (glottal pulse train with jittered, intonated f0 -> spectral tilt -> lip radiation
-> three formant resonators per vowel scaled by vocal-tract length), syllable amplitude
modulation at the speaking rate, pauses, per-utterance pitch jitter, loudness and
background noise (30-40 dB SNR per video).

Output (see :mod:`crossdistill.data.readers.voxceleb`)::

    <data_dir>/synth_face_voice/<key>/wav/idNNNNN/vidNN/NNNNN.wav     (PCM_16)
    <data_dir>/synth_face_voice/<key>/faces/idNNNNN/vidNN/NNNN.png
    .../splits/{train,val,test}.txt   identity lists
    .../trials_val.txt, trials_test.txt   balanced verification trials
    .../identities.json   latent factors and attributes per identity
    .../manifest.json     written last; its presence marks a complete dataset

``<key>`` hashes the generator parameters: same parameters -> cached, different
parameters -> another directory.
"""

from __future__ import annotations

import colorsys
import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
from PIL import Image, ImageDraw

from crossdistill.data.readers.voxceleb.trials import make_trials, write_trials

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1
MANIFEST = "manifest.json"
FACE_ATTRS = ("face_width", "face_height", "skin_tone", "eye_spacing", "eye_height",
              "mouth_width", "mouth_curve", "hair_colour")
FACE_ONLY_ATTRS = ("eye_colour",)
VOICE_ATTRS = ("pitch", "vocal_tract", "spectral_tilt", "formant2", "breathiness")
VOICE_ONLY_ATTRS = ("speaking_rate",)
# (F1, F2, F3) in Hz for an average vocal tract: /a/ /i/ /u/ /e/ /o/
VOWELS = np.array([[730, 1090, 2440], [270, 2290, 3010], [300, 870, 2240],
                   [530, 1840, 2480], [570, 840, 2410]], dtype=np.float64)
BANDWIDTHS = np.array([80.0, 100.0, 130.0])


@dataclass(frozen=True)
class SynthFaceVoiceConfig:
    n_identities: int = 40
    n_shared: int = 4  # latent factors expressed in both face and voice
    n_face_only: int = 2
    n_voice_only: int = 2
    videos_per_identity: int = 3
    utterances_per_video: int = 3
    frames_per_video: int = 3
    utt_seconds_min: float = 2.0
    utt_seconds_max: float = 3.0
    sample_rate: int = 16000
    image_size: int = 32
    n_val_identities: int = 6
    n_test_identities: int = 6
    n_trials: int = 400  # per val/test trial list, half target
    seed: int = 0

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any] | SynthFaceVoiceConfig | None,
                  **defaults: Any) -> SynthFaceVoiceConfig:
        if isinstance(cfg, SynthFaceVoiceConfig):
            return cfg
        cfg = dict(cfg or {})
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - valid)
        if unknown:
            raise KeyError(f"generator: unknown key(s) {unknown}; valid keys: {sorted(valid)}")
        return cls(**{**defaults, **cfg})

    def validate(self) -> None:
        if min(self.n_shared, self.n_face_only, self.n_voice_only) < 0:
            raise ValueError("n_shared / n_face_only / n_voice_only must be >= 0")
        if self.n_shared + self.n_face_only == 0 or self.n_shared + self.n_voice_only == 0:
            raise ValueError("each modality needs at least one latent factor "
                             "(n_shared + n_face_only > 0 and n_shared + n_voice_only > 0)")
        if self.n_val_identities + self.n_test_identities >= self.n_identities:
            raise ValueError(f"n_identities={self.n_identities} leaves no training identities "
                             f"after n_val_identities={self.n_val_identities} and "
                             f"n_test_identities={self.n_test_identities}")
        if min(self.videos_per_identity, self.utterances_per_video, self.frames_per_video) < 1:
            raise ValueError("videos_per_identity, utterances_per_video and frames_per_video "
                             "must be >= 1")
        if not 0 < self.utt_seconds_min <= self.utt_seconds_max:
            raise ValueError("need 0 < utt_seconds_min <= utt_seconds_max")
        if self.image_size < 8:
            raise ValueError(f"image_size={self.image_size} is too small (>= 8)")

    def key(self) -> str:
        blob = json.dumps({"version": GENERATOR_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]


def dataset_dir(data_dir: str | Path, cfg: SynthFaceVoiceConfig) -> Path:
    return Path(data_dir) / "synth_face_voice" / cfg.key()


def generate_synth_face_voice(data_dir: str | Path,
                              cfg: SynthFaceVoiceConfig | Mapping[str, Any] | None = None,
                              ) -> Path:
    """Generate (or reuse) the dataset for ``cfg`` under ``data_dir``; returns its root."""
    cfg = SynthFaceVoiceConfig.from_dict(cfg)
    cfg.validate()
    out = dataset_dir(data_dir, cfg)
    if _is_complete(out, cfg):
        log.info("synthetic face-voice data: using cached %s", out)
        return out
    if out.exists():
        log.warning("synthetic face-voice data at %s is incomplete; regenerating", out)
        shutil.rmtree(out)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    t0 = time.time()
    _write_dataset(tmp, cfg)
    try:
        os.replace(tmp, out)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
        if not _is_complete(out, cfg):
            raise
    log.info("synthetic face-voice data generated in %.1f s: %s", time.time() - t0, out)
    return out


def _is_complete(path: Path, cfg: SynthFaceVoiceConfig) -> bool:
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return manifest.get("params") == asdict(cfg) and manifest.get("version") == GENERATOR_VERSION


# --------------------------------------------------------------------------- identities
def identity_name(i: int) -> str:
    return f"id{i + 1:05d}"


def sample_identities(cfg: SynthFaceVoiceConfig) -> list[dict[str, Any]]:
    """Latent factors and the face / voice attributes (each in [-1, 1]) per identity."""
    rng = np.random.default_rng([cfg.seed, 1])
    ns, nf, nv = cfg.n_shared, cfg.n_face_only, cfg.n_voice_only

    def mixing(n_rows: int, n_cols: int) -> np.ndarray:
        w = rng.standard_normal((n_rows, n_cols))
        return w / np.linalg.norm(w, axis=1, keepdims=True)

    w_face = mixing(len(FACE_ATTRS), ns + nf)
    w_voice = mixing(len(VOICE_ATTRS), ns + nv)
    w_face_only = mixing(len(FACE_ONLY_ATTRS), nf) if nf else None
    w_voice_only = mixing(len(VOICE_ONLY_ATTRS), nv) if nv else None
    out = []
    for i in range(cfg.n_identities):
        z = rng.standard_normal(ns + nf + nv)
        zs, zf, zv = z[:ns], z[ns : ns + nf], z[ns + nf :]
        face = np.tanh(w_face @ np.concatenate([zs, zf]))
        voice = np.tanh(w_voice @ np.concatenate([zs, zv]))
        eye = np.tanh(w_face_only @ zf) if nf else np.zeros(len(FACE_ONLY_ATTRS))
        rate = np.tanh(w_voice_only @ zv) if nv else np.zeros(len(VOICE_ONLY_ATTRS))
        attrs_f = dict(zip(FACE_ATTRS + FACE_ONLY_ATTRS, [*face, *eye], strict=True))
        attrs_v = dict(zip(VOICE_ATTRS + VOICE_ONLY_ATTRS, [*voice, *rate], strict=True))
        out.append({"identity": identity_name(i), "z_shared": zs.tolist(),
                    "z_face_only": zf.tolist(), "z_voice_only": zv.tolist(),
                    "face": {k: float(v) for k, v in attrs_f.items()},
                    "voice": {k: float(v) for k, v in attrs_v.items()},
                    "f0_hz": float(voice_params(attrs_v)["f0"])})
    return out


# --------------------------------------------------------------------------- voice
def voice_params(a: Mapping[str, float]) -> dict[str, float]:
    """Physical voice parameters from attributes in [-1, 1]."""
    return {"f0": 150.0 * 2.0 ** (0.8 * a["pitch"]),  # ~86-262 Hz
            "vtl": 1.0 + 0.15 * a["vocal_tract"],  # formant frequencies divided by this
            "tilt": 0.75 + 0.2 * (a["spectral_tilt"] + 1) / 2,  # one-pole coefficient
            "f2": 1.0 + 0.1 * a["formant2"],
            "breath": 0.1 + 0.3 * (a["breathiness"] + 1) / 2,  # noise/pulse amplitude
            "rate": 4.0 * 2.0 ** (0.45 * a["speaking_rate"])}  # syllables / s


def _resonator(freq: np.ndarray, bw: np.ndarray, sr: int) -> tuple[np.ndarray, np.ndarray]:
    """Two-pole resonators (unity DC gain): (a_coeffs [K, 3], b_coeffs [K, 3])."""
    r = np.exp(-math.pi * bw / sr)
    theta = 2 * math.pi * np.minimum(freq, 0.45 * sr) / sr
    a = np.stack([np.ones_like(r), -2 * r * np.cos(theta), r**2], axis=1)
    b = np.zeros_like(a)
    b[:, 0] = a.sum(axis=1)
    return a, b


def synth_utterance(p: Mapping[str, float], duration: float, sr: int,
                    rng: np.random.Generator, noise_snr_db: float, gain_db: float) -> np.ndarray:
    """One utterance (float32 in [-1, 1]) from :func:`voice_params` output ``p``."""
    n = int(duration * sr)
    t = np.arange(n) / sr
    # source: pulse train with per-utterance pitch jitter and slow intonation
    f0 = p["f0"] * (1 + rng.normal(0, 0.03)) * (
        1 + 0.08 * np.sin(2 * math.pi * rng.uniform(0.3, 0.8) * t + rng.uniform(0, 2 * math.pi)))
    phase = np.cumsum(f0 / sr)
    src = np.diff(np.floor(phase), prepend=0.0)
    # aspiration noise at a harmonics-to-noise ratio of ~10-20 dB (pulse power = f0 / sr)
    src = src + p["breath"] * np.sqrt(f0 / sr) * rng.standard_normal(n)
    x = torch.from_numpy(src)
    tilt = torch.tensor([1.0, -p["tilt"]], dtype=torch.float64)
    one = torch.tensor([1.0, 0.0], dtype=torch.float64)
    for _ in range(2):  # glottal spectral tilt
        x = AF.lfilter(x, tilt, one * (1 - p["tilt"]), clamp=False)
    x = torch.diff(x, prepend=x[:1])  # lip radiation
    # filter: one resonator cascade per vowel, all vowels in one batched call
    formants = VOWELS / p["vtl"]
    formants[:, 1] *= p["f2"]
    xs = x.expand(len(VOWELS), n).contiguous()
    for k in range(3):
        a, b = _resonator(formants[:, k], np.full(len(VOWELS), BANDWIDTHS[k]), sr)
        xs = AF.lfilter(xs, torch.from_numpy(a), torch.from_numpy(b), clamp=False, batching=True)
    voiced = xs.numpy()
    # syllables at the speaking rate, with pauses and leading/trailing silence
    env = np.zeros(n)
    vowel = np.zeros(n, dtype=np.int64)
    pos = int(rng.uniform(0.1, 0.2) * sr)
    end = n - int(rng.uniform(0.1, 0.2) * sr)
    rate = p["rate"] * rng.uniform(0.95, 1.05)
    while pos < end:
        if rng.random() < 0.12:
            pos += int(rng.uniform(0.1, 0.25) * sr)
            continue
        syl = int(sr / rate * rng.uniform(0.75, 1.25))
        on = min(int(syl * 0.8), end - pos)
        if on > 16:
            env[pos : pos + on] = np.hanning(on) ** 0.6 * rng.uniform(0.6, 1.0)
            vowel[pos : pos + syl] = rng.integers(len(VOWELS))
        pos += syl
    speech = voiced[vowel, np.arange(n)] * env
    speech /= max(np.abs(speech).max(), 1e-9)
    speech *= 0.5 * 10 ** (gain_db / 20)
    p_speech = float(np.mean(speech**2))
    speech += rng.standard_normal(n) * math.sqrt(p_speech / 10 ** (noise_snr_db / 10))
    return np.clip(speech, -1.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------- face
def _mix(c0: tuple[float, ...], c1: tuple[float, ...], w: float) -> tuple[int, ...]:
    return tuple(int(round(a + (b - a) * w)) for a, b in zip(c0, c1, strict=True))


def render_face(a: Mapping[str, float], size: int, video: Mapping[str, Any],
                rng: np.random.Generator) -> np.ndarray:
    """One face frame, uint8 [size, size, 3]."""
    s = size * 4
    img = Image.new("RGB", (s, s), video["background"])
    d = ImageDraw.Draw(img)
    scale = 1 + rng.uniform(-0.04, 0.04)
    cx = s / 2 + rng.uniform(-0.06, 0.06) * s
    cy = s / 2 + rng.uniform(-0.05, 0.05) * s
    fw = s * (0.30 + 0.07 * a["face_width"]) * scale
    fh = s * (0.38 + 0.06 * a["face_height"]) * scale
    w = (a["hair_colour"] + 1) / 2
    hair = _mix((40, 25, 15), (225, 190, 110), w) if w < 0.75 else _mix(
        (225, 190, 110), (170, 60, 30), (w - 0.75) * 4)
    d.ellipse((cx - fw * 1.1, cy - fh * 1.12, cx + fw * 1.1, cy + fh * 0.3), fill=hair)
    skin = _mix((250, 220, 190), (105, 70, 45), (a["skin_tone"] + 1) / 2)
    d.ellipse((cx - fw, cy - fh, cx + fw, cy + fh), fill=skin)
    ex = fw * (0.40 + 0.12 * a["eye_spacing"])
    ey = cy - fh * (0.15 + 0.10 * a["eye_height"])
    er = fw * 0.2
    hue = 0.05 + 0.6 * (a["eye_colour"] + 1) / 2
    iris = tuple(int(255 * c) for c in colorsys.hsv_to_rgb(hue, 0.85, 0.75))
    for side in (-1, 1):
        x = cx + side * ex
        d.ellipse((x - er, ey - er * 0.7, x + er, ey + er * 0.7), fill=(245, 245, 245))
        d.ellipse((x - er * 0.6, ey - er * 0.6, x + er * 0.6, ey + er * 0.6), fill=iris)
        d.ellipse((x - er * 0.25, ey - er * 0.25, x + er * 0.25, ey + er * 0.25), fill=(10, 10, 10))
    mw = fw * (0.45 + 0.15 * a["mouth_width"])
    my = cy + fh * 0.5
    curve = a["mouth_curve"] * fh * 0.15
    xs = np.linspace(-1, 1, 12)
    pts = [(cx + mw * u, my + curve * (u * u - 0.5)) for u in xs]
    d.line(pts, fill=(150, 40, 50), width=max(2, int(s * 0.03)))
    small = img.resize((size, size), Image.LANCZOS)
    arr = np.asarray(small, dtype=np.float64) / 255.0
    # lighting: per-video direction and level, per-frame jitter; then sensor noise
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1) - 0.5
    ang = video["light_angle"]
    grad = 1 + video["light_strength"] * (np.cos(ang) * xx + np.sin(ang) * yy)
    level = video["light_level"] * (1 + rng.uniform(-0.05, 0.05))
    arr = arr * (grad * level)[..., None] + rng.normal(0, 0.015, arr.shape)
    return (np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8)


# --------------------------------------------------------------------------- writer
def _write_dataset(root: Path, cfg: SynthFaceVoiceConfig) -> None:
    idents = sample_identities(cfg)
    utts_by_id: dict[str, list[str]] = {}
    n_utts = n_faces = 0
    for i, ident in enumerate(idents):
        name = ident["identity"]
        rng = np.random.default_rng([cfg.seed, 2, i])
        vp = voice_params(ident["voice"])
        for v in range(cfg.videos_per_identity):
            video = f"vid{v:02d}"
            session = {"background": tuple(int(c) for c in rng.integers(0, 256, 3)),
                       "light_angle": float(rng.uniform(0, 2 * math.pi)),
                       "light_strength": float(rng.uniform(0.1, 0.6)),
                       "light_level": float(rng.uniform(0.75, 1.2))}
            noise_snr = float(rng.uniform(30.0, 40.0))
            wav_dir = root / "wav" / name / video
            face_dir = root / "faces" / name / video
            wav_dir.mkdir(parents=True)
            face_dir.mkdir(parents=True)
            for k in range(cfg.frames_per_video):
                arr = render_face(ident["face"], cfg.image_size, session, rng)
                Image.fromarray(arr).save(face_dir / f"{k + 1:04d}.png")
                n_faces += 1
            for u in range(cfg.utterances_per_video):
                dur = float(rng.uniform(cfg.utt_seconds_min, cfg.utt_seconds_max))
                wave = synth_utterance(vp, dur, cfg.sample_rate, rng, noise_snr,
                                       gain_db=float(rng.uniform(-6.0, 0.0)))
                rel = f"{name}/{video}/{u + 1:05d}.wav"
                sf.write(root / "wav" / rel, wave, cfg.sample_rate, subtype="PCM_16")
                utts_by_id.setdefault(name, []).append(rel)
                n_utts += 1

    names = [d["identity"] for d in idents]
    perm = np.random.default_rng([cfg.seed, 3]).permutation(len(names))
    nt, nv = cfg.n_test_identities, cfg.n_val_identities
    splits = {"test": sorted(names[j] for j in perm[:nt]),
              "val": sorted(names[j] for j in perm[nt : nt + nv]),
              "train": sorted(names[j] for j in perm[nt + nv :])}
    (root / "splits").mkdir()
    for split, ids in splits.items():
        (root / "splits" / f"{split}.txt").write_text("".join(f"{x}\n" for x in ids))
        for d in idents:
            if d["identity"] in ids:
                d["split"] = split
    for j, split in enumerate(("val", "test")):
        if splits[split]:
            trials = make_trials({x: utts_by_id[x] for x in splits[split]}, cfg.n_trials,
                                 seed=cfg.seed * 1000 + 4 + j)
            write_trials(root / f"trials_{split}.txt", trials)
    (root / "identities.json").write_text(json.dumps(idents, indent=1))
    manifest = {"generator": "synth_face_voice", "version": GENERATOR_VERSION,
                "params": asdict(cfg), "n_utterances": n_utts, "n_face_frames": n_faces,
                "splits": {k: len(v) for k, v in splits.items()}}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=1))
