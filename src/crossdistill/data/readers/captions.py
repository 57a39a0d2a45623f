"""Caption-folder loader: an ImageFolder-like directory with a ``captions.jsonl`` file.

Layout (one split)::

    <root>/captions.jsonl    one JSON object per line:
                             {"path": "<image path relative to root>",
                              "label": "<class name>" | <int class id>,
                              "text": "<caption>",
                              ...optional extra fields, e.g. "caption_kind"}
    <root>/classes.txt       optional: one class name per line, line order = class id
    <root>/<images...>

Several splits are sibling folders (``<root>/train``, ``<root>/val``, ``<root>/test``),
each in the layout above; ``classes.txt`` may also sit in the parent folder.

Everything that can be checked without decoding pixels is checked at construction: JSON
syntax, required keys, labels, empty captions, and that every referenced image exists.
Unreadable images raise when loaded, naming the file.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

CAPTIONS_FILE = "captions.jsonl"
CLASSES_FILE = "classes.txt"
EMPTY_CAPTION_POLICIES = ("raise", "skip", "placeholder")
REQUIRED_KEYS = ("path", "label", "text")


class CaptionDataError(ValueError):
    """Malformed caption-folder data (the message names the file, line and value)."""


def load_image(path: str | Path) -> Image.Image:
    """Open an image as RGB; failures name the file."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {path}") from None
    except Exception as e:  # PIL raises several types for corrupt files
        raise OSError(f"cannot read image file {path}: {type(e).__name__}: {e}") from e


def read_classes_file(path: str | Path) -> list[str]:
    """Class names, one per non-empty line; duplicates are an error."""
    path = Path(path)
    names = [ln.strip() for ln in path.read_text().splitlines()]
    names = [n for n in names if n]
    if not names:
        raise CaptionDataError(f"{path}: no class names (expected one name per line)")
    seen: dict[str, int] = {}
    for i, n in enumerate(names):
        if n in seen:
            raise CaptionDataError(f"{path}: class {n!r} listed twice (entries {seen[n]} and {i})")
        seen[n] = i
    return names


def find_classes_file(root: Path) -> Path | None:
    for cand in (root / CLASSES_FILE, root.parent / CLASSES_FILE):
        if cand.is_file():
            return cand
    return None


class CaptionFolderDataset:
    """Captioned images of one split in the caption-folder layout (see module docstring).

    Args:
        root: folder holding ``captions.jsonl`` (image paths are relative to it).
        classes: class names in id order; default ``classes.txt`` (in ``root`` or its
            parent), else the sorted string labels, or ``0..max`` for integer labels.
        empty_caption: policy for empty / whitespace-only captions: ``raise`` (error naming
            file and lines), ``skip`` (drop the sample; counted in ``num_skipped`` and logged
            as a warning) or ``placeholder`` (replace the text with ``placeholder``; counted
            in ``num_placeholder``).
        placeholder: text used by the ``placeholder`` policy.
        verify_images: also decode every image at construction (slow on big sets).
        in_memory: decode all images once and keep them in memory.

    ``samples[i]`` is a dict with ``path`` (absolute Path), ``label`` (int), ``text``,
    ``line`` (1-based line in the captions file) and any extra fields of the line.
    ``__getitem__`` returns ``{"image": PIL.Image, "label": int, "text": str}``.
    """

    def __init__(
        self,
        root: str | Path,
        classes: Sequence[str] | None = None,
        empty_caption: str = "raise",
        placeholder: str = "<empty>",
        captions_file: str = CAPTIONS_FILE,
        verify_images: bool = False,
        in_memory: bool = False,
    ) -> None:
        if empty_caption not in EMPTY_CAPTION_POLICIES:
            raise ValueError(
                f"empty_caption={empty_caption!r} is not valid; use one of "
                f"{list(EMPTY_CAPTION_POLICIES)}"
            )
        self.root = Path(root)
        self.captions_path = self.root / captions_file
        if not self.captions_path.is_file():
            raise FileNotFoundError(
                f"caption file not found: {self.captions_path}. Expected layout: "
                f"<root>/{captions_file} with one JSON object per line "
                '{"path": <image path relative to root>, "label": <class name or id>, '
                '"text": <caption>}, optional <root>/classes.txt, and the images under <root>.'
            )
        self.empty_caption = empty_caption
        self.placeholder = placeholder
        rows = self._parse()
        self.classes = list(classes) if classes is not None else self._infer_classes(rows)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.skipped_lines: list[int] = []
        self.placeholder_lines: list[int] = []
        self.samples = self._resolve(rows)
        self.labels = np.array([s["label"] for s in self.samples], dtype=np.int64)
        self.texts = [s["text"] for s in self.samples]
        if not self.samples:
            raise CaptionDataError(f"{self.captions_path}: no usable samples")
        self._cache: list[Image.Image] | None = None
        if verify_images or in_memory:
            images = [load_image(s["path"]) for s in self.samples]
            if in_memory:
                self._cache = images

    # ------------------------------------------------------------------ parsing
    def _parse(self) -> list[tuple[int, dict[str, Any]]]:
        rows = []
        where = self.captions_path
        with open(self.captions_path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise CaptionDataError(
                        f"{where} line {lineno}: invalid JSON ({e.msg} at column {e.colno}): "
                        f"{line.strip()[:120]!r}"
                    ) from None
                if not isinstance(obj, dict):
                    raise CaptionDataError(
                        f"{where} line {lineno}: expected a JSON object with keys "
                        f"{list(REQUIRED_KEYS)}, got {type(obj).__name__}"
                    )
                missing = [k for k in REQUIRED_KEYS if k not in obj]
                if missing:
                    raise CaptionDataError(
                        f"{where} line {lineno}: missing key(s) {missing}; required keys are "
                        f"{list(REQUIRED_KEYS)}, got {sorted(obj)}"
                    )
                if not isinstance(obj["path"], str) or not obj["path"]:
                    raise CaptionDataError(
                        f"{where} line {lineno}: 'path' must be a non-empty string, "
                        f"got {obj['path']!r}"
                    )
                if obj["text"] is None:
                    obj["text"] = ""
                if not isinstance(obj["text"], str):
                    raise CaptionDataError(
                        f"{where} line {lineno}: 'text' must be a string, got {obj['text']!r}"
                    )
                lab = obj["label"]
                if isinstance(lab, bool) or not isinstance(lab, (str, int)):
                    raise CaptionDataError(
                        f"{where} line {lineno}: 'label' must be a class name or an int id, "
                        f"got {lab!r}"
                    )
                rows.append((lineno, obj))
        return rows

    def _infer_classes(self, rows: list[tuple[int, dict[str, Any]]]) -> list[str]:
        cf = find_classes_file(self.root)
        if cf is not None:
            return read_classes_file(cf)
        str_labels = {o["label"] for _, o in rows if isinstance(o["label"], str)}
        int_labels = [o["label"] for _, o in rows if isinstance(o["label"], int)]
        if str_labels and int_labels:
            raise CaptionDataError(
                f"{self.captions_path}: labels mix class names and integer ids; provide "
                f"{CLASSES_FILE} (one name per line, line order = id) to map both"
            )
        if int_labels:
            return [str(i) for i in range(max(int_labels) + 1)]
        return sorted(str_labels)

    def _label_id(self, lab: str | int, lineno: int) -> int:
        where = f"{self.captions_path} line {lineno}"
        if isinstance(lab, int):
            if not 0 <= lab < len(self.classes):
                raise CaptionDataError(
                    f"{where}: label id {lab} out of range [0, {len(self.classes)})"
                )
            return lab
        if lab in self.class_to_idx:
            return self.class_to_idx[lab]
        shown = self.classes[:20] + (["..."] if len(self.classes) > 20 else [])
        raise CaptionDataError(f"{where}: unknown class {lab!r}; known classes: {shown}")

    def _resolve(self, rows: list[tuple[int, dict[str, Any]]]) -> list[dict[str, Any]]:
        samples, missing, empty = [], [], []
        for lineno, obj in rows:
            label = self._label_id(obj["label"], lineno)
            path = self.root / obj["path"]
            if not path.is_file():
                missing.append((lineno, path))
            text = obj["text"]
            if not text.strip():
                empty.append(lineno)
                if self.empty_caption == "skip":
                    self.skipped_lines.append(lineno)
                    continue
                if self.empty_caption == "placeholder":
                    self.placeholder_lines.append(lineno)
                    text = self.placeholder
            extra = {k: v for k, v in obj.items() if k not in REQUIRED_KEYS}
            samples.append({**extra, "path": path, "label": label, "text": text, "line": lineno})
        if missing:
            shown = "; ".join(f"line {ln}: {p}" for ln, p in missing[:5])
            more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
            raise FileNotFoundError(
                f"{self.captions_path}: {len(missing)} caption line(s) refer to missing "
                f"images: {shown}{more}"
            )
        if empty and self.empty_caption == "raise":
            raise CaptionDataError(
                f"{self.captions_path}: {len(empty)} empty caption(s) at line(s) "
                f"{empty[:20]}; set empty_caption to 'skip' or 'placeholder' to accept them"
            )
        if self.skipped_lines:
            log.warning(
                "%s: skipped %d sample(s) with empty captions (lines %s%s)",
                self.captions_path,
                len(self.skipped_lines),
                self.skipped_lines[:20],
                " ..." if len(self.skipped_lines) > 20 else "",
            )
        if self.placeholder_lines:
            log.warning(
                "%s: %d empty caption(s) replaced by placeholder %r",
                self.captions_path,
                len(self.placeholder_lines),
                self.placeholder,
            )
        return samples

    # ------------------------------------------------------------------ access
    @property
    def num_skipped(self) -> int:
        return len(self.skipped_lines)

    @property
    def num_placeholder(self) -> int:
        return len(self.placeholder_lines)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, i: int) -> Image.Image:
        if self._cache is not None:
            return self._cache[i]
        return load_image(self.samples[i]["path"])

    def __getitem__(self, i: int) -> dict[str, Any]:
        s = self.samples[i]
        return {"image": self.load(i), "label": s["label"], "text": s["text"]}

    def field(self, name: str, default: Any = None) -> list[Any]:
        """Per-sample values of an extra jsonl field (e.g. ``caption_kind``)."""
        return [s.get(name, default) for s in self.samples]


# ---------------------------------------------------------------------- splits
def stratified_split(
    labels: Sequence[int] | np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into ``(rest, part)`` with ``part`` ~ ``fraction`` of every class.

    Each class with >= 2 samples contributes ``round(fraction * n_c)`` samples (at least 1
    if ``fraction > 0``, at most ``n_c - 1``). Seeded and deterministic; both outputs sorted.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"split fraction must be in [0, 1), got {fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    part: list[np.ndarray] = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if fraction == 0 or len(idx) < 2:
            continue
        k = min(max(1, int(round(fraction * len(idx)))), len(idx) - 1)
        part.append(rng.permutation(idx)[:k])
    part_idx = np.sort(np.concatenate(part)) if part else np.zeros(0, dtype=np.int64)
    rest = np.setdiff1d(np.arange(len(labels)), part_idx)
    return rest.astype(np.int64), part_idx.astype(np.int64)


def stratified_subset(labels: Sequence[int] | np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Seeded, class-stratified subset keeping ``fraction`` (in (0, 1]) of every class.

    Each class keeps ``max(1, round(fraction * n_c))`` samples; returns sorted indices.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"train_fraction must be in (0, 1], got {fraction}")
    labels = np.asarray(labels)
    if fraction == 1.0:
        return np.arange(len(labels), dtype=np.int64)
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = max(1, int(round(fraction * len(idx))))
        keep.append(rng.permutation(idx)[:k])
    return np.sort(np.concatenate(keep)).astype(np.int64)
