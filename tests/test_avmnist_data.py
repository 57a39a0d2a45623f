"""AV-MNIST-style data on tiny generated FSDD recordings and MNIST IDX files: PCA energy
removal (measured), the feature cache (reused / recomputed), the split protocols (no speaker
leakage), pairing (fixed vs per epoch), the fusion input, the fusion encoder, and a
``fast_dev_run`` of each setting. One slow test reads the real data when present."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from crossdistill.data import audio_features
from crossdistill.data.audio_features import FeatureParams, compute_features
from crossdistill.data.datamodules.avmnist import AvMnistDataModule
from crossdistill.data.pca import PcaEnergyRemover
from crossdistill.data.readers.mnist_idx import IdxFormatError
from crossdistill.diagnose import diagnose
from crossdistill.models.fusion import FusionEncoder
from crossdistill.pipeline import train
from crossdistill.tables.spec import load_spec
from crossdistill.utils.config import CONFIG_DIR
from test_fsdd_reader import TINY_SPEAKERS, tone, write_fsdd

REAL_DATA = Path("/work/shared/data")
IMAGES_PER_DIGIT = 20


def write_idx(path: Path, magic: int, array: np.ndarray) -> None:
    header = magic.to_bytes(4, "big") + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def write_mnist(root: Path, per_digit: int = IMAGES_PER_DIGIT, seed: int = 0) -> Path:
    """``t10k-{images-idx3,labels-idx1}-ubyte.gz``: a bright bar whose position says the digit."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10), per_digit)
    rng.shuffle(labels)
    images = rng.integers(0, 40, size=(len(labels), 28, 28))
    for i, digit in enumerate(labels):
        images[i, 2 + 2 * digit : 5 + 2 * digit, 4:24] = 250
    write_idx(root / "t10k-images-idx3-ubyte.gz", 0x803, images)
    write_idx(root / "t10k-labels-idx1-ubyte.gz", 0x801, labels)
    return root


@pytest.fixture(scope="module")
def tiny_roots(tmp_path_factory) -> tuple[Path, Path]:
    """3 speakers x 10 digits x 6 recordings; 20 images per digit."""
    base = tmp_path_factory.mktemp("avmnist")
    return write_fsdd(base / "fsdd"), write_mnist(base / "mnist")


def make_dm(roots: tuple[Path, Path], tmp_path: Path, **kwargs) -> AvMnistDataModule:
    fsdd, mnist = roots
    options = {
        "customary_test_indices": 2,
        "val_fraction": 0.25,
        "image_val_fraction": 0.2,
        "image_test_fraction": 0.2,
        "batch_size": 8,
        "features": {"n_mels": 16, "n_fft": 128, "hop_length": 64, "clip_seconds": 0.3},
        **kwargs,
    }
    dm = AvMnistDataModule(str(fsdd), str(mnist), data_dir=str(fsdd.parent / "data"), **options)
    dm.setup("fit")
    return dm


def image_labels(dm: AvMnistDataModule, split: str) -> list[int]:
    """The MNIST label of the image paired with each recording (from the sample ids)."""
    labels = np.concatenate([dm._load_images()[1]])
    return [int(labels[int(i.split("+mnist")[1])]) for i in dm.sample_ids(split)]


# ------------------------------------------------------------------ PCA
def test_pca_removes_the_requested_share_of_the_energy():
    # 8 directions of equal variance (12.5 % of the energy each) in 64-pixel images
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.standard_normal((64, 8)))[0].T
    train_images = 100 + 3.0 * rng.standard_normal((4000, 8)) @ basis
    held_out = 100 + 3.0 * rng.standard_normal((4000, 8)) @ basis
    mean = train_images.mean(0)
    for removed, components, expected in ((0.75, 2, 0.75), (0.5, 4, 0.5), (0.2, 6, 0.25)):
        pca = PcaEnergyRemover(removed).fit(train_images.reshape(-1, 8, 8))
        assert pca.num_components == components
        for images, reported in ((train_images, True), (held_out, False)):
            out = pca.transform(images.reshape(-1, 8, 8)).reshape(len(images), -1)
            share = ((images - out) ** 2).sum() / ((images - mean) ** 2).sum()
            assert share == pytest.approx(expected, abs=0.03)
            if reported:  # the logged share is the one measured on the training images
                assert share == pytest.approx(pca.removed_fraction, abs=1e-5)
        assert ((out - mean) * (held_out - out)).sum() == pytest.approx(0.0, abs=1e-2 * len(out))
    untouched = PcaEnergyRemover(0.0).fit(train_images).transform(train_images)
    assert np.allclose(untouched, train_images, atol=1e-3)
    with pytest.raises(ValueError, match=r"image_energy_removed must be in \[0, 1\), got 1.0"):
        PcaEnergyRemover(1.0)


# ------------------------------------------------------------------ features and cache
def test_log_mel_and_fbank_have_fixed_size():
    waves = [tone(1, 0, 0, 0.1), tone(2, 0, 0, 0.5)]
    params = FeatureParams(n_mels=16, n_fft=128, hop_length=64, clip_seconds=0.3)
    log_mel = compute_features(waves, params)
    assert log_mel.shape == (2, 16, 1 + 2400 // 64) and log_mel.dtype == np.float32
    # the short recording is zero-padded: its last frames are silence (log of the floor)
    assert log_mel[0, :, -3:].max() < np.log(1e-5) < log_mel[0, :, :5].max()
    fbank = compute_features(waves, FeatureParams(**{**params.__dict__, "kind": "fbank"}))
    assert fbank.shape == (2, 16, 1 + (2400 - 128) // 64)
    noisy = compute_features(waves, FeatureParams(**{**params.__dict__, "snr_db": 0.0}))
    assert noisy[0, :, -3:].max() < np.log(1e-5)  # noise added before the padding
    assert not np.allclose(noisy[1], log_mel[1])
    with pytest.raises(ValueError, match=r"kind='mfcc'; valid: \['log_mel', 'fbank'\]"):
        FeatureParams(kind="mfcc")
    with pytest.raises(ValueError, match=r"data.features: unknown key\(s\) \['nmels'\]"):
        FeatureParams.from_config({"nmels": 3}, "data.features")


def test_feature_cache_is_reused_and_recomputed_when_params_or_files_change(tmp_path, monkeypatch):
    fsdd = write_fsdd(tmp_path / "fsdd", indices=3)
    roots = (fsdd, write_mnist(tmp_path / "mnist"))
    calls: list[int] = []
    real = audio_features.compute_features

    def counting(waves, params):
        calls.append(len(waves))
        return real(waves, params)

    monkeypatch.setattr(audio_features, "compute_features", counting)
    first = make_dm(roots, tmp_path)
    assert calls == [90]
    cache = sorted((tmp_path / "data" / "avmnist" / "features").glob("*.npy"))
    assert len(cache) == 1  # ONE memory-mapped file for all recordings
    assert np.load(cache[0], mmap_mode="r").shape == (90, 16, 38)
    again = make_dm(roots, tmp_path)
    assert calls == [90]  # reused
    assert torch.equal(again.dataset("train").audio, first.dataset("train").audio)
    make_dm(roots, tmp_path, features={"n_mels": 8, "n_fft": 128, "hop_length": 64})
    assert calls == [90, 90]  # another parameter: recomputed
    path = fsdd / "recordings" / "5_bob_2.wav"
    path.write_bytes(path.read_bytes()[:-2] + b"\x01\x02")  # one sample changed
    make_dm(roots, tmp_path)
    assert calls == [90, 90, 90]
    assert len(list((tmp_path / "data" / "avmnist" / "features").glob("*.npy"))) == 3


# ------------------------------------------------------------------ splits
def speakers_of(dm: AvMnistDataModule, split: str) -> set[str]:
    return {dm.recordings[i].speaker for i in dm.split_recordings[split]}


def test_customary_split(tiny_roots, tmp_path):
    dm = make_dm(tiny_roots, tmp_path)
    test = [dm.recordings[i] for i in dm.split_recordings["test"]]
    assert sorted({r.index for r in test}) == [0, 1] and len(test) == 3 * 10 * 2
    train_val = np.concatenate([dm.split_recordings["train"], dm.split_recordings["val"]])
    assert sorted({dm.recordings[i].index for i in train_val}) == [2, 3, 4, 5]
    assert len(set(train_val)) == len(train_val) == 120
    assert len(dm.split_recordings["val"]) == 30  # 25 % of every speaker x digit (4 -> 1)
    assert speakers_of(dm, "test") == speakers_of(dm, "train") == set(TINY_SPEAKERS)
    assert {s: len(dm.dataset(s)) for s in ("train", "val", "test")} == {
        "train": 90, "val": 30, "test": 60
    }  # fmt: skip
    other = make_dm(tiny_roots, tmp_path, split_seed=1)
    assert list(other.split_recordings["val"]) != list(dm.split_recordings["val"])
    assert list(other.split_recordings["test"]) == list(dm.split_recordings["test"])


def test_speaker_disjoint_split_has_no_speaker_leakage(tiny_roots, tmp_path):
    dm = make_dm(tiny_roots, tmp_path, split="speaker_disjoint", test_speakers=["bob"])
    assert speakers_of(dm, "test") == {"bob"} and len(dm.dataset("test")) == 60
    assert "bob" not in speakers_of(dm, "train") | speakers_of(dm, "val")
    assert speakers_of(dm, "train") == {"alice", "carl"}
    assert len(dm.dataset("train")) + len(dm.dataset("val")) == 120


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"test_speakers": ["bob"]}, r"data.test_speakers=\['bob'\] is used by split=speaker_d"),
        ({"split": "speaker_disjoint"}, r"needs data.test_speakers from \['alice', 'bob', 'c"),
        ({"split": "speaker_disjoint", "test_speakers": ["eve"]}, r"got \['eve'\]"),
        ({"split": "random"}, r"data.split='random' is not valid; use one of \['customary'"),
        ({"pairing": "once"}, r"data.pairing='once' is not valid"),
        ({"teacher_modality": "video"}, r"data.teacher_modality='video' is not valid"),
        ({"mnist_splits": ["test"]}, r"data.mnist_splits\[\]='test' is not valid"),
    ],
)
def test_bad_options_fail_naming_the_key(tiny_roots, tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_dm(tiny_roots, tmp_path, **kwargs)


def test_image_pools_are_stratified_and_disjoint(tiny_roots, tmp_path):
    dm = make_dm(tiny_roots, tmp_path)
    labels = dm._load_images()[1]
    pools = dm.split_images
    assert sum(len(p) for p in pools.values()) == 200
    assert len(set(np.concatenate(list(pools.values())))) == 200
    for split, per_digit in (("train", 12), ("val", 4), ("test", 4)):
        assert np.bincount(labels[pools[split]], minlength=10).tolist() == [per_digit] * 10


def test_bad_idx_file_fails_naming_it(tmp_path):
    fsdd = write_fsdd(tmp_path / "fsdd", indices=3)
    mnist = write_mnist(tmp_path / "mnist")
    (mnist / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03abcd"))
    with pytest.raises(IdxFormatError, match=r"t10k-labels-idx1-ubyte.gz: wrong magic number"):
        make_dm((fsdd, mnist), tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"MNIST folder .*empty: no \{train,t10k\}"):
        make_dm((fsdd, empty), tmp_path)


# ------------------------------------------------------------------ pairing
def test_fixed_pairing_matches_digits_and_is_seeded(tiny_roots, tmp_path):
    dm = make_dm(tiny_roots, tmp_path)
    for split in ("train", "val", "test"):
        digits = [dm.recordings[i].digit for i in dm.split_recordings[split]]
        assert image_labels(dm, split) == digits
        pool = set(dm.split_images[split])
        assert all(int(i.split("+mnist")[1]) in pool for i in dm.sample_ids(split))
    # 9 training recordings per digit, 12 images per digit: all different
    ids = dm.sample_ids("train")
    assert len({i.split("+")[1] for i in ids}) == len(ids)
    same = make_dm(tiny_roots, tmp_path)
    assert same.sample_ids("train") == ids
    assert make_dm(tiny_roots, tmp_path, pairing_seed=1).sample_ids("train") != ids
    batch = dm.dataset("train")[5]
    assert set(batch) == {"teacher_input", "student_input", "label", "index"}
    assert batch["index"].item() == 5 and batch["label"].item() == digits_of(dm, "train")[5]
    assert torch.equal(dm.dataset("train")[5]["teacher_input"], batch["teacher_input"])
    assert dm.teacher_input_fixed_per_index


def digits_of(dm: AvMnistDataModule, split: str) -> list[int]:
    return [dm.recordings[i].digit for i in dm.split_recordings[split]]


def test_per_epoch_pairing_redraws_training_images_of_the_same_digit(tiny_roots, tmp_path):
    dm = make_dm(tiny_roots, tmp_path, pairing="per_epoch")
    train = dm.dataset("train")
    torch.manual_seed(0)
    draws = [[train.image_position(i) for i in range(len(train))] for _ in range(2)]
    assert draws[0] != draws[1]
    pool_labels = dm._load_images()[1][dm.split_images["train"]]
    for draw in draws:
        assert [int(pool_labels[j]) for j in draw] == digits_of(dm, "train")
    torch.manual_seed(0)
    assert [train.image_position(i) for i in range(len(train))] == draws[0]  # seeded
    assert dm.sample_ids("train") == [dm.recordings[i].name for i in dm.split_recordings["train"]]
    test = dm.dataset("test")
    assert [test.image_position(i) for i in range(3)] == [test.image_position(i) for i in range(3)]
    assert not dm.teacher_input_fixed_per_index  # the image teacher's input changes
    audio_teacher = make_dm(
        tiny_roots, tmp_path, pairing="per_epoch", teacher_modality="audio",
        student_modality="image",
    )  # fmt: skip
    assert audio_teacher.teacher_input_fixed_per_index


def test_modalities_shapes_and_the_packed_fusion_input(tiny_roots, tmp_path):
    dm = make_dm(tiny_roots, tmp_path, teacher_modality="fusion", student_modality="audio")
    sample = dm.dataset("train")[3]
    assert sample["student_input"].shape == (16, 38)  # [n_mels, frames]
    teacher = sample["teacher_input"]
    assert teacher.shape == (28 * 28 + 16 * 38,)
    assert torch.equal(teacher[784:], sample["student_input"].reshape(-1))
    image = dm.dataset("train").images[dm.dataset("train").paired_image[3]]
    assert torch.equal(teacher[:784], image.reshape(-1))
    assert dm.encoder_inputs("teacher") == {
        "image_shape": [1, 28, 28], "audio_shape": [16, 38], "input_dim": 784 + 608
    }  # fmt: skip
    assert dm.encoder_inputs("student")["in_channels"] == 16
    spectrogram = make_dm(tiny_roots, tmp_path, audio_layout="spectrogram")
    assert spectrogram.dataset("val")[0]["student_input"].shape == (1, 16, 38)
    assert spectrogram.dataset("val")[0]["teacher_input"].shape == (1, 28, 28)
    # normalised with training statistics: each Mel band has mean 0 / std 1 on train
    audio = dm.dataset("train").audio
    assert audio.mean(dim=(0, 2)).abs().max() < 1e-4
    assert (audio.std(dim=(0, 2)) - 1).abs().max() < 1e-3


def test_fusion_encoder_splits_the_packed_input():
    encoder = FusionEncoder(
        [1, 28, 28], [16, 38], {"channels": [4, 8], "embedding_dim": 6},
        {"channels": [4, 8], "embedding_dim": 5},
    )  # fmt: skip
    image, audio = torch.randn(3, 1, 28, 28), torch.randn(3, 16, 38)
    packed = torch.cat((image.flatten(1), audio.flatten(1)), dim=1)
    out = encoder.eval()(packed)
    assert out.shape == (3, 11) and encoder.embedding_dim == 11
    assert torch.allclose(out[:, :6], encoder.image(image)) and torch.allclose(
        out[:, 6:], encoder.audio(audio)
    )
    assert encoder.audio.dims == 1 and encoder.image.dims == 2
    with pytest.raises(ValueError, match=r"FusionEncoder expects \[B, 784 \+ 608\]"):
        encoder(torch.randn(3, 100))


# ------------------------------------------------------------------ end to end
TABLE = load_spec("avmnist")
#: fast: each setting once, with the cross-layout options the table rows add
FAST_CASES = [
    ("avmnist/i2a", "logit KD"),
    ("avmnist/a2i", "AT"),
    ("avmnist/fusion2a", "FitNets (2 layers)"),
    ("avmnist/fusion2a", "CRD"),
]


def tiny_overrides(roots: tuple[Path, Path]) -> list[str]:
    return [
        f"data.fsdd_root={roots[0]}", f"data.mnist_root={roots[1]}",
        "data.customary_test_indices=2", "data.val_fraction=0.25", "data.batch_size=8",
        "data.features.n_mels=16", "data.features.clip_seconds=0.3", "logger=[]",
        "callbacks.progress_bar=null", "+trainer.enable_progress_bar=false",
    ]  # fmt: skip


def run_row(roots, compose_cfg, tmp_path, experiment: str, row_name: str) -> dict:
    """One table row on one setting under fast_dev_run, on the tiny data."""
    row = TABLE.row(row_name)
    overrides = [o for o in row.train_overrides if not o.startswith("data.test_speakers")]
    if "data.split=speaker_disjoint" in overrides:
        overrides.append("data.test_speakers=[bob]")  # a speaker of the tiny data
    cfg = compose_cfg(
        f"experiment={experiment}", *overrides, "debug=fast_dev_run", *tiny_overrides(roots)
    )
    summary = train(cfg)
    assert summary["student"] and (tmp_path / "run" / "metrics.json").is_file()
    return summary


@pytest.mark.parametrize(("experiment", "row"), FAST_CASES)
def test_fast_dev_run_of_each_setting(tiny_roots, compose_cfg, tmp_path, experiment, row):
    summary = run_row(tiny_roots, compose_cfg, tmp_path, experiment, row)
    assert summary["teacher"]  # a teacher was trained and tested


@pytest.mark.slow  # ~40 s: a teacher, a student and Algorithm 1
def test_algorithm1_ranks_the_fused_channels_of_the_fusion_teacher(tiny_roots, compose_cfg):
    cfg = compose_cfg(
        "experiment=avmnist/fusion2a", "distill=kd", *tiny_overrides(tiny_roots),
        "trainer.max_epochs=1", "teacher.max_epochs=1",
    )  # fmt: skip
    run_dir = train(cfg)["run_dir"]
    options = {"ckpt": "auto", "layer": "fused", "split": "train", "max_samples": 16}
    table = diagnose(
        OmegaConf.create(
            {"run_dir": run_dir, **options, "n_repeats": 1, "top_k": 5, "chunk": 16, "seed": 0}
        )
    )
    assert sorted(table.channel) == list(range(128))  # image channels 0-63, audio 64-127
    assert (Path(run_dir) / "alg1_fused_train.csv").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("row", [r.name for r in TABLE.rows])
@pytest.mark.parametrize("column", [c.name for c in TABLE.columns])
def test_every_table_row_runs_on_every_setting(tiny_roots, compose_cfg, tmp_path, row, column):
    experiment = next(c for c in TABLE.columns if c.name == column).overrides[0].split("=")[1]
    run_row(tiny_roots, compose_cfg, tmp_path, experiment, row)


VARIANTS = sorted(
    set(p.stem for p in (CONFIG_DIR / "distill").glob("*.yaml"))
    - {o.split("=")[1] for r in TABLE.rows for o in r.overrides if o.startswith("distill=")}
)


@pytest.mark.slow
@pytest.mark.parametrize("method", VARIANTS)
@pytest.mark.parametrize("column", [c.name for c in TABLE.columns])
def test_methods_outside_the_table_run_on_every_setting(
    tiny_roots, compose_cfg, tmp_path, method, column
):
    """Every other registered method config runs by ``distill=<name>`` alone."""
    experiment = next(c for c in TABLE.columns if c.name == column).overrides[0]
    cfg = compose_cfg(
        experiment, f"distill={method}", "debug=fast_dev_run", *tiny_overrides(tiny_roots)
    )
    assert train(cfg)["student"]


def test_no_kd_audio_student_learns_the_tiny_tones(tiny_roots, compose_cfg):
    cfg = compose_cfg(
        "experiment=avmnist/i2a", *tiny_overrides(tiny_roots), "data.features.snr_db=null",
        "trainer.max_epochs=6",
    )  # fmt: skip
    summary = train(cfg)
    assert summary["student"]["test/acc"] > 0.5  # chance: 0.1


@pytest.mark.slow
def test_real_fsdd_and_mnist(tmp_path):
    fsdd, mnist = REAL_DATA / "fsdd", REAL_DATA / "mnist"
    if not (fsdd / "recordings").is_dir() or not mnist.is_dir():
        pytest.skip(f"real data not found at {REAL_DATA} (FSDD + MNIST t10k; docs/avmnist.md)")
    dm = AvMnistDataModule(str(fsdd), str(mnist), data_dir=str(tmp_path), batch_size=32)
    dm.setup("fit")
    assert len(dm.recordings) == 3000 and len({r.speaker for r in dm.recordings}) == 6
    assert {s: len(dm.dataset(s)) for s in ("train", "val", "test")} == {
        "train": 2460, "val": 240, "test": 300
    }  # fmt: skip
    assert sum(len(p) for p in dm.split_images.values()) == 10000
    # the 3 leading components hold 23.9 % of the training images' energy: 76.1 % removed
    assert dm.pca.num_components == 3
    assert dm.pca.removed_fraction == pytest.approx(0.761, abs=0.002)
    assert image_labels(dm, "test") == digits_of(dm, "test")
    assert dm.dataset("train")[0]["student_input"].shape == (40, 63)
    held_out = AvMnistDataModule(
        str(fsdd), str(mnist), data_dir=str(tmp_path), split="speaker_disjoint",
        test_speakers=["theo"],
    )  # fmt: skip
    held_out.setup("fit")
    assert speakers_of(held_out, "test") == {"theo"} and len(held_out.dataset("test")) == 500
