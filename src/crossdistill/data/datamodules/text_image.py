"""Text -> image data module: a text teacher reads a caption, an image student sees pixels.

Sources (``source``):

- ``synth``: built-in shapes with captions of controlled quality
  (:mod:`crossdistill.data.generators.synth_captions`), generated under ``data_dir`` and
  read through the caption-folder loader; uses its own ``val`` / ``test`` splits.
- ``cifar100``: CIFAR-100 python release under ``root`` with class-name descriptions
  (:mod:`crossdistill.data.readers.cifar100`); validation carved from train.
- ``caption_folder``: any folder in the caption-folder layout
  (:mod:`crossdistill.data.readers.captions`): ``root/{train,val,test}/captions.jsonl`` or a single
  ``root/captions.jsonl`` (val carved from it; test falls back to val with a warning).

Batch (dict, default collation):

- ``teacher_input``: int64 ``[B, max_len]`` token ids, 0 = ``<pad>``;
- ``student_input``: float32 ``[B, 3, H, W]`` normalised image (train-time random crop
  with padding + horizontal flip unless disabled);
- ``label``: int64 ``[B]``; ``index``: int64 ``[B]`` position in the split's dataset;
- ``teacher_quality``: float32 ``[B]`` caption-quality proxy (``quality`` option):
  ``in_vocab`` (default) = fraction of the caption's words in the tokenizer vocabulary
  (0 for an empty caption; low for garbled / unusual text), ``length`` = number of word
  tokens after truncation to ``max_len``, ``length_x_in_vocab`` = their product (number of
  known tokens), ``none`` = all ones. Raw scores; normalisation is the loss composer's job.

The word tokenizer is fitted in :meth:`setup` on the training captions actually used
(after ``train_fraction``) and saved to ``tokenizer_path`` (default
``<data_dir>/tokenizers/<source>-<hash>.json``); it is also part of the data module's
``state_dict`` so checkpoints carry it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import transforms

from crossdistill.data.datamodules.base import PairedDataModule, Side, Split, check_side
from crossdistill.data.generators.synth_captions import SynthCaptionsParams, generate_synth_captions
from crossdistill.data.readers.captions import (
    CaptionFolderDataset,
    find_classes_file,
    read_classes_file,
    stratified_split,
    stratified_subset,
)
from crossdistill.data.readers.cifar100 import CIFAR100Captioned
from crossdistill.text.tokenizer import WordTokenizer

log = logging.getLogger(__name__)

SOURCES = ("synth", "cifar100", "caption_folder")
QUALITY_PROXIES = ("in_vocab", "length", "length_x_in_vocab", "none")
NORMALISATION = {
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "synth": ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
    "caption_folder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


class TextImageDataset(Dataset):
    """A view of a captioned-image source (``load(i)``, ``labels``, ``texts``) as batches.

    Captions are tokenized once here; ``index`` is the position in this dataset.
    """

    def __init__(
        self,
        source: Any,
        indices: Sequence[int] | np.ndarray,
        tokenizer: WordTokenizer,
        transform: Callable,
        max_len: int,
        quality: str = "in_vocab",
    ) -> None:
        if quality not in QUALITY_PROXIES:
            raise ValueError(f"quality={quality!r} is not valid; use one of {QUALITY_PROXIES}")
        self.source = source
        self.indices = np.asarray(indices, dtype=np.int64)
        self.transform = transform
        texts = [source.texts[i] for i in self.indices]
        self.texts = texts
        self.token_ids, mask = tokenizer.encode_batch(texts, max_len)
        self.labels = torch.as_tensor(np.asarray(source.labels)[self.indices], dtype=torch.long)
        length = mask.sum(1).float()
        if tokenizer.bos_id is not None:
            length = length - (self.token_ids == tokenizer.bos_id).sum(1).float()
        if tokenizer.eos_id is not None:
            length = length - (self.token_ids == tokenizer.eos_id).sum(1).float()
        in_vocab = torch.tensor([tokenizer.in_vocab_fraction(t) for t in texts])
        self.quality = {
            "in_vocab": in_vocab,
            "length": length,
            "length_x_in_vocab": length * in_vocab,
            "none": torch.ones(len(texts)),
        }[quality].float()

    def __len__(self) -> int:
        return len(self.indices)

    def field(self, name: str, default: Any = None) -> list[Any]:
        """Per-sample extra metadata of the underlying source (e.g. ``caption_kind``)."""
        if not hasattr(self.source, "field"):
            return [default] * len(self)
        values = self.source.field(name, default)
        return [values[i] for i in self.indices]

    def __getitem__(self, i: int) -> dict[str, Any]:
        j = int(self.indices[i])
        return {
            "teacher_input": self.token_ids[i],
            "student_input": self.transform(self.source.load(j)),
            "label": self.labels[i],
            "index": torch.tensor(i, dtype=torch.long),
            "teacher_quality": self.quality[i],
        }


class TextImageDataModule(PairedDataModule):
    """Captioned images for text-teacher -> image-student distillation.

    Args:
        source: ``synth`` | ``cifar100`` | ``caption_folder``.
        root: dataset folder (``cifar100``, ``caption_folder``); unused for ``synth``.
        data_dir: cache folder for generated data and saved tokenizers.
        synth: :class:`~crossdistill.data.generators.synth_captions.SynthCaptionsParams` fields.
        train_fraction: stratified, seeded fraction of the training images kept (1.0 /
            0.25 / 0.1 for the limited-data experiment); val/test are unaffected.
        val_fraction: fraction of train carved (stratified, seeded) as validation when the
            source has no validation split.
        max_len: token sequence length (captions truncated / padded).
        min_freq, max_vocab: tokenizer vocabulary cut (``max_vocab`` includes specials).
        image_size: student image side; images are resized + centre-cropped to it when
            their size differs.
        augment: train-time ``RandomCrop(image_size, padding=crop_padding)`` and (if
            ``hflip``) ``RandomHorizontalFlip``. Note that flipping does not rewrite
            position words ("left"/"right") in synthetic captions.
        mean, std: normalisation (default per source).
        quality: teacher-quality proxy, see module docstring.
        empty_caption: policy of the caption-folder loader (raise | skip | placeholder).
        label_level, templates: CIFAR-100 options (fine/coarse labels; caption templates).
        tokenizer_path: where setup() saves the fitted tokenizer (None = under data_dir).
        in_memory: keep decoded caption-folder images in memory.
        seed: seed of the val split and of the train_fraction subset.
    """

    def __init__(
        self,
        source: str = "synth",
        root: str | None = None,
        data_dir: str = "data",
        synth: Mapping[str, Any] | None = None,
        train_fraction: float = 1.0,
        val_fraction: float = 0.1,
        max_len: int = 32,
        min_freq: int = 2,
        max_vocab: int | None = None,
        image_size: int = 32,
        augment: bool = True,
        crop_padding: int = 4,
        hflip: bool = True,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        quality: str = "in_vocab",
        empty_caption: str = "raise",
        label_level: str = "fine",
        templates: Sequence[str] | None = None,
        tokenizer_path: str | None = None,
        in_memory: bool = False,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, num_workers, pin_memory)
        if source not in SOURCES:
            raise ValueError(f"source={source!r} is not valid; use one of {list(SOURCES)}")
        if source in ("cifar100", "caption_folder") and not root:
            raise ValueError(f"source={source!r} needs root=<dataset folder> (got {root!r})")
        if quality not in QUALITY_PROXIES:
            raise ValueError(f"quality={quality!r} is not valid; use one of {QUALITY_PROXIES}")
        if not 0.0 < train_fraction <= 1.0:
            raise ValueError(f"train_fraction must be in (0, 1], got {train_fraction}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.source = source
        self.root = root
        self.data_dir = Path(data_dir)
        valid = set(SynthCaptionsParams().__dict__) - {"version"}
        synth_dict = dict(synth or {})
        bad = sorted(set(synth_dict) - valid)
        if bad:
            raise TypeError(f"unknown synth option(s) {bad}; valid: {sorted(valid)}")
        self.synth_params = SynthCaptionsParams(**synth_dict)
        self.train_fraction = float(train_fraction)
        self.val_fraction = float(val_fraction)
        self.max_len = int(max_len)
        self.min_freq = int(min_freq)
        self.max_vocab = max_vocab
        self.image_size = int(image_size)
        self.augment = bool(augment)
        self.crop_padding = int(crop_padding)
        self.hflip = bool(hflip)
        default_mean, default_std = NORMALISATION[source]
        self.mean = tuple(mean or default_mean)
        self.std = tuple(std or default_std)
        self.quality = quality
        self.empty_caption = empty_caption
        self.label_level = label_level
        self.templates = list(templates) if templates else None
        self.tokenizer_path = tokenizer_path
        self.in_memory = bool(in_memory)
        self.seed = int(seed)
        self.tokenizer: WordTokenizer | None = None
        self._restored_tokenizer: dict | None = None
        self.class_names: list[str] | None = None
        self.data_train: TextImageDataset | None = None
        self.data_val: TextImageDataset | None = None
        self.data_test: TextImageDataset | None = None
        self.teacher_input_shape = (self.max_len,)
        self.student_input_shape = (3, self.image_size, self.image_size)
        self._num_classes: int | None = {
            "synth": self.synth_params.num_classes,
            "cifar100": 100 if label_level == "fine" else 20,
        }.get(source)

    # ------------------------------------------------------------- attributes
    @property
    def num_classes(self) -> int:
        if self._num_classes is None:
            raise RuntimeError(
                "num_classes of a caption_folder source is known after setup(); "
                "call datamodule.setup('fit') first"
            )
        return self._num_classes

    @property
    def vocab_size(self) -> int:
        if self.tokenizer is None:
            raise RuntimeError(
                "the tokenizer is fitted in setup(); call datamodule.prepare_data() and "
                "datamodule.setup('fit') before reading vocab_size"
            )
        return self.tokenizer.vocab_size

    @property
    def student_input_dim(self) -> int:
        """Flattened image size (for vector encoders such as a linear baseline)."""
        return 3 * self.image_size * self.image_size

    def encoder_inputs(self, side: Side) -> dict[str, Any]:
        """Constructor arguments the data fixes: vocabulary / lengths for the text teacher,
        channels and flattened size for the image student."""
        check_side(side)
        if side == "teacher":
            return {"vocab_size": self.vocab_size, "max_len": self.max_len, "pad_id": 0}
        return {"in_chans": 3, "input_dim": self.student_input_dim}

    @property
    def teacher_input_fixed_per_index(self) -> bool:
        """Captions are tokenized once: a sample's token ids never change."""
        return True

    @property
    def synth_root(self) -> Path:
        from crossdistill.data.generators.synth_captions import synth_captions_root

        return synth_captions_root(self.data_dir, self.synth_params)

    # ------------------------------------------------------------- transforms
    def _transform(self, train: bool) -> Callable:
        ops: list[Callable] = [_ResizeIfNeeded(self.image_size)]
        if train and self.augment:
            if self.crop_padding > 0:
                ops.append(transforms.RandomCrop(self.image_size, padding=self.crop_padding))
            if self.hflip:
                ops.append(transforms.RandomHorizontalFlip())
        ops += [transforms.ToTensor(), transforms.Normalize(self.mean, self.std)]
        return transforms.Compose(ops)

    # ---------------------------------------------------------------- loading
    def prepare_data(self) -> None:
        """Generate the synthetic set if needed (single process); nothing is downloaded."""
        if self.source == "synth":
            generate_synth_captions(self.data_dir, self.synth_params)

    def _load_sources(self) -> tuple[Any, np.ndarray, Any, np.ndarray, Any, np.ndarray]:
        """Return (train_src, train_idx, val_src, val_idx, test_src, test_idx)."""
        if self.source == "cifar100":
            kw = {"label_level": self.label_level, "templates": self.templates}
            train = CIFAR100Captioned(self.root, "train", **kw)
            test = CIFAR100Captioned(self.root, "test", **kw)
            tr_idx, va_idx = stratified_split(train.labels, self.val_fraction, self.seed)
            return train, tr_idx, train, va_idx, test, np.arange(len(test))
        if self.source == "synth":
            root = generate_synth_captions(self.data_dir, self.synth_params)
        else:
            root = Path(self.root).expanduser()
            if not root.is_dir():
                raise FileNotFoundError(
                    f"caption_folder root {root} does not exist; expected "
                    "<root>/{train,val,test}/captions.jsonl or <root>/captions.jsonl "
                    "(see crossdistill.data.readers.captions)"
                )
        kw = {"empty_caption": self.empty_caption, "in_memory": self.in_memory}
        split_root = root / "train" if (root / "train" / "captions.jsonl").is_file() else root
        cf = find_classes_file(split_root)
        classes = read_classes_file(cf) if cf else None
        train = CaptionFolderDataset(split_root, classes=classes, **kw)
        classes = train.classes
        if (root / "val" / "captions.jsonl").is_file():
            val = CaptionFolderDataset(root / "val", classes=classes, **kw)
            tr_idx, va_idx = np.arange(len(train)), np.arange(len(val))
        else:
            val = train
            tr_idx, va_idx = stratified_split(train.labels, self.val_fraction, self.seed)
        if (root / "test" / "captions.jsonl").is_file():
            test = CaptionFolderDataset(root / "test", classes=classes, **kw)
            te_idx = np.arange(len(test))
        else:
            log.warning("%s has no test/captions.jsonl: test_dataloader uses the val split", root)
            test, te_idx = val, va_idx
        return train, tr_idx, val, va_idx, test, te_idx

    def _default_tokenizer_path(self, train_idx: np.ndarray) -> Path:
        key = {
            "source": self.source,
            "root": str(self.root),
            "synth": self.synth_params.__dict__ if self.source == "synth" else None,
            "train_idx": hashlib.sha1(np.ascontiguousarray(train_idx).tobytes()).hexdigest(),
            "min_freq": self.min_freq,
            "max_vocab": self.max_vocab,
            "label_level": self.label_level,
            "templates": self.templates,
        }
        h = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
        return self.data_dir / "tokenizers" / f"{self.source}-{h[:12]}.json"

    def setup(self, stage: str | None = None) -> None:
        """Load splits, apply ``train_fraction``, fit + save the tokenizer (idempotent)."""
        if self.data_train is not None:
            return
        train, tr_idx, val, va_idx, test, te_idx = self._load_sources()
        tr_labels = np.asarray(train.labels)[tr_idx]
        tr_idx = tr_idx[stratified_subset(tr_labels, self.train_fraction, self.seed)]
        self.class_names = list(train.classes)
        self._num_classes = len(self.class_names)
        if self._restored_tokenizer is not None:
            self.tokenizer = WordTokenizer.from_dict(self._restored_tokenizer)
        else:
            self.tokenizer = WordTokenizer(min_freq=self.min_freq, max_size=self.max_vocab)
            self.tokenizer.fit(train.texts[i] for i in tr_idx)
        if self.tokenizer_path:
            path = Path(self.tokenizer_path)
        else:
            path = self._default_tokenizer_path(tr_idx)
        self.tokenizer.save(path)
        self.saved_tokenizer_path = path
        mk = {"tokenizer": self.tokenizer, "max_len": self.max_len, "quality": self.quality}
        self.data_train = TextImageDataset(train, tr_idx, transform=self._transform(True), **mk)
        self.data_val = TextImageDataset(val, va_idx, transform=self._transform(False), **mk)
        self.data_test = TextImageDataset(test, te_idx, transform=self._transform(False), **mk)
        log.info(
            "text_image[%s]: %d classes, train %d (fraction %.2f), val %d, test %d, vocab %d",
            self.source,
            self._num_classes,
            len(self.data_train),
            self.train_fraction,
            len(self.data_val),
            len(self.data_test),
            self.tokenizer.vocab_size,
        )

    def input_paths(self) -> list[Path]:
        """Every file or folder this datamodule reads, fingerprinted into the keys of cached
        teachers and teacher features (the generated folder for ``synth``)."""
        if self.source == "synth":
            return [self.synth_root]
        return [Path(self.root).expanduser()]

    def dataset(self, split: Split) -> TextImageDataset:
        data = {"train": self.data_train, "val": self.data_val, "test": self.data_test}[split]
        if data is None:
            raise RuntimeError("call setup() before requesting datasets or dataloaders")
        return data

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {"tokenizer": self.tokenizer.to_dict()} if self.tokenizer else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the tokenizer saved in a checkpoint (used instead of refitting)."""
        tok = state_dict.get("tokenizer")
        if tok is None:
            return
        self._restored_tokenizer = tok
        if self.data_train is not None:  # already set up: rebuild with the restored vocab
            self.data_train = self.data_val = self.data_test = None
            self.tokenizer = None
            self.setup()


class _ResizeIfNeeded:
    """Resize (shorter side) + centre-crop to ``size`` unless the image already matches."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.op = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size)])

    def __call__(self, img):
        return img if img.size == (self.size, self.size) else self.op(img)
