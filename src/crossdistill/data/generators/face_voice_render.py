"""Renderers of the synthetic face -> voice data: a face frame and an utterance from
identity attributes (each in [-1, 1]) plus nuisances drawn per frame / per recording.

Faces: ellipse faces drawn with PIL at 4x and downsampled; identity = geometry (face
width / height, eye spacing / height, mouth width / curvature) and colours (skin, hair,
iris). Nuisances, all drawn per frame (:func:`draw_face_nuisance`): pose (shift, scale,
small in-plane rotation), light direction / strength / level, background colour, sensor
noise. Voices: a source-filter model (glottal pulse train with jittered, intonated f0 ->
spectral tilt -> lip radiation -> three formant resonators per vowel scaled by
vocal-tract length), syllable amplitude modulation at the speaking rate, pauses,
per-utterance pitch jitter and loudness, and a per-recording channel (first-order
colouring) and background noise level.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from scipy.signal import lfilter

FACE_ATTRS = (
    "face_width",
    "face_height",
    "skin_tone",
    "eye_spacing",
    "eye_height",
    "mouth_width",
    "mouth_curve",
    "hair_colour",
    "eye_colour",
)
VOICE_ATTRS = ("pitch", "vocal_tract", "spectral_tilt", "formant2", "breathiness", "speaking_rate")
# (F1, F2, F3) in Hz for an average vocal tract: /a/ /i/ /u/ /e/ /o/
VOWELS = np.array(
    [[730, 1090, 2440], [270, 2290, 3010], [300, 870, 2240], [530, 1840, 2480], [570, 840, 2410]],
    dtype=np.float64,
)
BANDWIDTHS = np.array([80.0, 100.0, 130.0])


# --------------------------------------------------------------------------- voice
def voice_params(a: Mapping[str, float]) -> dict[str, float]:
    """Physical voice parameters from attributes in [-1, 1]."""
    return {
        "f0": 150.0 * 2.0 ** (0.8 * a["pitch"]),  # ~86-262 Hz
        "vtl": 1.0 + 0.15 * a["vocal_tract"],  # formant frequencies divided by this
        "tilt": 0.75 + 0.2 * (a["spectral_tilt"] + 1) / 2,  # one-pole coefficient
        "f2": 1.0 + 0.1 * a["formant2"],
        "breath": 0.1 + 0.3 * (a["breathiness"] + 1) / 2,  # noise/pulse amplitude
        "rate": 4.0 * 2.0 ** (0.45 * a["speaking_rate"]),
    }  # syllables / s


def draw_recording(rng: np.random.Generator) -> dict[str, float]:
    """Per-recording (video) audio nuisances: background-noise SNR and channel colouring."""
    return {
        "noise_snr_db": float(rng.uniform(25.0, 40.0)),
        "channel": float(rng.uniform(-0.3, 0.3)),
    }


def _resonator(freq: np.ndarray, bw: np.ndarray, sr: int) -> tuple[np.ndarray, np.ndarray]:
    """Two-pole resonators (unity DC gain): (a_coeffs [K, 3], b_coeffs [K, 3])."""
    r = np.exp(-math.pi * bw / sr)
    theta = 2 * math.pi * np.minimum(freq, 0.45 * sr) / sr
    a = np.stack([np.ones_like(r), -2 * r * np.cos(theta), r**2], axis=1)
    b = np.zeros_like(a)
    b[:, 0] = a.sum(axis=1)
    return a, b


def synth_utterance(
    p: Mapping[str, float],
    duration: float,
    sr: int,
    rng: np.random.Generator,
    recording: Mapping[str, float],
    gain_db: float,
) -> np.ndarray:
    """One utterance (float32 in [-1, 1]) from :func:`voice_params` output ``p`` and the
    recording's nuisances (:func:`draw_recording`)."""
    n = int(duration * sr)
    t = np.arange(n) / sr
    # source: pulse train with per-utterance pitch jitter and slow intonation
    f0 = (
        p["f0"]
        * (1 + rng.normal(0, 0.03))
        * (1 + 0.08 * np.sin(2 * math.pi * rng.uniform(0.3, 0.8) * t + rng.uniform(0, 2 * math.pi)))
    )
    phase = np.cumsum(f0 / sr)
    src = np.diff(np.floor(phase), prepend=0.0)
    # aspiration noise at a harmonics-to-noise ratio of ~10-20 dB (pulse power = f0 / sr)
    src = src + p["breath"] * np.sqrt(f0 / sr) * rng.standard_normal(n)
    x = src
    for _ in range(2):  # glottal spectral tilt
        x = lfilter([1 - p["tilt"], 0.0], [1.0, -p["tilt"]], x)
    x = np.diff(x, prepend=x[:1])  # lip radiation
    # filter: one resonator cascade per vowel
    formants = VOWELS / p["vtl"]
    formants[:, 1] *= p["f2"]
    coeffs = [_resonator(formants[:, k], np.full(len(VOWELS), BANDWIDTHS[k]), sr) for k in range(3)]
    voiced = np.empty((len(VOWELS), n))
    for v in range(len(VOWELS)):
        y = x
        for a, b in coeffs:
            y = lfilter(b[v], a[v], y)
        voiced[v] = y
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
    speech[1:] += recording["channel"] * speech[:-1]  # the recording channel's colouring
    speech /= max(np.abs(speech).max(), 1e-9)
    speech *= 0.5 * 10 ** (gain_db / 20)
    p_speech = float(np.mean(speech**2))
    snr = recording["noise_snr_db"]
    speech += rng.standard_normal(n) * math.sqrt(p_speech / 10 ** (snr / 10))
    return np.clip(speech, -1.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------- face
def draw_face_nuisance(rng: np.random.Generator) -> dict[str, Any]:
    """Nuisances of one face frame: pose (shift, scale, in-plane rotation in degrees),
    light (direction, strength of the gradient, level) and background colour."""
    return {
        "background": tuple(int(c) for c in rng.integers(0, 256, 3)),
        "shift_x": float(rng.uniform(-0.05, 0.05)),
        "shift_y": float(rng.uniform(-0.04, 0.04)),
        "scale": float(rng.uniform(0.95, 1.05)),
        "rotation": float(rng.uniform(-8.0, 8.0)),
        "light_angle": float(rng.uniform(0, 2 * math.pi)),
        "light_strength": float(rng.uniform(0.0, 0.35)),
        "light_level": float(rng.uniform(0.85, 1.15)),
    }


def _mix(c0: tuple[float, ...], c1: tuple[float, ...], w: float) -> tuple[int, ...]:
    return tuple(int(round(a + (b - a) * w)) for a, b in zip(c0, c1, strict=True))


def render_face(
    a: Mapping[str, float], size: int, nuisance: Mapping[str, Any], rng: np.random.Generator
) -> np.ndarray:
    """One face frame, uint8 [size, size, 3]: identity attributes ``a``, the frame's
    ``nuisance`` (:func:`draw_face_nuisance`); ``rng`` draws the sensor noise."""
    s = size * 4
    img = Image.new("RGB", (s, s), nuisance["background"])
    d = ImageDraw.Draw(img)
    scale = nuisance["scale"]
    cx = s / 2 + nuisance["shift_x"] * s
    cy = s / 2 + nuisance["shift_y"] * s
    fw = s * (0.30 + 0.07 * a["face_width"]) * scale
    fh = s * (0.38 + 0.06 * a["face_height"]) * scale
    w = (a["hair_colour"] + 1) / 2
    hair = (
        _mix((40, 25, 15), (225, 190, 110), w)
        if w < 0.75
        else _mix((225, 190, 110), (170, 60, 30), (w - 0.75) * 4)
    )
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
    img = img.rotate(
        nuisance["rotation"],
        resample=Image.BILINEAR,
        center=(cx, cy),
        fillcolor=nuisance["background"],
    )
    small = img.resize((size, size), Image.LANCZOS)
    arr = np.asarray(small, dtype=np.float64) / 255.0
    # lighting: a linear gradient in the light direction times a level; then sensor noise
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1) - 0.5
    ang = nuisance["light_angle"]
    grad = 1 + nuisance["light_strength"] * (np.cos(ang) * xx + np.sin(ang) * yy)
    arr = arr * (grad * nuisance["light_level"])[..., None] + rng.normal(0, 0.015, arr.shape)
    return (np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8)
