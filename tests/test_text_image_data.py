"""Text -> image data: CIFAR-100 pickle loader, caption folders, synthetic captions,
the caption-informativeness knob (measured) and the TextImageDataModule batch format."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from crossdistill.data.datamodules.text_image import TextImageDataModule
from crossdistill.data.generators.synth_captions import (
    SHAPES,
    SynthCaptionsParams,
    generate_synth_captions,
)
from crossdistill.data.readers.captions import (
    CaptionDataError,
    CaptionFolderDataset,
    stratified_split,
    stratified_subset,
)
from crossdistill.data.readers.cifar100 import (
    CIFAR100Captioned,
    load_cifar100_split,
    write_cifar100_like,
)
from crossdistill.text import WordTokenizer

TINY_SYNTH = dict(num_classes=4, train_per_class=12, val_per_class=4, test_per_class=4)


# --------------------------------------------------------------------- helpers
def make_tiny_cifar(root: Path, n_classes: int = 4, n_train: int = 6, n_test: int = 2):
    rng = np.random.default_rng(0)
    names = ["apple", "aquarium_fish", "bicycle", "cloud", "maple_tree"][:n_classes]
    imgs, labels = {}, {}
    for split, n in (("train", n_train), ("test", n_test)):
        labels[split] = np.repeat(np.arange(n_classes), n)
        imgs[split] = rng.integers(0, 256, size=(len(labels[split]), 32, 32, 3), dtype=np.uint8)
    coarse = {k: v % 2 for k, v in labels.items()}
    write_cifar100_like(root, imgs, labels, names, coarse, ["food", "other"])
    return imgs, labels, names


def write_folder(root: Path, rows: list, n_images: int = 3, classes: list[str] | None = None):
    """Write images img<i>.png and a captions.jsonl made of ``rows`` (dicts or raw str)."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n_images):
        Image.fromarray(np.full((8, 8, 3), 40 * i, dtype=np.uint8)).save(root / f"img{i}.png")
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n")
    if classes:
        (root / "classes.txt").write_text("\n".join(classes) + "\n")
    return root


def good_rows():
    return [
        {"path": "img0.png", "label": "cat", "text": "a cat on a mat"},
        {"path": "img1.png", "label": "dog", "text": "a dog", "caption_kind": "informative"},
        {"path": "img2.png", "label": "cat", "text": "something furry"},
    ]


# -------------------------------------------------------------------- CIFAR-100
def test_cifar100_loader_reads_generated_pickle(tmp_path):
    imgs, labels, names = make_tiny_cifar(tmp_path)
    x, y, classes = load_cifar100_split(tmp_path, "train")
    assert x.shape == (24, 32, 32, 3) and x.dtype == np.uint8
    np.testing.assert_array_equal(x, imgs["train"])  # channel layout round-trips
    np.testing.assert_array_equal(y, labels["train"])
    assert classes[1] == "aquarium fish"
    _, yc, coarse = load_cifar100_split(tmp_path / "cifar-100-python", "test", "coarse")
    assert coarse == ["food", "other"] and set(yc) == {0, 1}

    ds = CIFAR100Captioned(tmp_path, "train", template_seed=3)
    again = CIFAR100Captioned(tmp_path, "train", template_seed=3)
    assert ds.texts == again.texts  # deterministic templates
    assert len({t.split(" ")[1] for t in ds.texts}) > 1  # several templates in use
    for text, label in zip(ds.texts, ds.labels, strict=True):
        assert classes[label] in text
    item = ds[5]
    assert item["image"].size == (32, 32) and item["label"] == int(labels["train"][5])


def test_cifar100_missing_root_names_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cifar-100-python/\{train,test,meta\}"):
        CIFAR100Captioned(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TextImageDataModule(source="cifar100", root=str(tmp_path / "nowhere")).setup()


def test_cifar100_datamodule(tmp_path):
    make_tiny_cifar(tmp_path / "c100")
    dm = TextImageDataModule(
        source="cifar100",
        root=str(tmp_path / "c100"),
        data_dir=str(tmp_path / "cache"),
        val_fraction=0.34,
        max_len=12,
        min_freq=1,
        batch_size=5,
        seed=1,
    )
    assert dm.num_classes == 100  # known before setup for the real dataset
    dm.setup("fit")
    assert dm.num_classes == 4 and dm.class_names[1] == "aquarium fish"
    assert len(dm.data_train) == 16 and len(dm.data_val) == 8 and len(dm.data_test) == 8
    assert np.bincount(dm.data_val.labels.numpy()).tolist() == [2, 2, 2, 2]
    assert not set(dm.data_train.indices) & set(dm.data_val.indices)
    batch = next(iter(dm.train_dataloader()))
    assert batch["student_input"].shape == (5, 3, 32, 32)
    assert batch["teacher_input"].shape == (5, 12)
    assert (batch["teacher_quality"] == 1.0).all()  # template words are all in vocabulary


# --------------------------------------------------------------- caption folder
def test_caption_folder_loader(tmp_path):
    root = write_folder(tmp_path / "f", good_rows())
    ds = CaptionFolderDataset(root)
    assert ds.classes == ["cat", "dog"] and ds.labels.tolist() == [0, 1, 0]
    assert ds.field("caption_kind") == [None, "informative", None]
    item = ds[1]
    assert item["text"] == "a dog" and item["label"] == 1 and item["image"].mode == "RGB"

    rows = [
        {"path": "img0.png", "label": 2, "text": "x"},
        {"path": "img1.png", "label": "cat", "text": "y"},
    ]
    root2 = write_folder(tmp_path / "g", rows, 2, classes=["dog", "bird", "cat"])
    assert CaptionFolderDataset(root2).labels.tolist() == [2, 2]


def test_caption_folder_malformed_line_names_file_and_line(tmp_path):
    rows = good_rows()
    rows.insert(2, '{"path": "img2.png", "label": "cat", "text": "oops"')
    root = write_folder(tmp_path / "f", rows)
    with pytest.raises(CaptionDataError, match=r"captions\.jsonl line 3: invalid JSON"):
        CaptionFolderDataset(root)
    rows = good_rows()
    rows[1] = {"path": "img1.png", "text": "no label"}
    with pytest.raises(CaptionDataError, match=r"line 2: missing key\(s\) \['label'\]"):
        CaptionFolderDataset(write_folder(tmp_path / "g", rows))
    rows = good_rows()
    rows[0]["label"] = "zebra"
    with pytest.raises(CaptionDataError, match=r"line 1: unknown class 'zebra'"):
        CaptionFolderDataset(write_folder(tmp_path / "h", rows), classes=["cat", "dog"])


def test_caption_folder_missing_image_fails_at_construction(tmp_path):
    rows = good_rows()
    rows[2]["path"] = "gone/img9.png"
    root = write_folder(tmp_path / "f", rows)
    with pytest.raises(FileNotFoundError, match=r"line 3: .*gone/img9\.png"):
        CaptionFolderDataset(root)
    # ... and therefore before any training: in the data module's setup()
    with pytest.raises(FileNotFoundError, match="missing images"):
        TextImageDataModule(source="caption_folder", root=str(root), data_dir=str(tmp_path)).setup(
            "fit"
        )


def test_caption_folder_unreadable_image_names_file(tmp_path):
    root = write_folder(tmp_path / "f", good_rows())
    (root / "img1.png").write_bytes(b"not a png")
    ds = CaptionFolderDataset(root)
    with pytest.raises(OSError, match=r"cannot read image file .*img1\.png"):
        ds[1]
    with pytest.raises(OSError, match=r"img1\.png"):
        CaptionFolderDataset(root, verify_images=True)


def test_caption_folder_empty_caption_policy(tmp_path, caplog):
    rows = good_rows()
    rows[1]["text"] = "   "
    root = write_folder(tmp_path / "f", rows)
    with pytest.raises(CaptionDataError, match=r"empty caption.*\[2\]"):
        CaptionFolderDataset(root)  # default policy: raise
    with caplog.at_level(logging.WARNING):
        ds = CaptionFolderDataset(root, empty_caption="skip")
    assert len(ds) == 2 and ds.num_skipped == 1 and ds.skipped_lines == [2]
    assert "skipped 1 sample(s) with empty captions" in caplog.text
    ds = CaptionFolderDataset(root, empty_caption="placeholder", placeholder="no caption")
    assert len(ds) == 3 and ds.texts[1] == "no caption" and ds.num_placeholder == 1
    with pytest.raises(ValueError, match="empty_caption='ignore' is not valid"):
        CaptionFolderDataset(root, empty_caption="ignore")


def test_caption_folder_datamodule_carves_val(tmp_path):
    rows = [
        {
            "path": f"img{i % 3}.png",
            "label": ["cat", "dog"][i % 2],
            "text": f"a {['cat', 'dog'][i % 2]} number {i}",
        }
        for i in range(20)
    ]
    root = write_folder(tmp_path / "f", rows)
    dm = TextImageDataModule(
        source="caption_folder",
        root=str(root),
        data_dir=str(tmp_path),
        val_fraction=0.2,
        image_size=16,
        batch_size=4,
        min_freq=1,
    )
    dm.setup()
    assert dm.num_classes == 2 and len(dm.data_val) == 4 and len(dm.data_train) == 16
    assert dm.data_test is not None and len(dm.data_test) == 4  # falls back to val
    b = next(iter(dm.val_dataloader()))
    assert b["student_input"].shape == (4, 3, 16, 16)  # 8 px images resized to image_size


# ---------------------------------------------------------------------- splits
def test_stratified_split_and_subset():
    labels = np.repeat(np.arange(5), 20)
    rest, val = stratified_split(labels, 0.1, seed=0)
    assert np.bincount(labels[val]).tolist() == [2] * 5 and len(rest) == 90
    assert np.array_equal(val, stratified_split(labels, 0.1, seed=0)[1])
    assert not np.array_equal(val, stratified_split(labels, 0.1, seed=1)[1])
    sub = stratified_subset(labels, 0.25, seed=0)
    assert np.bincount(labels[sub]).tolist() == [5] * 5
    assert len(stratified_subset(labels, 1.0, seed=0)) == 100
    with pytest.raises(ValueError, match="train_fraction"):
        stratified_subset(labels, 0.0, seed=0)


# ------------------------------------------------------------------ synthetic
def test_synth_generation_layout_and_cache(tmp_path):
    root = generate_synth_captions(
        tmp_path, **TINY_SYNTH, p_informative=0.4, p_attribute_only=0.3, p_corrupt=0.3
    )
    manifest = root / "manifest.json"
    stamp = manifest.stat().st_mtime_ns
    assert (root / "classes.txt").read_text().split() == list(SHAPES[:4])
    train = CaptionFolderDataset(root / "train")  # read by the real caption-folder loader
    assert len(train) == 48 and np.bincount(train.labels).tolist() == [12] * 4
    kinds = train.field("caption_kind")
    assert set(kinds) <= {"informative", "attribute_only", "corrupt"} and len(set(kinds)) == 3
    for s in train.samples:
        name = SHAPES[s["label"]]
        if s["caption_kind"] == "informative":
            assert name in s["text"].replace(",", "").split()
        if s["caption_kind"] == "attribute_only":
            assert not set(s["text"].split()) & set(SHAPES)
        if s["corruption"] in ("wrong_class", "garbled"):
            assert name not in s["text"].split()
    img = train[0]["image"]
    assert img.size == (32, 32)
    # same parameters: reused untouched; different parameters: another folder
    assert (
        generate_synth_captions(
            tmp_path,
            SynthCaptionsParams(
                **TINY_SYNTH, p_informative=0.4, p_attribute_only=0.3, p_corrupt=0.3
            ),
        )
        == root
    )
    assert manifest.stat().st_mtime_ns == stamp
    other = generate_synth_captions(tmp_path, **TINY_SYNTH, informativeness=1.0)
    assert other != root and other.parent == root.parent
    assert set(CaptionFolderDataset(other / "test").field("caption_kind")) == {"informative"}


def test_synth_bad_parameters(tmp_path):
    with pytest.raises(ValueError, match="sum to 1"):
        generate_synth_captions(tmp_path, p_informative=0.5, p_attribute_only=0.1, p_corrupt=0)
    with pytest.raises(TypeError, match="unknown synth_captions parameter"):
        generate_synth_captions(tmp_path, colours=3)
    with pytest.raises(ValueError, match="informativeness"):
        generate_synth_captions(tmp_path, informativeness=1.5)


def _bow_heldout_accuracy(root: Path, steps: int = 300) -> float:
    """Logistic regression on token counts: train on train captions, score test captions."""
    train, test = CaptionFolderDataset(root / "train"), CaptionFolderDataset(root / "test")
    tok = WordTokenizer(min_freq=1).fit(train.texts)

    def counts(texts):
        x = torch.zeros(len(texts), tok.vocab_size)
        for i, t in enumerate(texts):
            for j in tok.token_ids(t):
                x[i, j] += 1
        return x

    xtr, xte = counts(train.texts), counts(test.texts)
    ytr, yte = torch.as_tensor(train.labels), torch.as_tensor(test.labels)
    torch.manual_seed(0)
    model = torch.nn.Linear(tok.vocab_size, train.num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=0.05, weight_decay=1e-4)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xtr), ytr).backward()
        opt.step()
    return (model(xte).argmax(1) == yte).float().mean().item()


def test_caption_informativeness_knob_is_measured(tmp_path):
    size = dict(num_classes=8, train_per_class=40, val_per_class=1, test_per_class=25)
    acc = {
        k: _bow_heldout_accuracy(generate_synth_captions(tmp_path, **size, informativeness=k))
        for k in (0.0, 0.5, 1.0)
    }
    chance = 1 / 8
    assert acc[1.0] > 0.95, acc
    assert acc[0.0] < chance + 0.1, acc
    assert acc[0.0] + 0.2 < acc[0.5] < acc[1.0] - 0.2, acc


# ------------------------------------------------------------------ data module
def test_text_image_datamodule_synth_batch_format(tmp_path):
    dm = TextImageDataModule(
        source="synth",
        data_dir=str(tmp_path),
        synth=TINY_SYNTH,
        max_len=10,
        min_freq=1,
        batch_size=8,
        train_fraction=0.25,
        seed=0,
        in_memory=True,
    )
    assert dm.num_classes == 4
    with pytest.raises(RuntimeError, match="setup"):
        _ = dm.vocab_size
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")  # idempotent
    assert len(dm.data_train) == 12  # 3 per class
    assert np.bincount(dm.data_train.labels.numpy()).tolist() == [3] * 4
    assert len(dm.data_val) == 16 and len(dm.data_test) == 16
    assert dm.saved_tokenizer_path.is_file()
    assert WordTokenizer.load(dm.saved_tokenizer_path).itos == dm.tokenizer.itos
    kw = dm.encoder_inputs("teacher")
    assert kw["vocab_size"] == dm.vocab_size and kw["max_len"] == 10

    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"teacher_input", "student_input", "label", "index", "teacher_quality"}
    assert batch["teacher_input"].shape == (8, 10) and batch["teacher_input"].dtype == torch.int64
    assert int(batch["teacher_input"].max()) < dm.vocab_size
    assert batch["student_input"].shape == (8, 3, 32, 32)
    assert batch["student_input"].dtype == torch.float32
    assert batch["label"].dtype == torch.int64 and batch["index"].dtype == torch.int64
    assert batch["teacher_quality"].dtype == torch.float32
    assert ((batch["teacher_quality"] >= 0) & (batch["teacher_quality"] <= 1)).all()
    ds = dm.data_train
    for i, j in enumerate(batch["index"].tolist()):
        assert ds[j]["label"] == batch["label"][i]
    # evaluation transform is deterministic; training augmentation is not
    v = dm.data_val
    assert torch.equal(v[0]["student_input"], v[0]["student_input"])
    assert abs(float(v[0]["student_input"].mean())) < 3.0

    # the tokenizer travels with checkpoints
    state = dm.state_dict()
    dm2 = TextImageDataModule(
        source="synth",
        data_dir=str(tmp_path),
        synth=TINY_SYNTH,
        max_len=10,
        min_freq=5,
        train_fraction=1.0,
    )
    dm2.load_state_dict(state)
    dm2.setup()
    assert dm2.tokenizer.itos == dm.tokenizer.itos


def test_quality_proxy_flags_garbled_captions(tmp_path):
    dm = TextImageDataModule(
        source="synth",
        data_dir=str(tmp_path),
        quality="in_vocab",
        min_freq=2,
        synth=dict(
            num_classes=4,
            train_per_class=40,
            val_per_class=2,
            test_per_class=2,
            p_informative=0.5,
            p_attribute_only=0.2,
            p_corrupt=0.3,
        ),
    )
    dm.setup()
    ds = dm.data_train
    q = ds.quality
    garbled = torch.tensor([c == "garbled" for c in ds.field("corruption")])
    assert garbled.any() and (~garbled).any()
    # garbled words are out of vocabulary; other captions only miss the odd rare word
    assert q[garbled].max() < 1.0 and q[garbled].mean() < 0.75
    assert q[~garbled].mean() > 0.97


def test_datamodule_bad_options(tmp_path):
    with pytest.raises(ValueError, match="source='imagenet' is not valid"):
        TextImageDataModule(source="imagenet")
    with pytest.raises(ValueError, match="needs root"):
        TextImageDataModule(source="caption_folder")
    with pytest.raises(TypeError, match=r"unknown synth option\(s\) \['classes'\]"):
        TextImageDataModule(synth={"classes": 3})
    with pytest.raises(ValueError, match="quality="):
        TextImageDataModule(quality="confidence")
