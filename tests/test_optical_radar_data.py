"""Optical -> radar data: generator (determinism, layout, gap invariance, speckle), the
paired-folder reader (matching, mismatch errors), the MNIST IDX reader, the data module."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from crossdistill.data.datamodules.optical_radar import OpticalRadarDataModule
from crossdistill.data.generators.synth_optical_radar import (
    RadarParams,
    SynthSceneParams,
    finish_radar,
    generate_radar_from_images,
    generate_synth_optical_radar,
    radar_from_image,
)
from crossdistill.data.readers.mnist_idx import IdxFormatError, read_mnist_split
from crossdistill.data.readers.paired_folder import PairedFolderError, read_paired_folder

TINY_SCENE = SynthSceneParams(
    num_classes=3, train_per_class=4, val_per_class=2, test_per_class=2, image_size=16
)
SMALL_GAP = RadarParams(radar_size=12, looks=8.0, distortion=0.05, clutter=0.05)
LARGE_GAP = RadarParams(radar_size=8, looks=1.0, distortion=0.4, clutter=0.5)
MNIST_DIR = Path("/work/shared/data/mnist")


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


# ------------------------------------------------------------------ generator
def test_generator_layout_manifest_and_determinism(tmp_path):
    root = generate_synth_optical_radar(tmp_path / "a", TINY_SCENE, SMALL_GAP)
    classes = ["tanker", "container", "ferry"]
    for split, per_class in (("train", 4), ("val", 2), ("test", 2)):
        for modality in ("optical", "radar"):
            assert sorted(p.name for p in (root / split / modality).iterdir()) == sorted(classes)
            for name in classes:
                assert len(list((root / split / modality / name).glob("*.png"))) == per_class
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["radar"]["looks"] == 8.0 and manifest["counts"]["test"]["ferry"] == 2
    optical = Image.open(next((root / "train" / "optical" / "tanker").glob("*.png")))
    radar = Image.open(next((root / "train" / "radar" / "tanker").glob("*.png")))
    assert optical.mode == "RGB" and optical.size == (16, 16)
    assert radar.mode == "L" and radar.size == (12, 12)
    again = generate_synth_optical_radar(tmp_path / "b", TINY_SCENE, SMALL_GAP)
    assert files(root) == files(again)
    # the cache is reused untouched
    stamp = (root / "manifest.json").stat().st_mtime_ns
    assert generate_synth_optical_radar(tmp_path / "a", TINY_SCENE, SMALL_GAP) == root
    assert (root / "manifest.json").stat().st_mtime_ns == stamp


def test_a_gap_change_leaves_scenes_labels_and_optical_images_identical(tmp_path):
    small = generate_synth_optical_radar(tmp_path, TINY_SCENE, SMALL_GAP)
    large = generate_synth_optical_radar(tmp_path, TINY_SCENE, LARGE_GAP)
    assert small != large
    small_files, large_files = files(small), files(large)
    optical = [k for k in small_files if "/optical/" in k]
    radar = [k for k in small_files if "/radar/" in k]
    assert optical and set(optical) <= set(large_files)  # same ids in the same classes
    assert all(small_files[k] == large_files[k] for k in optical)
    assert set(radar) <= set(large_files)
    assert all(small_files[k] != large_files[k] for k in radar)
    size = Image.open(large / radar[0]).size
    assert size == (8, 8)


def test_speckle_mean_one_and_variance_one_over_looks_on_a_flat_region():
    rng = np.random.default_rng(0)
    for looks in (1.0, 4.0):
        params = RadarParams(radar_size=64, looks=looks, distortion=0.0, clutter=0.0, gain=50.0)
        flat = np.full((128, 128), 0.5)  # reflectivity 0.5 -> mean pixel 25
        pixels = np.concatenate(
            [finish_radar(flat, params, rng).ravel().astype(float) for _ in range(20)]
        )
        ratio = pixels / 25.0
        assert ratio.mean() == pytest.approx(1.0, abs=0.02)
        # quantisation to integers adds 1/12 / 25^2 of variance; clipping at 255 is negligible
        assert ratio.var() == pytest.approx(1.0 / looks, rel=0.05)


def test_clutter_brightens_the_sea():
    rng = np.random.default_rng(1)
    dark = np.zeros((32, 32))
    calm = finish_radar(dark, RadarParams(radar_size=16, clutter=0.0), rng)
    rough = finish_radar(dark, RadarParams(radar_size=16, clutter=0.8), rng)
    assert calm.max() == 0 and rough.mean() > 5


def test_distortion_moves_and_warps_the_object():
    image = np.zeros((32, 32), np.uint8)
    image[4:12, 4:12] = 255  # a bright square in the top-left corner
    nearly_clean = {"radar_size": 16, "looks": 1e6, "clutter": 0.0}
    rng = np.random.default_rng(2)
    straight = radar_from_image(image, RadarParams(distortion=0.0, **nearly_clean), rng)
    expected = image.reshape(16, 2, 16, 2).mean((1, 3)) / 255 * 100  # gain 100
    assert np.abs(straight.astype(float) - expected).max() <= 2
    warped = [
        radar_from_image(image, RadarParams(distortion=0.8, **nearly_clean), rng) for _ in range(5)
    ]
    assert all(np.abs(w.astype(float) - expected).max() > 30 for w in warped)


# ------------------------------------------------------------------ paired folder
def make_pairs(root: Path, spec: dict[str, dict[str, list[str]]]) -> None:
    """spec: {modality: {class: [ids]}} -> tiny PNGs (optical 8x8 RGB, radar 4x4 L)."""
    for modality, classes in spec.items():
        for name, ids in classes.items():
            (root / modality / name).mkdir(parents=True, exist_ok=True)
            for i, sample_id in enumerate(ids):
                shape = (8, 8, 3) if modality == "optical" else (4, 4)
                value = (10 * i + 40 * len(name)) % 255
                Image.fromarray(np.full(shape, value, np.uint8)).save(
                    root / modality / name / f"{sample_id}.png"
                )


def test_paired_folder_single_folder_is_carved_stratified_and_seeded(tmp_path):
    ids = {"cat": [f"c{i}" for i in range(10)], "dog": [f"d{i}" for i in range(10)]}
    make_pairs(tmp_path, {"optical": ids, "radar": ids})
    splits = read_paired_folder(tmp_path, val_fraction=0.2, test_fraction=0.2, seed=3)
    assert {s: len(d) for s, d in splits.items()} == {"train": 12, "val": 4, "test": 4}
    for data in splits.values():
        assert np.bincount(data.labels).tolist() == [len(data) // 2] * 2
        assert all(p.parent.parent.name == "radar" for p in data.paths["radar"])
        stems = [(p.parent.name, p.stem) for p in data.paths["optical"]]
        assert stems == [tuple(i.split("/")) for i in data.ids]
    all_ids = sum((d.ids for d in splits.values()), [])
    assert len(set(all_ids)) == 20
    again = read_paired_folder(tmp_path, val_fraction=0.2, test_fraction=0.2, seed=3)
    assert again["val"].ids == splits["val"].ids
    assert read_paired_folder(tmp_path, 0.2, 0.2, seed=4)["val"].ids != splits["val"].ids
    images = splits["train"].load("radar", "L")
    assert images.shape == (12, 4, 4, 1) and images.dtype == np.uint8


def test_paired_folder_uses_split_subfolders(tmp_path):
    ids = {"a": ["1", "2", "3"], "b": ["4", "5", "6"]}
    for split in ("train", "val", "test"):
        make_pairs(tmp_path / split, {"optical": ids, "radar": ids})
    splits = read_paired_folder(tmp_path)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [6, 6, 6]
    assert splits["test"].root == tmp_path / "test"


def test_paired_folder_mismatch_lists_the_offending_ids_in_one_error(tmp_path):
    optical = {"cat": [f"c{i}" for i in range(30)], "dog": ["d0"], "fox": ["f0"]}
    radar = {"cat": [f"c{i}" for i in range(3, 30)] + ["extra"], "dog": ["d0"]}
    make_pairs(tmp_path, {"optical": optical, "radar": radar})
    with pytest.raises(PairedFolderError) as info:
        read_paired_folder(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message and "5 sample(s)" in message
    assert "fox/ (class folder missing in radar)" in message
    for bad in ("cat/c0 (missing in radar)", "cat/c1", "cat/c2", "cat/extra (missing in optical)"):
        assert bad in message
    assert "dog/d0" not in message


def test_paired_folder_mismatch_shows_at_most_twenty_ids(tmp_path):
    make_pairs(tmp_path, {"optical": {"a": [f"{i:03d}" for i in range(25)]}, "radar": {"a": []}})
    with pytest.raises(PairedFolderError, match=r"25 sample\(s\)") as info:
        read_paired_folder(tmp_path)
    assert len(re.findall(r"a/\d{3}", str(info.value))) == 20 and "..." in str(info.value)


def test_paired_folder_unreadable_image_names_the_file(tmp_path):
    ids = {"a": ["1", "2"], "b": ["3", "4"]}
    make_pairs(tmp_path, {"optical": ids, "radar": ids})
    broken = tmp_path / "radar" / "b" / "4.png"
    broken.write_bytes(b"not a png")
    splits = read_paired_folder(tmp_path, val_fraction=0.0, test_fraction=0.0)
    with pytest.raises(OSError, match=re.escape(str(broken))):
        splits["train"].load("radar", "L")


# ------------------------------------------------------------------ MNIST IDX
def write_idx(path: Path, magic: int, array: np.ndarray, gz: bool, cut: int = 0) -> Path:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    blob = header + array.astype(np.uint8).tobytes()
    blob = blob[: len(blob) - cut]
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as f:
            f.write(blob)
    else:
        path.write_bytes(blob)
    return path


def tiny_mnist(root: Path, prefix: str, n: int, gz: bool, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = np.arange(n) % 10
    root.mkdir(parents=True, exist_ok=True)
    write_idx(root / f"{prefix}-images-idx3-ubyte", 0x803, images, gz)
    write_idx(root / f"{prefix}-labels-idx1-ubyte", 0x801, labels, gz)
    return images


@pytest.mark.parametrize("gz", [True, False])
def test_idx_reader_reads_gzipped_and_plain_files(tmp_path, gz):
    images = tiny_mnist(tmp_path, "t10k", 12, gz)
    read, labels = read_mnist_split(tmp_path, "t10k")
    assert np.array_equal(read, images) and labels.tolist() == [i % 10 for i in range(12)]


def test_idx_reader_rejects_wrong_magic_truncation_and_count_mismatch(tmp_path):
    images = np.zeros((5, 28, 28), np.uint8)
    labels = np.zeros(5, np.uint8)
    bad = write_idx(tmp_path / "t10k-images-idx3-ubyte", 0x801, images, gz=True)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", 0x801, labels, gz=True)
    with pytest.raises(IdxFormatError, match=re.escape(str(bad)) + ".*wrong magic number"):
        read_mnist_split(tmp_path, "t10k")
    bad = write_idx(tmp_path / "t10k-images-idx3-ubyte", 0x803, images, gz=True, cut=100)
    with pytest.raises(IdxFormatError, match=re.escape(str(bad)) + ": truncated"):
        read_mnist_split(tmp_path, "t10k")
    write_idx(tmp_path / "t10k-images-idx3-ubyte", 0x803, images, gz=True)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", 0x801, np.zeros(4, np.uint8), gz=True)
    with pytest.raises(IdxFormatError, match="5 images but .*labels-idx1-ubyte.gz holds 4"):
        read_mnist_split(tmp_path, "t10k")


def test_radar_rendered_from_mnist_files(tmp_path):
    images = tiny_mnist(tmp_path / "mnist", "t10k", 60, gz=True)
    params = RadarParams(radar_size=14, looks=2.0)
    root = generate_radar_from_images(
        tmp_path / "data", "mnist", tmp_path / "mnist", params, 0.2, 0.2, seed=0
    )
    splits = read_paired_folder(root)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [
        40,
        10,
        10,
    ]  # 6 per class: 1 test, 1 val
    assert all(np.bincount(splits[s].labels).min() >= 1 for s in ("train", "val", "test"))
    first = splits["test"].ids[0]  # "<digit>/t10k-<index>": the optical side is the image
    index = int(first.split("-")[1])
    optical = np.asarray(Image.open(splits["test"].paths["optical"][0]))
    assert np.array_equal(optical, images[index])
    assert Image.open(splits["test"].paths["radar"][0]).size == (14, 14)


def test_radar_rendered_from_an_image_folder(tmp_path):
    for name in ("boat", "buoy"):
        (tmp_path / "photos" / name).mkdir(parents=True)
        for i in range(5):
            Image.new("RGB", (20, 24), (i * 40, 80, 120)).save(
                tmp_path / "photos" / name / f"{name}{i}.jpg"
            )
    root = generate_radar_from_images(
        tmp_path / "data", "image_folder", tmp_path / "photos", RadarParams(radar_size=8), 0.2, 0.2
    )
    splits = read_paired_folder(root)
    assert sum(len(s) for s in splits.values()) == 10
    assert all(i.split("/")[1].startswith(i.split("/")[0]) for i in splits["train"].ids)


@pytest.mark.slow
def test_real_mnist_test_set_when_available(tmp_path):
    if not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"the real MNIST files are not in {MNIST_DIR} (t10k-*-ubyte.gz)")
    images, labels = read_mnist_split(MNIST_DIR, "t10k")
    assert images.shape == (10000, 28, 28) and np.bincount(labels).min() > 800
    root = generate_radar_from_images(
        tmp_path, "mnist", MNIST_DIR, RadarParams(radar_size=14), max_per_class=20
    )
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["source"] == "mnist"
    # only t10k there: 20 per class kept, 4 carved as test, 2 as val
    assert [manifest["counts"][s]["7"] for s in ("train", "val", "test")] == [14, 2, 4]


# ------------------------------------------------------------------ data module
def test_datamodule_batches_shapes_and_index(tmp_path):
    dm = OpticalRadarDataModule(
        data_dir=str(tmp_path),
        synth={"num_classes": 3, "train_per_class": 4, "val_per_class": 2,
               "test_per_class": 3, "image_size": 16},
        radar={"radar_size": 8},
        batch_size=5,
        eval_batch_size=16,
    )  # fmt: skip
    dm.prepare_data()
    dm.setup("fit")
    assert dm.num_classes == 3 and len(dm.dataset("test")) == 9
    assert dm.encoder_inputs("teacher")["in_channels"] == 3
    assert dm.encoder_inputs("student") == {"in_channels": 1, "in_chans": 1, "input_dim": 64}
    batch = next(iter(dm.loader("val", ordered=True)))
    assert batch["teacher_input"].shape == (6, 3, 16, 16)
    assert batch["student_input"].shape == (6, 1, 8, 8)
    assert batch["index"].tolist() == list(range(6)) and batch["label"].dtype == torch.int64
    train = dm.dataset("train")
    assert abs(float(train.teacher.mean())) < 1e-4  # normalised with train statistics
    assert dm.sample_ids("val")[0].count("/") == 1
    assert dm.input_paths() == [dm.folder]


def test_datamodule_rejects_unknown_radar_option(tmp_path):
    with pytest.raises(TypeError, match=r"unknown data.radar option\(s\) \['look'\]"):
        OpticalRadarDataModule(data_dir=str(tmp_path), radar={"look": 2})


def test_paired_folder_source_trains_end_to_end(compose_cfg, tmp_path):
    from crossdistill.pipeline import train

    ids = {name: [f"{name}{i}" for i in range(8)] for name in ("ship", "rock", "buoy")}
    make_pairs(tmp_path / "pairs", {"optical": ids, "radar": ids})
    cfg = compose_cfg(
        "experiment=optical_radar/fitnets_multi",
        "data=paired_folder",
        f"data.root={tmp_path / 'pairs'}",
        "data.batch_size=4",
        "debug=fast_dev_run",
        "logger=[]",
        "callbacks.progress_bar=null",
    )
    summary = train(cfg)
    assert summary["student"] and summary["teacher"]


def test_mnist_source_trains_end_to_end(compose_cfg, tmp_path):
    from crossdistill.pipeline import train

    tiny_mnist(tmp_path / "mnist", "t10k", 50, gz=True)
    cfg = compose_cfg(
        "experiment=optical_radar/dskd",
        "data=optical_radar_mnist",
        f"data.root={tmp_path / 'mnist'}",
        "data.batch_size=8",
        "debug=fast_dev_run",
        "logger=[]",
        "callbacks.progress_bar=null",
    )
    summary = train(cfg)
    assert summary["student"]
    assert (tmp_path / "data" / "optical_radar").is_dir()
