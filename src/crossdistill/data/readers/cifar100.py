"""CIFAR-100 (python pickle release) with per-sample text built from class names.

Expected layout (the standard ``cifar-100-python.tar.gz``, extracted; nothing is ever
downloaded)::

    <root>/cifar-100-python/train   pickle: b'data' uint8 [50000, 3072] (R, G, B planes of
    <root>/cifar-100-python/test            32x32), b'fine_labels', b'coarse_labels'
    <root>/cifar-100-python/meta    pickle: b'fine_label_names', b'coarse_label_names'

``root`` may also point at the ``cifar-100-python`` folder itself. Each sample gets a
description ``template.format(name=<class name>)`` with the template picked per sample by
a seeded RNG (deterministic for a given ``template_seed``).
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

FOLDER = "cifar-100-python"
SPLITS = ("train", "test")
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {name}.",
    "a blurry photo of the {name}.",
    "a low resolution photo of a {name}.",
    "a close-up photo of the {name}.",
    "a bright photo of a {name}.",
    "a dark photo of the {name}.",
    "a cropped photo of a {name}.",
    "a small image of a {name}.",
    "a picture of the {name}.",
    "this is a {name}.",
)
LAYOUT_HELP = (
    "expected the CIFAR-100 python release extracted as <root>/cifar-100-python/{train,test,"
    "meta} (pickles with keys b'data' [N,3072] uint8, b'fine_labels', b'coarse_labels'; "
    "meta: b'fine_label_names'); get cifar-100-python.tar.gz from "
    "https://www.cs.toronto.edu/~kriz/cifar.html and extract it under <root>"
)


def resolve_cifar100_dir(root: str | Path) -> Path:
    """Return the ``cifar-100-python`` folder under (or at) ``root``; clear error if absent."""
    root = Path(root).expanduser()
    for cand in (root / FOLDER, root):
        missing = [str(cand / f) for f in ("train", "test", "meta") if not (cand / f).is_file()]
        if not missing:
            return cand
        if len(missing) < 3:  # a partial release: name the files that are not there
            raise FileNotFoundError(f"CIFAR-100 file(s) missing: {missing}; {LAYOUT_HELP}")
    present = sorted(p.name for p in root.iterdir())[:10] if root.is_dir() else None
    state = f"contains {present}" if present is not None else "does not exist"
    raise FileNotFoundError(f"CIFAR-100 not found at {root} ({state}); {LAYOUT_HELP}")


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="bytes")
    except Exception as e:
        raise ValueError(f"cannot read CIFAR-100 pickle {path}: {type(e).__name__}: {e}") from e


def _get(d: dict, key: str, path: Path) -> Any:
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    raise KeyError(f"{path}: missing key b'{key}'; keys present: {sorted(map(str, d))}")


def _names(raw: Sequence[bytes | str]) -> list[str]:
    out = []
    for n in raw:
        s = n.decode() if isinstance(n, bytes) else str(n)
        out.append(s.replace("_", " "))
    return out


def load_cifar100_split(
    root: str | Path, split: str, label_level: str = "fine"
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Load one split: ``(images uint8 [N, 32, 32, 3], labels int64 [N], class names)``.

    Class names have underscores replaced by spaces (``aquarium fish``).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    if label_level not in ("fine", "coarse"):
        raise ValueError(f"label_level must be 'fine' or 'coarse', got {label_level!r}")
    d = resolve_cifar100_dir(root)
    data = _unpickle(d / split)
    meta = _unpickle(d / "meta")
    x = np.asarray(_get(data, "data", d / split), dtype=np.uint8)
    if x.ndim != 2 or x.shape[1] != 3072:
        raise ValueError(f"{d / split}: b'data' must have shape [N, 3072], got {x.shape}")
    images = x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()
    labels = np.asarray(_get(data, f"{label_level}_labels", d / split), dtype=np.int64)
    names = _names(_get(meta, f"{label_level}_label_names", d / "meta"))
    if len(labels) != len(images):
        raise ValueError(f"{d / split}: {len(images)} images but {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
        raise ValueError(
            f"{d / split}: labels in [{labels.min()}, {labels.max()}] but meta lists "
            f"{len(names)} {label_level} class names"
        )
    return images, labels, names


def describe(names: Sequence[str], labels: np.ndarray, templates: Sequence[str], seed: int):
    """Per-sample descriptions: a seeded template choice per sample filled with its class."""
    for t in templates:
        if "{name}" not in t:
            raise ValueError(f"caption template {t!r} lacks the '{{name}}' placeholder")
    choice = np.random.default_rng(seed).integers(len(templates), size=len(labels))
    return [templates[c].format(name=names[y]) for c, y in zip(choice, labels, strict=True)]


class CIFAR100Captioned:
    """CIFAR-100 split with class-name captions.

    Args:
        root: folder containing ``cifar-100-python/`` (or that folder itself).
        split: ``train`` or ``test`` (validation is carved from train by the data module,
            see :func:`crossdistill.data.readers.captions.stratified_split`).
        label_level: ``fine`` (100 classes) or ``coarse`` (20 super-classes).
        templates: caption templates with a ``{name}`` placeholder.
        template_seed: seed of the per-sample template choice (differs per split).

    ``__getitem__`` returns ``{"image": PIL.Image, "label": int, "text": str}``.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        label_level: str = "fine",
        templates: Sequence[str] | None = None,
        template_seed: int = 0,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.images, self.labels, self.classes = load_cifar100_split(root, split, label_level)
        self.templates = list(templates or DEFAULT_TEMPLATES)
        if not self.templates:
            raise ValueError("templates must not be empty")
        self.texts = describe(
            self.classes, self.labels, self.templates, template_seed + SPLITS.index(split)
        )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, i: int) -> Image.Image:
        return Image.fromarray(self.images[i])

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": self.load(i), "label": int(self.labels[i]), "text": self.texts[i]}


def write_cifar100_like(
    root: str | Path,
    images: dict[str, np.ndarray],
    fine_labels: dict[str, Sequence[int]],
    fine_names: Sequence[str],
    coarse_labels: dict[str, Sequence[int]] | None = None,
    coarse_names: Sequence[str] | None = None,
) -> Path:
    """Write arrays in the CIFAR-100 pickle format (for tests and small custom sets).

    ``images[split]`` is uint8 ``[N, 32, 32, 3]`` for split in ``train`` / ``test``.
    """
    d = Path(root) / FOLDER
    d.mkdir(parents=True, exist_ok=True)
    coarse_names = list(coarse_names or ["all"])
    for split in SPLITS:
        x = np.asarray(images[split], dtype=np.uint8)
        if x.shape[1:] != (32, 32, 3):
            raise ValueError(f"images[{split!r}] must be [N, 32, 32, 3], got {x.shape}")
        fl = list(map(int, fine_labels[split]))
        cl = list(map(int, coarse_labels[split])) if coarse_labels else [0] * len(fl)
        obj = {
            b"filenames": [f"{i}.png".encode() for i in range(len(x))],
            b"data": x.transpose(0, 3, 1, 2).reshape(len(x), 3072),
            b"fine_labels": fl,
            b"coarse_labels": cl,
        }
        with open(d / split, "wb") as f:
            pickle.dump(obj, f)
    meta = {
        b"fine_label_names": [n.encode() for n in fine_names],
        b"coarse_label_names": [n.encode() for n in coarse_names],
    }
    with open(d / "meta", "wb") as f:
        pickle.dump(meta, f)
    return d
