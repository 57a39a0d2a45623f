"""MNIST IDX files: ``{train,t10k}-images-idx3-ubyte`` / ``-labels-idx1-ubyte``, optionally
``.gz``.

IDX layout (big-endian): magic ``0x00000803`` (images, uint8, 3 dims) or ``0x00000801``
(labels, uint8, 1 dim), then one uint32 per dimension, then the data. A wrong magic number,
a truncated file or an image/label count mismatch raises :class:`IdxFormatError` naming the
file.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
PREFIXES: tuple[str, ...] = ("train", "t10k")


class IdxFormatError(ValueError):
    """A malformed IDX file (the message names the file and what is wrong)."""


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError) as e:  # bad gzip stream, truncated gzip
        raise IdxFormatError(f"{path}: cannot read IDX file: {type(e).__name__}: {e}") from e


def read_idx(path: str | Path, expected_magic: int) -> np.ndarray:
    """The uint8 array stored in one IDX file (gzipped or plain)."""
    path = Path(path)
    raw = _read_bytes(path)
    ndim = {IMAGES_MAGIC: 3, LABELS_MAGIC: 1}[expected_magic]
    header = 4 + 4 * ndim
    if len(raw) < 4:
        raise IdxFormatError(f"{path}: truncated IDX file ({len(raw)} bytes, no magic number)")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected_magic:
        raise IdxFormatError(
            f"{path}: wrong magic number 0x{magic:08x}; expected 0x{expected_magic:08x} "
            f"({'images' if expected_magic == IMAGES_MAGIC else 'labels'}, uint8, {ndim}-d)"
        )
    if len(raw) < header:
        raise IdxFormatError(f"{path}: truncated IDX header ({len(raw)} of {header} bytes)")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    size = int(np.prod(shape))
    if len(raw) - header < size:
        raise IdxFormatError(
            f"{path}: truncated IDX file: header says shape {shape} ({size} bytes of data), "
            f"the file holds {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, count=size, offset=header).reshape(shape)


def find_idx_file(root: Path, name: str) -> Path | None:
    """``root/name`` or ``root/name.gz``, whichever exists (plain first)."""
    for cand in (root / name, root / f"{name}.gz"):
        if cand.is_file():
            return cand
    return None


def read_mnist_split(root: str | Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """Images ``uint8 [N, 28, 28]`` and labels ``int64 [N]`` of ``prefix`` (train | t10k)."""
    root = Path(root)
    if prefix not in PREFIXES:
        raise ValueError(f"MNIST prefix {prefix!r} is not valid; use one of {list(PREFIXES)}")
    image_file = find_idx_file(root, f"{prefix}-images-idx3-ubyte")
    label_file = find_idx_file(root, f"{prefix}-labels-idx1-ubyte")
    if image_file is None or label_file is None:
        missing = [
            f"{prefix}-{kind}-ubyte[.gz]"
            for kind, f in (("images-idx3", image_file), ("labels-idx1", label_file))
            if f is None
        ]
        raise FileNotFoundError(f"MNIST folder {root}: missing {missing}")
    images = read_idx(image_file, IMAGES_MAGIC)
    labels = read_idx(label_file, LABELS_MAGIC).astype(np.int64)
    if len(images) != len(labels):
        raise IdxFormatError(
            f"{image_file}: {len(images)} images but {label_file} holds {len(labels)} labels"
        )
    return images, labels


def available_mnist_splits(root: str | Path) -> list[str]:
    """The prefixes (train, t10k) whose image and label files both exist under ``root``."""
    root = Path(root)
    return [
        p
        for p in PREFIXES
        if find_idx_file(root, f"{p}-images-idx3-ubyte")
        and find_idx_file(root, f"{p}-labels-idx1-ubyte")
    ]
