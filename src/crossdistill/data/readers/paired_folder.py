"""Paired-folder loader: the same samples seen in two modalities, one image file each.

Layout (one split)::

    <root>/<modality>/<class>/<id>.<ext>     e.g. optical/tanker/000123.png
                                                  radar/tanker/000123.png

A sample is ``(class, id)``: the file stem is the id, the extension may differ between
modalities (any format PIL reads). Several splits are sibling folders
``<root>/{train,val,test}/<modality>/...``; a split that is absent is carved (stratified,
seeded) from ``train``. A single folder without split subfolders gives all three splits.

Everything is checked before any pixel is decoded: a class folder present in one modality
and not the other, or an id present in one and not the other, raises ONE
:class:`PairedFolderError` naming the folder, the number of offending entries and the first
20. An unreadable image raises when loaded, naming the file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from crossdistill.data.readers.captions import stratified_split

SPLITS: tuple[str, ...] = ("train", "val", "test")
MODALITIES: tuple[str, ...] = ("optical", "radar")
SHOWN = 20


class PairedFolderError(ValueError):
    """Malformed paired-folder data (the message names the folder and the offending ids)."""


def image_extensions() -> set[str]:
    """Lower-case file extensions PIL can open (``.png``, ``.jpg``, ``.tif``, ...)."""
    return {ext.lower() for ext in Image.registered_extensions()}


def scan_modality(folder: Path) -> dict[str, dict[str, Path]]:
    """``{class: {id: path}}`` of the image files under ``folder/<class>/``."""
    if not folder.is_dir():
        raise PairedFolderError(
            f"modality folder {folder} does not exist; expected <root>/<modality>/<class>/<id>.png"
        )
    extensions = image_extensions()
    classes: dict[str, dict[str, Path]] = {}
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        files: dict[str, Path] = {}
        for path in sorted(class_dir.iterdir()):
            if not path.is_file() or path.suffix.lower() not in extensions:
                continue
            if path.stem in files:
                raise PairedFolderError(
                    f"{class_dir}: id {path.stem!r} has two files ({files[path.stem].name}, "
                    f"{path.name}); one image per id and modality"
                )
            files[path.stem] = path
        classes[class_dir.name] = files
    if not classes:
        raise PairedFolderError(f"{folder}: no class folders (expected {folder}/<class>/<id>.png)")
    return classes


def _mismatch_error(root: Path, offending: list[str]) -> PairedFolderError:
    shown = ", ".join(offending[:SHOWN]) + (" ..." if len(offending) > SHOWN else "")
    return PairedFolderError(
        f"{root}: {len(offending)} sample(s) or class folder(s) are not present in every "
        f"modality: {shown}. Every <class>/<id> must exist under each modality folder."
    )


@dataclass
class PairedFolderSplit:
    """The matched samples of one split: ``ids[i]`` = ``"<class>/<id>"``, ``labels[i]`` its
    class index in ``classes``, ``paths[modality][i]`` its file."""

    root: Path
    classes: list[str]
    ids: list[str]
    labels: np.ndarray
    paths: dict[str, list[Path]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, indices: np.ndarray) -> PairedFolderSplit:
        return PairedFolderSplit(
            root=self.root,
            classes=self.classes,
            ids=[self.ids[i] for i in indices],
            labels=self.labels[indices],
            paths={m: [p[i] for i in indices] for m, p in self.paths.items()},
        )

    def load(self, modality: str, mode: str, size: int | None = None) -> np.ndarray:
        """All images of ``modality`` as ``uint8 [N, H, W, C]`` (PIL ``mode`` RGB | L),
        resized to ``size`` x ``size`` when given and different."""
        return load_images(self.paths[modality], mode, size)


def scan_split(
    root: Path, modalities: Sequence[str] = MODALITIES, classes: Sequence[str] | None = None
) -> PairedFolderSplit:
    """Match the modalities of one split folder (see module doc for the errors)."""
    scanned = {m: scan_modality(root / m) for m in modalities}
    all_classes = sorted(set().union(*scanned.values()))
    offending: list[str] = []
    for name in all_classes:
        missing_in = [m for m in modalities if name not in scanned[m]]
        if missing_in:
            offending.append(f"{name}/ (class folder missing in {'+'.join(missing_in)})")
    for name in all_classes:
        if any(name not in scanned[m] for m in modalities):
            continue
        ids = sorted(set().union(*(scanned[m][name] for m in modalities)))
        for sample_id in ids:
            missing_in = [m for m in modalities if sample_id not in scanned[m][name]]
            if missing_in:
                offending.append(f"{name}/{sample_id} (missing in {'+'.join(missing_in)})")
    if offending:
        raise _mismatch_error(root, offending)
    class_list = list(classes) if classes is not None else all_classes
    unknown = [c for c in all_classes if c not in class_list]
    if unknown:
        raise PairedFolderError(
            f"{root}: class folder(s) {unknown[:SHOWN]} are not among the training classes "
            f"{class_list[:SHOWN]}"
        )
    ids, labels = [], []
    paths: dict[str, list[Path]] = {m: [] for m in modalities}
    first = scanned[modalities[0]]
    for label, name in enumerate(class_list):
        for sample_id in sorted(first.get(name, {})):
            ids.append(f"{name}/{sample_id}")
            labels.append(label)
            for m in modalities:
                paths[m].append(scanned[m][name][sample_id])
    if not ids:
        raise PairedFolderError(f"{root}: no image files under {list(modalities)}")
    return PairedFolderSplit(root, class_list, ids, np.asarray(labels, dtype=np.int64), paths)


def read_paired_folder(
    root: str | Path,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    modalities: Sequence[str] = MODALITIES,
) -> dict[str, PairedFolderSplit]:
    """``{train, val, test}`` splits of a paired folder: split subfolders where present
    (``train`` required then), the others carved stratified and seeded from train
    (``val_fraction`` / ``test_fraction`` of each class)."""
    root = Path(root).expanduser()
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value}")
    if not root.is_dir():
        raise FileNotFoundError(
            f"paired folder {root} does not exist; expected <root>/[{{train,val,test}}/]"
            f"{{{','.join(modalities)}}}/<class>/<id>.png"
        )
    has_splits = any((root / s).is_dir() for s in SPLITS)
    if has_splits and not (root / "train").is_dir():
        raise PairedFolderError(f"{root}: has split folders but no train/ split")
    train = scan_split(root / "train" if has_splits else root, modalities)
    splits: dict[str, PairedFolderSplit] = {}
    for name in ("val", "test"):
        if has_splits and (root / name).is_dir():
            splits[name] = scan_split(root / name, modalities, classes=train.classes)
    rest = np.arange(len(train))
    for name, fraction in (("test", test_fraction), ("val", val_fraction)):
        if name in splits:
            continue
        # fraction of the whole train folder, carved from what is left
        share = min(fraction * len(train) / max(len(rest), 1), 0.99)
        keep, part = stratified_split(train.labels[rest], share, seed + (name == "val"))
        splits[name] = train.subset(rest[part])
        rest = rest[keep]
    splits["train"] = train.subset(rest)
    return {s: splits[s] for s in SPLITS}


def load_image_array(path: Path, mode: str, size: tuple[int, int] | None = None) -> np.ndarray:
    """One image as ``uint8 [H, W, C]``, resized to ``size`` = (width, height) when given
    and different; a file PIL cannot read raises naming it."""
    try:
        with Image.open(path) as image:
            image = image.convert(mode)
            if size is not None and image.size != tuple(size):
                image = image.resize(tuple(size), Image.BILINEAR)
            array = np.asarray(image, dtype=np.uint8)
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {path}") from None
    except Exception as e:  # PIL raises several types for corrupt files
        raise OSError(f"cannot read image file {path}: {type(e).__name__}: {e}") from e
    return array[..., None] if array.ndim == 2 else array


def load_images(paths: Sequence[Path], mode: str, size: int | None = None) -> np.ndarray:
    """Images as one ``uint8 [N, H, W, C]`` array, resized to ``size`` x ``size``
    (``None``: the first image's size)."""
    if not paths:
        raise ValueError("no images to load")
    first = load_image_array(paths[0], mode, (size, size) if size else None)
    height, width = first.shape[:2]
    out = np.empty((len(paths), *first.shape), dtype=np.uint8)
    out[0] = first
    for i, path in enumerate(paths[1:], start=1):
        out[i] = load_image_array(path, mode, (width, height))
    return out
