"""Paired synthetic face + voice data, written in the VoxCeleb layout.

**Identity = decisive factors.** Every identity has ``n_face_factors = n_voice_factors +
n_face_only`` face factors ``f`` (standard normal). Its voice carries ``d =
n_voice_factors`` factors: the first ``n_shared = round(gamma * d)`` are *copies* of face
factors ``f[:n_shared]``, the rest are voice-only (standard normal). ``gamma = 0``: the
face says nothing about the voice (negative control); ``gamma = 1``: the voice is a
function of the face (positive control). The face model is the same for every gamma, and
so are the face images of a data seed (drawn from their own stream): a teacher trained on
the face pool is shared by every gamma.

Face attributes (:data:`FACE_ATTRS`: geometry and colours) are ``tanh(W_face f)``, voice
attributes (:data:`VOICE_ATTRS`) ``tanh(W_voice v)``; ``W_face`` / ``W_voice`` are random
matrices with orthogonal columns (every factor equally expressed) drawn from their own
stream, ``structure_seed``. So ``seed`` (the data seed) redraws identities and nuisances
only, never how the modalities are related. The manifest reports the shared information
actually realised: R^2 of each voice factor (and attribute) predicted linearly (least
squares with intercept) from the face factors (attributes) over the paired identities.

Nuisances: pose, light and background are drawn per face frame; audio has a per-video
channel and noise level (a recording session), see
:mod:`~crossdistill.data.generators.face_voice_render`.

**Teacher pool**: ``n_teacher_identities`` further identities from the same face model
(own stream, names after the paired ones), faces only, ``teacher_frames_per_identity``
frames each, for training the face teacher (as real face teachers are trained on large
face datasets disjoint from the speakers).

Output (see :mod:`crossdistill.data.readers.voxceleb`)::

    <data_dir>/synth_face_voice/<key>/wav/idNNNNN/vidNN/NNNNN.wav     (PCM_16)
    <data_dir>/synth_face_voice/<key>/faces/idNNNNN/vidNN/NNNN.png
    .../splits/{train,val,test}.txt   identity lists
    .../trials_val.txt, trials_test.txt   balanced verification trials
    .../identities.json   factors and attributes per paired identity
    .../teacher_faces/idNNNNN/NNNN.png, splits/teacher_pool.txt,
        teacher_identities.json   the face-only teacher pool
    .../manifest.json     parameters, counts, mixing structure, shared information;
                          written last, its presence marks a complete dataset

``<key>`` hashes the generator parameters: same parameters -> cached, different
parameters -> another directory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from PIL import Image

from crossdistill.data.generators.face_voice_render import (
    FACE_ATTRS,
    VOICE_ATTRS,
    draw_face_nuisance,
    draw_recording,
    render_face,
    synth_utterance,
    voice_params,
)
from crossdistill.data.generators.written_once import write_once
from crossdistill.data.readers.voxceleb.trials import make_trials, write_trials

log = logging.getLogger(__name__)

GENERATOR_VERSION = 3  # 3: faces drawn apart from the audio (the same for every gamma)
MANIFEST = "manifest.json"
IDENTITIES = "identities.json"
TEACHER_IDENTITIES = "teacher_identities.json"
TEACHER_FACES = "teacher_faces"
TEACHER_POOL_LIST = "splits/teacher_pool.txt"


@dataclass(frozen=True)
class SynthFaceVoiceConfig:
    n_identities: int = 1000  # paired identities (train + val + test)
    n_val_identities: int = 100
    n_test_identities: int = 300
    n_voice_factors: int = 6  # d: decisive factors of a voice
    gamma: float = 0.5  # fraction of the d voice factors that are copies of face factors
    n_face_only: int = 3  # face factors never shared (the face has d + n_face_only)
    structure_seed: int = 0  # mixing matrices; the data seed never changes them
    videos_per_identity: int = 3
    utterances_per_video: int = 3
    frames_per_video: int = 3
    utt_seconds_min: float = 1.5
    utt_seconds_max: float = 2.0
    sample_rate: int = 16000
    image_size: int = 32
    n_trials: int = 12000  # test trial list (half target; fewer if target pairs run out)
    n_val_trials: int = 2000
    n_teacher_identities: int = 2000  # face-only pool for the teacher (0 = none)
    teacher_frames_per_identity: int = 8
    seed: int = 0  # data seed: identities and nuisances

    @classmethod
    def from_dict(
        cls, cfg: Mapping[str, Any] | SynthFaceVoiceConfig | None, **defaults: Any
    ) -> SynthFaceVoiceConfig:
        if isinstance(cfg, SynthFaceVoiceConfig):
            return cfg
        cfg = dict(cfg or {})
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - valid)
        if unknown:
            raise KeyError(f"generator: unknown key(s) {unknown}; valid keys: {sorted(valid)}")
        return cls(**{**defaults, **cfg})

    @property
    def n_shared(self) -> int:
        """Voice factors that copy face factors: ``gamma * n_voice_factors`` rounded half up."""
        return int(math.floor(self.gamma * self.n_voice_factors + 0.5))

    @property
    def n_face_factors(self) -> int:
        return self.n_voice_factors + self.n_face_only

    def validate(self) -> None:
        """One clear error naming the key for any invalid value."""
        if not (isinstance(self.gamma, int | float) and 0.0 <= self.gamma <= 1.0):
            raise ValueError(
                f"generator.gamma={self.gamma!r}: must be a number in [0, 1] "
                "(the shared fraction of the voice factors)"
            )
        if not 1 <= self.n_voice_factors <= len(VOICE_ATTRS):
            raise ValueError(
                f"generator.n_voice_factors={self.n_voice_factors}: must be in "
                f"[1, {len(VOICE_ATTRS)}] (one per voice attribute at most)"
            )
        if self.n_face_only < 0 or self.n_face_factors > len(FACE_ATTRS):
            raise ValueError(
                f"generator.n_face_only={self.n_face_only}: need 0 <= n_face_only "
                f"and n_voice_factors + n_face_only <= {len(FACE_ATTRS)} "
                "(the face attributes)"
            )
        for key in ("n_val_identities", "n_test_identities", "n_trials", "n_val_trials"):
            if getattr(self, key) < 2:
                raise ValueError(
                    f"generator.{key}={getattr(self, key)}: must be >= 2 (verification trials)"
                )
        if self.n_val_identities + self.n_test_identities >= self.n_identities:
            raise ValueError(
                f"generator.n_identities={self.n_identities} leaves no training "
                f"identities after n_val_identities={self.n_val_identities} and "
                f"n_test_identities={self.n_test_identities}"
            )
        for key in (
            "videos_per_identity",
            "utterances_per_video",
            "frames_per_video",
            "teacher_frames_per_identity",
        ):
            if getattr(self, key) < 1:
                raise ValueError(f"generator.{key}={getattr(self, key)}: must be >= 1")
        if self.n_teacher_identities < 0:
            raise ValueError(
                f"generator.n_teacher_identities={self.n_teacher_identities}: "
                "must be >= 0 (0 = no teacher pool)"
            )
        if not 0 < self.utt_seconds_min <= self.utt_seconds_max:
            raise ValueError(
                f"generator.utt_seconds_min={self.utt_seconds_min} / "
                f"utt_seconds_max={self.utt_seconds_max}: need 0 < min <= max"
            )
        if self.image_size < 8:
            raise ValueError(f"generator.image_size={self.image_size} is too small (>= 8)")

    def key(self) -> str:
        blob = json.dumps({"version": GENERATOR_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]


def dataset_dir(data_dir: str | Path, cfg: SynthFaceVoiceConfig) -> Path:
    return Path(data_dir) / "synth_face_voice" / cfg.key()


def generate_synth_face_voice(
    data_dir: str | Path,
    cfg: SynthFaceVoiceConfig | Mapping[str, Any] | None = None,
) -> Path:
    """Generate (or reuse) the dataset for ``cfg`` under ``data_dir``; returns its root."""
    cfg = SynthFaceVoiceConfig.from_dict(cfg)
    cfg.validate()
    info = {"generator": "synth_face_voice", "version": GENERATOR_VERSION, "params": asdict(cfg)}
    return write_once(
        dataset_dir(data_dir, cfg),
        info,
        lambda tmp: _write_dataset(tmp, cfg),
        "synthetic face-voice data",
    )


# --------------------------------------------------------------------------- structure
@dataclass(frozen=True)
class MixingStructure:
    """How factors become attributes: ``face_mixing`` [len(FACE_ATTRS), n_face_factors],
    ``voice_mixing`` [len(VOICE_ATTRS), n_voice_factors]."""

    face_mixing: np.ndarray
    voice_mixing: np.ndarray


def _orthogonal_mixing(rng: np.random.Generator, n_attrs: int, n_factors: int) -> np.ndarray:
    """[n_attrs, n_factors] with orthogonal columns of squared norm n_attrs / n_factors (each
    attribute's input has unit variance on average; every factor equally expressed)."""
    q, r = np.linalg.qr(rng.standard_normal((n_attrs, n_attrs)))
    q = q * np.sign(np.diag(r))
    return q[:, :n_factors] * math.sqrt(n_attrs / n_factors)


def mixing_structure(cfg: SynthFaceVoiceConfig) -> MixingStructure:
    """The mixing matrices, from ``structure_seed`` alone (not the data seed, not gamma)."""
    rng = np.random.default_rng([cfg.structure_seed, 7])
    return MixingStructure(
        _orthogonal_mixing(rng, len(FACE_ATTRS), cfg.n_face_factors),
        _orthogonal_mixing(rng, len(VOICE_ATTRS), cfg.n_voice_factors),
    )


# --------------------------------------------------------------------------- identities
def identity_name(i: int) -> str:
    return f"id{i + 1:05d}"


def face_attributes(face_factors: np.ndarray, structure: MixingStructure) -> np.ndarray:
    return np.tanh(face_factors @ structure.face_mixing.T)


def sample_identities(cfg: SynthFaceVoiceConfig) -> list[dict[str, Any]]:
    """Factors and face / voice attributes (each in [-1, 1]) of every paired identity."""
    structure = mixing_structure(cfg)
    rng = np.random.default_rng([cfg.seed, 1])
    n, k = cfg.n_identities, cfg.n_shared
    face_factors = rng.standard_normal((n, cfg.n_face_factors))
    own_voice = rng.standard_normal((n, cfg.n_voice_factors))  # same draw for every gamma
    voice_factors = np.concatenate([face_factors[:, :k], own_voice[:, k:]], axis=1)
    face = face_attributes(face_factors, structure)
    voice = np.tanh(voice_factors @ structure.voice_mixing.T)
    out = []
    for i in range(n):
        attrs_v = dict(zip(VOICE_ATTRS, voice[i].tolist(), strict=True))
        out.append(
            {
                "identity": identity_name(i),
                "face_factors": face_factors[i].tolist(),
                "voice_factors": voice_factors[i].tolist(),
                "n_shared_factors": k,
                "face": dict(zip(FACE_ATTRS, face[i].tolist(), strict=True)),
                "voice": attrs_v,
                "f0_hz": float(voice_params(attrs_v)["f0"]),
            }
        )
    return out


def sample_teacher_pool(cfg: SynthFaceVoiceConfig) -> list[dict[str, Any]]:
    """The face-only teacher identities: same face model, own stream, names after the
    paired identities (so the two sets are disjoint)."""
    rng = np.random.default_rng([cfg.seed, 5])
    face_factors = rng.standard_normal((cfg.n_teacher_identities, cfg.n_face_factors))
    face = face_attributes(face_factors, mixing_structure(cfg))
    return [
        {
            "identity": identity_name(cfg.n_identities + j),
            "face_factors": face_factors[j].tolist(),
            "face": dict(zip(FACE_ATTRS, face[j].tolist(), strict=True)),
        }
        for j in range(cfg.n_teacher_identities)
    ]


def linear_r2(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """R^2 of each column of ``y`` [N, M] fitted by least squares on ``x`` [N, P] + intercept."""
    design = np.column_stack([np.ones(len(x)), x])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    residual = ((y - design @ coef) ** 2).sum(axis=0)
    total = ((y - y.mean(axis=0)) ** 2).sum(axis=0)
    return 1.0 - residual / np.maximum(total, 1e-12)


def shared_information(idents: list[dict[str, Any]], cfg: SynthFaceVoiceConfig) -> dict:
    """Gamma, factor counts and the realised R^2 of voice from face (see module docstring)."""
    face_f = np.array([d["face_factors"] for d in idents])
    voice_f = np.array([d["voice_factors"] for d in idents])
    face_a = np.array([[d["face"][a] for a in FACE_ATTRS] for d in idents])
    voice_a = np.array([[d["voice"][a] for a in VOICE_ATTRS] for d in idents])
    r2_factors = linear_r2(face_f, voice_f)
    r2_attrs = linear_r2(face_a, voice_a)
    return {
        "gamma": cfg.gamma,
        "n_voice_factors": cfg.n_voice_factors,
        "n_shared_factors": cfg.n_shared,
        "n_voice_only_factors": cfg.n_voice_factors - cfg.n_shared,
        "n_face_factors": cfg.n_face_factors,
        "n_face_only_factors": cfg.n_face_factors - cfg.n_shared,
        "n_identities": len(idents),
        "r2_voice_factors_from_face_factors": float(r2_factors.mean()),
        "r2_per_voice_factor": [round(float(v), 4) for v in r2_factors],
        "r2_voice_attributes_from_face_attributes": float(r2_attrs.mean()),
        "r2_per_voice_attribute": {
            a: round(float(v), 4) for a, v in zip(VOICE_ATTRS, r2_attrs, strict=True)
        },
    }


# --------------------------------------------------------------------------- writer
def _save_face(
    path: Path, attrs: Mapping[str, float], cfg: SynthFaceVoiceConfig, rng: np.random.Generator
) -> None:
    arr = render_face(attrs, cfg.image_size, draw_face_nuisance(rng), rng)
    Image.fromarray(arr).save(path)


def _write_paired(
    root: Path, idents: list[dict[str, Any]], cfg: SynthFaceVoiceConfig
) -> dict[str, list[str]]:
    """Faces and utterances of the paired identities; utterance paths by identity."""
    utts_by_id: dict[str, list[str]] = {}
    for i, ident in enumerate(idents):
        name = ident["identity"]
        # faces and audio from their own streams: the faces never depend on the voice (gamma)
        face_rng = np.random.default_rng([cfg.seed, 2, i, 0])
        rng = np.random.default_rng([cfg.seed, 2, i, 1])
        vp = voice_params(ident["voice"])
        for v in range(cfg.videos_per_identity):
            video = f"vid{v:02d}"
            recording = draw_recording(rng)
            wav_dir = root / "wav" / name / video
            face_dir = root / "faces" / name / video
            wav_dir.mkdir(parents=True)
            face_dir.mkdir(parents=True)
            for k in range(cfg.frames_per_video):
                _save_face(face_dir / f"{k + 1:04d}.png", ident["face"], cfg, face_rng)
            for u in range(cfg.utterances_per_video):
                dur = float(rng.uniform(cfg.utt_seconds_min, cfg.utt_seconds_max))
                wave = synth_utterance(
                    vp, dur, cfg.sample_rate, rng, recording, gain_db=float(rng.uniform(-6.0, 0.0))
                )
                rel = f"{name}/{video}/{u + 1:05d}.wav"
                sf.write(root / "wav" / rel, wave, cfg.sample_rate, subtype="PCM_16")
                utts_by_id.setdefault(name, []).append(rel)
    return utts_by_id


def _write_teacher_pool(root: Path, pool: list[dict[str, Any]], cfg: SynthFaceVoiceConfig) -> None:
    for j, ident in enumerate(pool):
        rng = np.random.default_rng([cfg.seed, 6, j])
        face_dir = root / TEACHER_FACES / ident["identity"]
        face_dir.mkdir(parents=True)
        for k in range(cfg.teacher_frames_per_identity):
            _save_face(face_dir / f"{k + 1:04d}.png", ident["face"], cfg, rng)
    (root / TEACHER_POOL_LIST).write_text("".join(f"{d['identity']}\n" for d in pool))
    (root / TEACHER_IDENTITIES).write_text(json.dumps(pool, indent=1))


def _write_dataset(root: Path, cfg: SynthFaceVoiceConfig) -> dict[str, Any]:
    """Write everything but the manifest; return its entries beyond the parameters."""
    idents = sample_identities(cfg)
    utts_by_id = _write_paired(root, idents, cfg)
    names = [d["identity"] for d in idents]
    perm = np.random.default_rng([cfg.seed, 3]).permutation(len(names))
    nt, nv = cfg.n_test_identities, cfg.n_val_identities
    splits = {
        "test": sorted(names[j] for j in perm[:nt]),
        "val": sorted(names[j] for j in perm[nt : nt + nv]),
        "train": sorted(names[j] for j in perm[nt + nv :]),
    }
    (root / "splits").mkdir()
    split_of = {x: split for split, ids in splits.items() for x in ids}
    for split, ids in splits.items():
        (root / "splits" / f"{split}.txt").write_text("".join(f"{x}\n" for x in ids))
    for d in idents:
        d["split"] = split_of[d["identity"]]
    n_targets = {}
    for j, (split, n_trials) in enumerate((("val", cfg.n_val_trials), ("test", cfg.n_trials))):
        trials = make_trials(
            {x: utts_by_id[x] for x in splits[split]}, n_trials, seed=cfg.seed * 1000 + 4 + j
        )
        write_trials(root / f"trials_{split}.txt", trials)
        n_targets[split] = sum(t.label for t in trials)
    (root / IDENTITIES).write_text(json.dumps(idents, indent=1))
    pool = sample_teacher_pool(cfg)
    _write_teacher_pool(root, pool, cfg)
    structure = mixing_structure(cfg)
    return {
        "n_utterances": sum(len(v) for v in utts_by_id.values()),
        "n_face_frames": len(idents) * cfg.videos_per_identity * cfg.frames_per_video,
        "splits": {k: len(v) for k, v in splits.items()},
        "target_trials": n_targets,
        "teacher_pool": {
            "n_identities": len(pool),
            "n_face_frames": len(pool) * cfg.teacher_frames_per_identity,
        },
        "shared_information": shared_information(idents, cfg),
        "structure": {
            "face_attributes": list(FACE_ATTRS),
            "voice_attributes": list(VOICE_ATTRS),
            "face_mixing": np.round(structure.face_mixing, 6).tolist(),
            "voice_mixing": np.round(structure.voice_mixing, 6).tolist(),
        },
    }
