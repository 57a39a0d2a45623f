"""Optical -> radar-like paired images, written in the paired-folder layout.

Two sources share one radar renderer whose knobs are the **modality gap**
(:class:`RadarParams`, see ``docs/optical_radar.md``):

- :func:`generate_synth_optical_radar`: vessel-like objects of several classes in sea scenes.
  Every sample's scene (class, size, position, heading, superstructures, sea, lighting) is
  drawn from the scene stream, and the optical image only from it; the radar image is
  rendered from the same scene with a separate radar stream. So the scenes, labels and
  optical images are byte-identical for every :class:`RadarParams` (same seed).
- :func:`generate_radar_from_images`: the optical side is a real image (MNIST IDX files or
  an image folder ``<class>/<id>.<ext>``), the radar side rendered from its grey levels.

Radar rendering: reflectivity (superstructures strong and displaced towards the sensor by
``distortion`` = layover, hull medium, sea dark) sampled through a random affine warp of
strength ``distortion``; area-averaged to ``radar_size``; plus sea clutter (``clutter``:
K-distributed background = Gamma texture x speckle, and sparse bright spikes); times
multiplicative speckle ``Gamma(looks, 1 / looks)`` (mean 1, variance ``1 / looks``);
stored as linear intensity ``clip(gain * I, 0, 255)``.

Output (cached under ``data_dir`` by a hash of all parameters, with ``manifest.json``)::

    <root>/{train,val,test}/optical/<class>/<id>.png     RGB (synth) or the source image
    <root>/{train,val,test}/radar/<class>/<id>.png       one channel, radar_size px
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from crossdistill.data.generators.written_once import write_once
from crossdistill.data.readers.captions import stratified_split
from crossdistill.data.readers.mnist_idx import available_mnist_splits, read_mnist_split
from crossdistill.data.readers.paired_folder import load_image_array, scan_modality

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1
SPLITS: tuple[str, ...] = ("train", "val", "test")
SUPERSAMPLE = 2


@dataclass(frozen=True)
class VesselClass:
    """Shape of one class. Lengths are fractions of the image side; superstructures are
    ``(position along the hull in [-1 stern, 1 bow], half-length, height)``."""

    name: str
    length: tuple[float, float]
    aspect: tuple[float, float]  # length / width
    bow: str  # pointed | round | blunt
    stern: str  # square | round
    superstructures: tuple[tuple[float, float, float], ...] = ()
    mast: bool = False


VESSELS: tuple[VesselClass, ...] = (
    VesselClass("tanker", (0.62, 0.80), (4.5, 5.5), "round", "square", ((-0.78, 0.12, 1.0),)),
    VesselClass(
        "container", (0.62, 0.80), (5.5, 6.5), "pointed", "square",
        ((-0.72, 0.08, 1.0), (0.15, 0.45, 0.45)),
    ),
    VesselClass("ferry", (0.45, 0.60), (3.2, 3.8), "round", "round", ((0.0, 0.6, 0.8),)),
    VesselClass(
        "frigate", (0.50, 0.68), (6.5, 7.5), "pointed", "square",
        ((0.15, 0.14, 1.0), (-0.35, 0.10, 0.7)),
    ),
    VesselClass("fishing", (0.26, 0.36), (2.8, 3.4), "pointed", "square", ((0.45, 0.2, 0.8),)),
    VesselClass("sailboat", (0.22, 0.32), (3.2, 3.8), "pointed", "round", (), mast=True),
    VesselClass("barge", (0.30, 0.45), (2.3, 2.8), "blunt", "square"),
    VesselClass("tug", (0.20, 0.28), (1.9, 2.3), "round", "square", ((0.05, 0.32, 1.0),)),
)  # fmt: skip
HULL_COLOURS = ((60, 60, 65), (120, 40, 35), (25, 25, 30), (95, 95, 85), (40, 50, 90))
TOP_COLOURS = ((235, 235, 230), (215, 210, 190), (170, 170, 175), (230, 120, 40))


def _key(blob: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:12]


@dataclass
class RadarParams:
    """The modality gap: radar rendering knobs (they change only the radar images).

    Args:
        radar_size: radar image side in pixels (the optical image is larger).
        looks: speckle looks ``L`` (> 0): intensity speckle ``Gamma(L, 1/L)``, variance 1/L.
        distortion: geometry in [0, 1]: random affine (rotation up to 20 deg, shear 0.5,
            scale 20 %, shift 10 % of the side, each times ``distortion``) and layover
            (superstructures displaced towards the sensor by ``0.25 * side * distortion *
            height``).
        clutter: sea clutter in [0, 1]: mean sea reflectivity ``0.3 * clutter`` with a Gamma
            texture of shape ``1 / (0.1 + 2 * clutter)`` (K-distributed after speckle) and
            bright spikes on ``3 * clutter`` % of the pixels.
        gain: stored pixel value = ``clip(gain * intensity, 0, 255)``.
    """

    radar_size: int = 16
    looks: float = 4.0
    distortion: float = 0.1
    clutter: float = 0.1
    gain: float = 100.0

    def validate(self) -> None:
        if self.radar_size < 4:
            raise ValueError(f"radar.radar_size must be >= 4, got {self.radar_size}")
        if not self.looks > 0:
            raise ValueError(f"radar.looks must be > 0, got {self.looks}")
        for name in ("distortion", "clutter"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"radar.{name} must be in [0, 1], got {getattr(self, name)}")
        if not self.gain > 0:
            raise ValueError(f"radar.gain must be > 0, got {self.gain}")


@dataclass
class SynthSceneParams:
    """Scene parameters of the built-in vessel data (they fix scenes, labels and optical
    images; the radar side adds :class:`RadarParams`)."""

    num_classes: int = 8
    train_per_class: int = 300
    val_per_class: int = 60
    test_per_class: int = 200
    image_size: int = 32
    seed: int = 0
    version: int = field(default=GENERATOR_VERSION)

    def validate(self) -> None:
        if not 2 <= self.num_classes <= len(VESSELS):
            raise ValueError(f"num_classes must be in [2, {len(VESSELS)}], got {self.num_classes}")
        for name in ("train_per_class", "val_per_class", "test_per_class"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {self.image_size}")


def make_params(cls: type, values: dict[str, Any] | None, where: str) -> Any:
    """``cls(**values)`` with one clear error for unknown keys."""
    values = dict(values or {})
    valid = [k for k in cls.__dataclass_fields__ if k != "version"]
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise TypeError(f"unknown {where} option(s) {unknown}; valid: {valid}")
    params = cls(**values)
    params.validate()
    return params


# ------------------------------------------------------------------------ geometry
def random_affine(rng: np.random.Generator, strength: float, size: float) -> np.ndarray:
    """2x3 matrix mapping output pixel coordinates to input ones: rotation, shear, scale
    and shift about the centre, each scaled by ``strength`` in [0, 1]."""
    angle = np.deg2rad(20.0 * strength * rng.uniform(-1, 1))
    shear = 0.5 * strength * rng.uniform(-1, 1)
    scale = 1.0 + 0.2 * strength * rng.uniform(-1, 1)
    shift = 0.1 * size * strength * rng.uniform(-1, 1, size=2)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    lin = rot @ np.array([[1.0, shear], [0.0, 1.0]]) / scale
    centre = np.array([size / 2, size / 2])
    offset = centre - lin @ centre + shift
    return np.concatenate([lin, offset[:, None]], axis=1)


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Supersampled pixel-centre coordinates in units of image pixels."""
    g = (np.arange(size * SUPERSAMPLE) + 0.5) / SUPERSAMPLE
    return np.meshgrid(g, g)


def _area(x: np.ndarray) -> np.ndarray:
    """Average SUPERSAMPLE x SUPERSAMPLE blocks."""
    n = x.shape[0] // SUPERSAMPLE
    return x.reshape(n, SUPERSAMPLE, n, SUPERSAMPLE).mean(axis=(1, 3))


# ---------------------------------------------------------------------- scenes
def draw_scene(rng: np.random.Generator, label: int, size: int) -> dict[str, Any]:
    """Everything about one scene, from the scene stream only."""
    vessel = VESSELS[label]
    length = rng.uniform(*vessel.length) * size
    half = length / 2
    margin = half * 0.8 + 1
    sun = rng.uniform(0, 2 * np.pi)
    tops = [
        (pos + rng.uniform(-0.05, 0.05), hl * rng.uniform(0.85, 1.15), h * rng.uniform(0.8, 1.2))
        for pos, hl, h in vessel.superstructures
    ]
    return {
        "label": label,
        "half_length": half,
        "half_width": 1.0 / rng.uniform(*vessel.aspect),
        "centre": rng.uniform(margin, size - margin, size=2)
        if size > 2 * margin
        else (size / 2,) * 2,
        "heading": rng.uniform(0, 2 * np.pi),
        "tops": tops,
        "hull_colour": np.array(HULL_COLOURS[int(rng.integers(len(HULL_COLOURS)))], float),
        "top_colour": np.array(TOP_COLOURS[int(rng.integers(len(TOP_COLOURS)))], float),
        "sea_colour": np.array([rng.uniform(10, 45), rng.uniform(45, 95), rng.uniform(80, 150)]),
        "light": rng.uniform(0.7, 1.25),
        "sun": 1.5 * np.array([np.cos(sun), np.sin(sun)]) * size / 32,
        "wake": rng.random() < 0.5,
    }


def _hull_frame(scene: dict[str, Any], x: np.ndarray, y: np.ndarray):
    cx, cy = scene["centre"]
    c, s = np.cos(scene["heading"]), np.sin(scene["heading"])
    u = ((x - cx) * c + (y - cy) * s) / scene["half_length"]
    v = (-(x - cx) * s + (y - cy) * c) / scene["half_length"]
    return u, v


def _hull_mask(vessel: VesselClass, hw: float, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    width = np.full_like(u, hw)
    bow = u.clip(0, 1)
    if vessel.bow == "pointed":
        width = np.where(u > 0.3, hw * (1 - (bow - 0.3) / 0.7).clip(0, 1) ** 0.7, width)
    elif vessel.bow == "round":
        width = np.where(u > 0.75, hw * np.sqrt((1 - ((bow - 0.75) / 0.25) ** 2).clip(0)), width)
    else:  # blunt: small chamfer
        width = np.where(u > 0.9, hw * (1 - 0.3 * (bow - 0.9) / 0.1), width)
    if vessel.stern == "round":
        stern = (-u).clip(0, 1)
        width = np.where(u < -0.8, hw * np.sqrt((1 - ((stern - 0.8) / 0.2) ** 2).clip(0)), width)
    return (np.abs(u) <= 1) & (np.abs(v) <= width)


def _top_masks(scene: dict[str, Any], u: np.ndarray, v: np.ndarray) -> list[np.ndarray]:
    hw = scene["half_width"]
    return [(np.abs(u - p) <= hl) & (np.abs(v) <= 0.75 * hw) for p, hl, _ in scene["tops"]]


def render_optical(scene: dict[str, Any], rng: np.random.Generator, size: int) -> np.ndarray:
    """Clean RGB view (uint8 ``[S, S, 3]``): sea texture, wake, hull, superstructures."""
    vessel = VESSELS[scene["label"]]
    x, y = _grid(size)
    u, v = _hull_frame(scene, x, y)
    coarse = rng.normal(0, 1, size=(max(size // 6, 2),) * 2)
    swell = np.asarray(
        Image.fromarray(coarse.astype(np.float32), "F").resize((size, size), Image.BICUBIC)
    )
    waves = np.sin(rng.uniform(0.6, 1.4) * (x * np.cos(scene["heading"] * 3) + y))
    img = scene["sea_colour"] + (8 * swell[..., None] + 4 * _area(waves)[..., None])
    img = np.broadcast_to(img, (size, size, 3)).copy()
    layers: list[tuple[np.ndarray, np.ndarray]] = []
    hw = scene["half_width"]
    if scene["wake"]:
        behind = (-1 - u).clip(0)
        wake = (u < -1) & (u > -2.4) & (np.abs(v) <= hw * (1 + 0.8 * behind))
        layers.append((0.35 * _area(wake * (1 - behind / 1.4)), np.array([220.0, 230, 235])))
    layers.append((_area(_hull_mask(vessel, hw, u, v)), scene["hull_colour"]))
    sun = scene["sun"]
    for p, hl, height in scene["tops"]:  # shadow cast by each superstructure, then its top
        us, vs = _hull_frame(scene, x - sun[0] * height, y - sun[1] * height)
        shadow = (np.abs(us - p) <= hl) & (np.abs(vs) <= 0.75 * hw)
        layers.append((0.6 * _area(shadow), np.zeros(3)))
    for mask in _top_masks(scene, u, v):
        layers.append((_area(mask), scene["top_colour"]))
    if vessel.mast:
        sail = (u > -0.5) & (u < 0.6) & (np.abs(v + 0.3 * hw * (u - 0.6)) <= 0.2 * hw)
        layers.append((_area(sail), np.array([245.0, 245, 240])))
    for alpha, colour in layers:
        img = img * (1 - alpha[..., None]) + colour * alpha[..., None]
    img = img * scene["light"] + rng.normal(0, rng.uniform(0, 5), size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def scene_reflectivity(
    scene: dict[str, Any], rng: np.random.Generator, size: int, params: RadarParams
) -> np.ndarray:
    """Radar reflectivity of a scene on the supersampled grid, through the radar's affine
    warp and layover (sensor towards -y)."""
    vessel = VESSELS[scene["label"]]
    x, y = _grid(size)
    m = random_affine(rng, params.distortion, size)
    xw, yw = m[0, 0] * x + m[0, 1] * y + m[0, 2], m[1, 0] * x + m[1, 1] * y + m[1, 2]
    u, v = _hull_frame(scene, xw, yw)
    hull = rng.uniform(0.25, 0.45)
    refl = hull * _hull_mask(vessel, scene["half_width"], u, v)
    layover = 0.25 * size * params.distortion
    for p, hl, height in scene["tops"]:
        uu, vv = _hull_frame(scene, xw, yw + layover * height)
        top = (np.abs(uu - p) <= hl) & (np.abs(vv) <= 0.75 * scene["half_width"])
        refl = np.maximum(refl, rng.uniform(0.8, 1.2) * height * top)
    if vessel.mast:
        uu, vv = _hull_frame(scene, xw, yw + layover * 1.5)
        refl = np.maximum(refl, 1.6 * (np.hypot(uu - 0.1, vv) <= 0.07))
    return refl


# ------------------------------------------------------------------------ radar
def speckle(shape: tuple[int, ...], looks: float, rng: np.random.Generator) -> np.ndarray:
    """Multiplicative intensity speckle of ``looks`` looks: ``Gamma(L, 1/L)``, mean 1,
    variance ``1 / L``."""
    return rng.gamma(looks, 1.0 / looks, size=shape)


def sea_clutter(shape: tuple[int, ...], clutter: float, rng: np.random.Generator) -> np.ndarray:
    """Additive sea reflectivity: Gamma texture (K-distributed after speckle) + spikes."""
    if clutter <= 0:
        return np.zeros(shape)
    nu = 1.0 / (0.1 + 2.0 * clutter)
    texture = 0.3 * clutter * rng.gamma(nu, 1.0 / nu, size=shape)
    spikes = (rng.random(shape) < 0.03 * clutter) * rng.uniform(0.5, 1.5, size=shape)
    return texture + spikes


def finish_radar(reflectivity: np.ndarray, params: RadarParams, rng: np.random.Generator):
    """Area-resample to ``radar_size``, add clutter, apply speckle, quantise (uint8)."""
    r = params.radar_size
    image = Image.fromarray(reflectivity.astype(np.float32), "F")
    low = np.asarray(image.resize((r, r), Image.BOX), dtype=np.float64)
    intensity = (low + sea_clutter(low.shape, params.clutter, rng)) * speckle(
        low.shape, params.looks, rng
    )
    return np.clip(np.rint(params.gain * intensity), 0, 255).astype(np.uint8)


def radar_from_image(image: np.ndarray, params: RadarParams, rng: np.random.Generator):
    """Radar view of a real image (grey levels = reflectivity, no layover)."""
    grey = image.astype(np.float32).mean(axis=-1) if image.ndim == 3 else image.astype(np.float32)
    side = max(grey.shape)
    m = random_affine(rng, params.distortion, side)
    warped = Image.fromarray(grey / 255.0, "F").transform(
        grey.shape[::-1], Image.AFFINE, tuple(m.ravel()), resample=Image.BILINEAR
    )
    return finish_radar(np.asarray(warped), params, rng)


# ------------------------------------------------------------------------ writing
def _save(array: np.ndarray, path: Path) -> None:
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    Image.fromarray(array).save(path, compress_level=1)


def _write_split(
    out: Path,
    split: str,
    classes: Sequence[str],
    samples: Iterator[tuple[int, str, np.ndarray, np.ndarray]],
) -> dict[str, int]:
    for modality in ("optical", "radar"):
        for name in classes:
            (out / split / modality / name).mkdir(parents=True, exist_ok=True)
    counts = dict.fromkeys(classes, 0)
    for label, sample_id, optical, radar in samples:
        name = classes[label]
        _save(optical, out / split / "optical" / name / f"{sample_id}.png")
        _save(radar, out / split / "radar" / name / f"{sample_id}.png")
        counts[name] += 1
    return counts


def synth_root(data_dir: str | Path, scene: SynthSceneParams, radar: RadarParams) -> Path:
    key = _key({"scene": asdict(scene), "radar": asdict(radar)})
    return Path(data_dir) / "optical_radar" / f"synth-{key}"


def generate_synth_optical_radar(
    data_dir: str | Path, scene: SynthSceneParams | None = None, radar: RadarParams | None = None
) -> Path:
    """Generate (or reuse) the built-in vessel pairs; returns the paired-folder root."""
    scene = scene or SynthSceneParams()
    radar = radar or RadarParams()
    scene.validate()
    radar.validate()
    classes = [v.name for v in VESSELS[: scene.num_classes]]
    size = scene.image_size

    def samples(offset: int, per_class: int) -> Iterator[tuple[int, str, np.ndarray, np.ndarray]]:
        scene_rng = np.random.default_rng([scene.seed, offset, 0])
        radar_rng = np.random.default_rng([scene.seed, offset, 1])
        labels = scene_rng.permutation(np.repeat(np.arange(scene.num_classes), per_class))
        for i, label in enumerate(labels):
            drawn = draw_scene(scene_rng, int(label), size)
            optical = render_optical(drawn, scene_rng, size)
            refl = scene_reflectivity(drawn, radar_rng, size, radar)
            yield int(label), f"{i:06d}", optical, finish_radar(refl, radar, radar_rng)

    def write(tmp: Path) -> dict[str, dict[str, dict[str, int]]]:
        per_split = (scene.train_per_class, scene.val_per_class, scene.test_per_class)
        return {
            "counts": {
                split: _write_split(tmp, split, classes, samples(offset, n))
                for offset, (split, n) in enumerate(zip(SPLITS, per_split, strict=True))
            }
        }

    info = {
        "generator": "crossdistill.data.generators.synth_optical_radar",
        "scene": asdict(scene),
        "radar": asdict(radar),
        "classes": classes,
    }
    return write_once(synth_root(data_dir, scene, radar), info, write, "optical/radar pairs")


# ------------------------------------------------------------------ real images
IMAGE_SOURCES: tuple[str, ...] = ("mnist", "image_folder")


def _source_listing(source: str, root: Path) -> list[tuple[str, int]]:
    if source == "mnist":
        files = sorted(p for p in root.iterdir() if "-ubyte" in p.name)
    else:
        files = sorted(p for p in root.rglob("*") if p.is_file())
    return [(str(p.relative_to(root)), p.stat().st_size) for p in files]


def _load_source(
    source: str, root: Path
) -> tuple[list[str], Callable[[int], np.ndarray], np.ndarray, list[str], np.ndarray | None]:
    """(classes, load(i) -> uint8 image, labels, sample ids, is_test mask or None)."""
    if source == "mnist":
        prefixes = available_mnist_splits(root)
        if not prefixes:
            raise FileNotFoundError(
                f"MNIST folder {root}: no {{train,t10k}}-images-idx3-ubyte[.gz] with matching "
                "labels-idx1-ubyte[.gz] files"
            )
        parts = [read_mnist_split(root, p) for p in prefixes]
        images = np.concatenate([im for im, _ in parts])
        labels = np.concatenate([lab for _, lab in parts])
        ids = [
            f"{p}-{i:05d}"
            for p, (_, lab) in zip(prefixes, parts, strict=True)
            for i in range(len(lab))
        ]
        is_test = np.array([i.startswith("t10k") for i in ids]) if len(prefixes) == 2 else None
        return [str(d) for d in range(10)], lambda i: images[i], labels, ids, is_test
    scanned = scan_modality(root)
    classes = sorted(scanned)
    paths = [scanned[c][k] for c in classes for k in sorted(scanned[c])]
    labels = np.array([i for i, c in enumerate(classes) for _ in scanned[c]], dtype=np.int64)
    ids = [p.stem for p in paths]
    return classes, lambda i: load_image_array(paths[i], "RGB"), labels, ids, None


def carve_splits(
    labels: np.ndarray,
    is_test: np.ndarray | None,
    val_fraction: float,
    test_fraction: float,
    max_per_class: int | None,
    seed: int,
) -> dict[str, np.ndarray]:
    """Stratified, seeded train/val/test indices: a given test part (``is_test``) is kept
    as test; ``max_per_class`` keeps at most that many of each class in the rest (seeded),
    from which ``test_fraction`` (unless given) and ``val_fraction`` are carved."""
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"val_fraction + test_fraction must be < 1, got {val_fraction} + {test_fraction}"
        )
    pool = np.arange(len(labels))
    if is_test is not None:
        test, pool = pool[is_test], pool[~is_test]
    if max_per_class:
        rng = np.random.default_rng([seed, 2])
        kept = [
            rng.permutation(pool[labels[pool] == c])[:max_per_class]
            for c in np.unique(labels[pool])
        ]
        pool = np.sort(np.concatenate(kept))
    if is_test is None:
        pool_keep, test_part = stratified_split(labels[pool], test_fraction, seed)
        test, pool = pool[test_part], pool[pool_keep]
    share = val_fraction / max(1.0 - (0 if is_test is not None else test_fraction), 1e-6)
    keep, val_part = stratified_split(labels[pool], min(share, 0.99), seed + 1)
    return {"train": pool[keep], "val": pool[val_part], "test": test}


def generate_radar_from_images(
    data_dir: str | Path,
    source: str,
    root: str | Path,
    radar: RadarParams | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    max_per_class: int | None = None,
    seed: int = 0,
) -> Path:
    """Paired folder of real images (optical side, unchanged) and their radar renderings.

    ``source``: ``mnist`` (IDX files in ``root``: with both ``train`` and ``t10k`` files,
    t10k is the test split; with one of them, test is carved) or ``image_folder``
    (``root/<class>/<id>.<ext>``). ``max_per_class`` caps the training pool per class.
    """
    if source not in IMAGE_SOURCES:
        raise ValueError(f"source={source!r} is not valid; use one of {list(IMAGE_SOURCES)}")
    radar = radar or RadarParams()
    radar.validate()
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"{source} folder {root} does not exist")
    options = {
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "max_per_class": max_per_class,
        "seed": seed,
    }
    listing = _source_listing(source, root)
    key = _key({"radar": asdict(radar), "root": str(root), "files": listing, **options})
    info = {
        "generator": "crossdistill.data.generators.synth_optical_radar",
        "source": source,
        "root": str(root),
        "radar": asdict(radar),
        "options": options,
        "version": GENERATOR_VERSION,
    }

    def write(tmp: Path) -> dict[str, dict[str, dict[str, int]]]:
        classes, load, labels, ids, is_test = _load_source(source, root)
        parts = carve_splits(labels, is_test, val_fraction, test_fraction, max_per_class, seed)

        def samples(offset: int, indices: np.ndarray):
            radar_rng = np.random.default_rng([seed, offset, 1])
            for i in indices:
                image = load(int(i))
                radar_image = radar_from_image(image, radar, radar_rng)
                yield int(labels[i]), ids[i], image, radar_image

        return {
            "counts": {
                split: _write_split(tmp, split, classes, samples(offset, parts[split]))
                for offset, split in enumerate(SPLITS)
            }
        }

    out = Path(data_dir) / "optical_radar" / f"{source}-{key}"
    return write_once(out, info, write, "optical/radar pairs")
