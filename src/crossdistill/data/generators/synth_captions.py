"""Built-in captioned-image data: procedurally drawn shapes with captions of known quality.

:func:`generate_synth_captions` writes, under ``data_dir``, a folder in the caption-folder
layout read by :class:`crossdistill.data.readers.captions.CaptionFolderDataset`::

    <data_dir>/synth_captions-<key>/manifest.json    parameters, counts (written last)
    <data_dir>/synth_captions-<key>/classes.txt
    <data_dir>/synth_captions-<key>/{train,val,test}/captions.jsonl
    <data_dir>/synth_captions-<key>/{train,val,test}/images/000000.png ...

``<key>`` hashes the generation parameters, so the same parameters reuse the folder and
different ones get a new folder. Images (default 32x32 RGB) show one object whose SHAPE is
the class (circle, square, triangle, ...); colour, size, position, rotation, background
(plain / gradient / cluttered) and pixel noise are nuisance factors drawn independently of
the class. Every caption is one of three kinds, stored per sample as ``caption_kind``:

- ``informative``: names the class ("a small red star in the top left corner");
- ``attribute_only``: only class-independent attributes ("a red thing on a busy background");
- ``corrupt``: misleading, ``corruption`` = ``wrong_class`` (another class's name),
  ``wrong_class_shuffled`` (the same, words shuffled) or ``garbled`` (the class name and
  about half of the words replaced by random letter strings, i.e. out-of-vocabulary).

Kind probabilities are ``p_informative`` / ``p_attribute_only`` / ``p_corrupt`` or, if
``informativeness`` (k in [0, 1]) is given, ``k`` / ``0.75 (1 - k)`` / ``0.25 (1 - k)``.
Each line also stores the nuisance attributes (``colour``, ``size``, ``position``,
``background``).

``independent_captions=True`` draws caption kinds and words from their own random stream,
so images, labels and nuisance attributes do not depend on the caption parameters: two
sets that differ only in ``informativeness`` then hold the same images (the text -> image
poor-teacher experiment relies on this). The default (``False``) keeps the original single
stream, i.e. the same data as before this option existed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from crossdistill.data.generators.written_once import write_once

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1
SHAPES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "cross",
    "ring",
    "star",
    "bar",
    "diamond",
    "crescent",
    "heart",
    "hexagon",
    "x",
)
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (60, 90, 235),
    "yellow": (230, 215, 40),
    "purple": (160, 70, 200),
    "orange": (245, 140, 30),
    "white": (235, 235, 235),
    "cyan": (40, 205, 215),
}
SIZES: dict[str, tuple[float, float]] = {  # half-extent in pixels at 32 px image size
    "small": (6.0, 8.0),
    "medium": (9.0, 11.0),
    "large": (12.0, 14.0),
}
BACKGROUND_WORDS = {
    "plain": ("plain", "dark", "simple"),
    "gradient": ("shaded", "gradient", "smooth"),
    "cluttered": ("cluttered", "busy", "messy"),
}
GENERIC_NOUNS = ("thing", "object", "shape", "item", "figure")
CAPTION_KINDS = ("informative", "attribute_only", "corrupt")
CORRUPTIONS = ("wrong_class", "wrong_class_shuffled", "garbled")

INFORMATIVE_TEMPLATES = (
    "a {C} {N} {P}",
    "a {Z} {C} {N} on a {B} background",
    "a photo of a {N}",
    "there is a {Z} {N} {P}",
    "a {N}, {C}, {P}, on a {B} background",
    "{C} {N}",
    "an image showing a {Z} {C} {N}",
    "a {N} {P} on a {B} background",
)
ATTRIBUTE_TEMPLATES = (
    "a {Z} {C} {G} {P}",
    "a {C} {G} on a {B} background",
    "something {C} {P}",
    "a {Z} {G}",
    "an image with a {C} {G}",
    "a {Z} {C} {G} on a {B} background",
)


@dataclass
class SynthCaptionsParams:
    """Generation parameters (all of them enter the cache key)."""

    num_classes: int = 10
    train_per_class: int = 200
    val_per_class: int = 50
    test_per_class: int = 50
    image_size: int = 32
    p_informative: float = 0.6
    p_attribute_only: float = 0.3
    p_corrupt: float = 0.1
    informativeness: float | None = None
    p_clutter: float = 0.4
    noise_std: float = 12.0
    max_rotation: float = 12.0
    seed: int = 0
    independent_captions: bool = False
    version: int = field(default=GENERATOR_VERSION)

    def kind_probs(self) -> tuple[float, float, float]:
        """(p_informative, p_attribute_only, p_corrupt), validated."""
        if self.informativeness is not None:
            k = float(self.informativeness)
            if not 0.0 <= k <= 1.0:
                raise ValueError(f"informativeness must be in [0, 1], got {k}")
            return k, 0.75 * (1 - k), 0.25 * (1 - k)
        p = (float(self.p_informative), float(self.p_attribute_only), float(self.p_corrupt))
        if min(p) < 0 or abs(sum(p) - 1.0) > 1e-6:
            raise ValueError(
                "p_informative, p_attribute_only, p_corrupt must be >= 0 and sum to 1, got "
                f"{p} (sum {sum(p):.4f}); or set informativeness in [0, 1]"
            )
        return p

    def validate(self) -> None:
        if not 2 <= self.num_classes <= len(SHAPES):
            raise ValueError(f"num_classes must be in [2, {len(SHAPES)}], got {self.num_classes}")
        for name in ("train_per_class", "val_per_class", "test_per_class"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {self.image_size}")
        if not 0.0 <= self.p_clutter <= 1.0:
            raise ValueError(f"p_clutter must be in [0, 1], got {self.p_clutter}")
        self.kind_probs()

    def key(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]


# ----------------------------------------------------------------------- drawing
def shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of ``shape`` on normalised coordinates (object spans about [-1, 1])."""
    au, av = np.abs(u), np.abs(v)
    if shape == "circle":
        return u**2 + v**2 <= 1.0
    if shape == "square":
        return np.maximum(au, av) <= 0.85
    if shape == "triangle":
        return (v <= 0.8) & (au <= (v + 1.0) / 1.8)
    if shape == "cross":
        return ((au <= 0.3) & (av <= 1.0)) | ((av <= 0.3) & (au <= 1.0))
    if shape == "ring":
        r2 = u**2 + v**2
        return (r2 <= 1.0) & (r2 >= 0.5**2)
    if shape == "star":
        rho, theta = np.hypot(u, v), np.arctan2(v, u)
        return rho <= 0.42 + 0.58 * ((np.cos(5 * (theta + np.pi / 2)) + 1) / 2) ** 2
    if shape == "bar":
        return (au <= 1.0) & (av <= 0.28)
    if shape == "diamond":
        return au + av <= 1.0
    if shape == "crescent":
        return (u**2 + v**2 <= 1.0) & ((u - 0.5) ** 2 + v**2 > 0.8**2)
    if shape == "heart":
        x, y = 1.15 * u, -1.15 * v + 0.1
        return (x**2 + y**2 - 1) ** 3 - x**2 * y**3 <= 0
    if shape == "hexagon":
        return np.maximum(au * 0.866 + av * 0.5, av) <= 0.9
    if shape == "x":
        c = np.sqrt(0.5)
        return shape_mask("cross", c * (u + v), c * (v - u))
    raise ValueError(f"unknown shape {shape!r}; known: {list(SHAPES)}")


def _background(rng: np.random.Generator, kind: str, S: int) -> np.ndarray:
    base = rng.uniform(0, 80, size=3)
    if kind == "gradient":
        other = rng.uniform(0, 110, size=3)
        t = np.linspace(0, 1, S)
        ramp = t[:, None] if rng.random() < 0.5 else t[None, :]
        img = base + (other - base) * ramp[..., None]
        return np.broadcast_to(img, (S, S, 3)).copy()
    img = np.broadcast_to(base, (S, S, 3)).copy()
    if kind == "cluttered":
        palette = list(COLOURS.values())
        for _ in range(int(rng.integers(4, 9))):
            col = np.array(palette[int(rng.integers(len(palette)))], dtype=float)
            alpha = rng.uniform(0.3, 0.7)
            w, h = (int(x) for x in rng.integers(1, max(3, S // 5), size=2))
            x0, y0 = (int(x) for x in rng.integers(0, S - 1, size=2))
            if rng.random() < 0.5:  # thin line
                w, h = (w * 3, 1) if rng.random() < 0.5 else (1, h * 3)
            patch = img[y0 : y0 + h, x0 : x0 + w]
            patch[:] = (1 - alpha) * patch + alpha * col
    return img


def _position_words(cx: float, cy: float, S: int) -> str:
    col = "left" if cx < S / 3 else ("right" if cx > 2 * S / 3 else "center")
    row = "top" if cy < S / 3 else ("bottom" if cy > 2 * S / 3 else "middle")
    if col == "center" and row == "middle":
        return "in the center"
    if col == "center":
        return f"at the {row}"
    if row == "middle":
        return f"on the {col}"
    return f"in the {row} {col} corner"


def draw_sample(
    rng: np.random.Generator, shape: str, params: SynthCaptionsParams
) -> tuple[np.ndarray, dict[str, str]]:
    """Draw one image (uint8 ``[S, S, 3]``) and return it with its nuisance attributes."""
    S = params.image_size
    scale = S / 32.0
    colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
    size = list(SIZES)[int(rng.integers(len(SIZES)))]
    r = rng.uniform(*SIZES[size]) * scale
    margin = r + 1.0
    cx, cy = (rng.uniform(margin, S - margin) if S - margin > margin else S / 2 for _ in "xy")
    u_bg = rng.random()
    bg = (
        "cluttered"
        if u_bg < params.p_clutter
        else ("plain" if u_bg < params.p_clutter + (1 - params.p_clutter) / 2 else "gradient")
    )
    img = _background(rng, bg, S)
    # supersampled (2x) mask -> anti-aliased alpha
    ss = 2
    g = (np.arange(S * ss) + 0.5) / ss
    X, Y = np.meshgrid(g, g)
    a = np.deg2rad(rng.uniform(-params.max_rotation, params.max_rotation))
    dx, dy = (X - cx) / r, (Y - cy) / r
    u = np.cos(a) * dx + np.sin(a) * dy
    v = -np.sin(a) * dx + np.cos(a) * dy
    alpha = shape_mask(shape, u, v).astype(float).reshape(S, ss, S, ss).mean(axis=(1, 3))
    col = np.clip(np.array(COLOURS[colour], dtype=float) + rng.normal(0, 12, size=3), 0, 255)
    img = img * (1 - alpha[..., None]) + col * alpha[..., None]
    img = img + rng.normal(0, rng.uniform(0, params.noise_std), size=img.shape)
    attrs = {
        "colour": colour,
        "size": size,
        "position": _position_words(cx, cy, S),
        "background": bg,
    }
    return np.clip(img, 0, 255).astype(np.uint8), attrs


# ---------------------------------------------------------------------- captions
def _fix_articles(text: str) -> str:
    words = text.split(" ")
    for i in range(len(words) - 1):
        if words[i] in ("a", "an"):
            words[i] = "an" if words[i + 1][:1] in "aeiou" and words[i + 1] else "a"
    return " ".join(words)


def _random_word(rng: np.random.Generator) -> str:
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    return "".join(rng.choice(letters, size=int(rng.integers(4, 9))))


def make_caption(
    rng: np.random.Generator,
    kind: str,
    shape: str,
    attrs: dict[str, str],
    class_names: list[str],
) -> tuple[str, str | None]:
    """Caption of the given kind; returns ``(text, corruption type or None)``."""
    fill = {
        "C": attrs["colour"],
        "Z": attrs["size"],
        "P": attrs["position"],
        "B": str(rng.choice(BACKGROUND_WORDS[attrs["background"]])),
        "G": str(rng.choice(GENERIC_NOUNS)),
    }
    if kind == "attribute_only":
        tpl = ATTRIBUTE_TEMPLATES[int(rng.integers(len(ATTRIBUTE_TEMPLATES)))]
        return _fix_articles(tpl.format(**fill)), None
    tpl = INFORMATIVE_TEMPLATES[int(rng.integers(len(INFORMATIVE_TEMPLATES)))]
    if kind == "informative":
        return _fix_articles(tpl.format(N=shape, **fill)), None
    if kind != "corrupt":
        raise ValueError(f"unknown caption kind {kind!r}; known: {list(CAPTION_KINDS)}")
    corruption = CORRUPTIONS[int(rng.integers(len(CORRUPTIONS)))]
    if corruption == "garbled":
        marker = "\x00"
        words = tpl.format(N=marker, **fill).replace(",", "").split()
        out = [_random_word(rng) if (w == marker or rng.random() < 0.5) else w for w in words]
        return " ".join(out), corruption
    others = [c for c in class_names if c != shape]
    wrong = others[int(rng.integers(len(others)))]
    text = _fix_articles(tpl.format(N=wrong, **fill))
    if corruption == "wrong_class_shuffled":
        words = text.replace(",", "").split()
        text = " ".join(words[i] for i in rng.permutation(len(words)))
    return text, corruption


# -------------------------------------------------------------------- generation
def _write_split(
    out: Path, split: str, per_class: int, params: SynthCaptionsParams, seed_offset: int
) -> dict[str, int]:
    rng = np.random.default_rng([params.seed, seed_offset])
    # captions from their own stream: images do not depend on the caption parameters
    cap_rng = (
        np.random.default_rng([params.seed, seed_offset, 1])
        if params.independent_captions
        else rng
    )
    class_names = list(SHAPES[: params.num_classes])
    probs = params.kind_probs()
    labels = rng.permutation(np.repeat(np.arange(params.num_classes), per_class))
    kinds = cap_rng.choice(len(CAPTION_KINDS), size=len(labels), p=np.array(probs) / sum(probs))
    (out / split / "images").mkdir(parents=True)
    counts = dict.fromkeys(CAPTION_KINDS, 0)
    lines = []
    for i, (y, k) in enumerate(zip(labels, kinds, strict=True)):
        shape = class_names[int(y)]
        img, attrs = draw_sample(rng, shape, params)
        kind = CAPTION_KINDS[int(k)]
        text, corruption = make_caption(cap_rng, kind, shape, attrs, class_names)
        rel = f"images/{i:06d}.png"
        Image.fromarray(img).save(out / split / rel, compress_level=1)
        counts[kind] += 1
        row = {
            "path": rel,
            "label": shape,
            "text": text,
            "caption_kind": kind,
            "corruption": corruption,
            **attrs,
        }
        lines.append(json.dumps(row))
    (out / split / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return counts


def synth_captions_root(data_dir: str | Path, params: SynthCaptionsParams) -> Path:
    return Path(data_dir) / f"synth_captions-{params.key()}"


def generate_synth_captions(
    data_dir: str | Path, params: SynthCaptionsParams | None = None, **overrides
) -> Path:
    """Generate (or reuse) the synthetic captioned-image set; returns its root folder.

    ``overrides`` are :class:`SynthCaptionsParams` fields. A folder whose manifest matches
    the parameters is reused untouched; generation goes to a temporary folder renamed into
    place at the end, so an interrupted run never leaves a half-written cache behind.
    """
    params = params or SynthCaptionsParams()
    if overrides:
        unknown = set(overrides) - set(asdict(params))
        if unknown:
            raise TypeError(
                f"unknown synth_captions parameter(s) {sorted(unknown)}; valid: "
                f"{sorted(k for k in asdict(params) if k != 'version')}"
            )
        params = SynthCaptionsParams(**{**asdict(params), **overrides})
    params.validate()
    root = synth_captions_root(data_dir, params)
    classes = list(SHAPES[: params.num_classes])

    def write(tmp: Path) -> dict[str, Any]:
        (tmp / "classes.txt").write_text("\n".join(classes) + "\n")
        counts = {}
        for off, (split, n) in enumerate(
            (
                ("train", params.train_per_class),
                ("val", params.val_per_class),
                ("test", params.test_per_class),
            )
        ):
            counts[split] = _write_split(tmp, split, n, params, off)
        return {
            "kind_probs": dict(zip(CAPTION_KINDS, params.kind_probs(), strict=True)),
            "classes": classes,
            "caption_kind_counts": counts,
        }

    info = {"generator": "crossdistill.data.generators.synth_captions", "params": asdict(params)}
    return write_once(root, info, write, "synthetic captioned images")
