"""Face -> voice data layer: synthetic generator, VoxCeleb-layout loader, degradations."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from crossdistill.data.datamodules.face_voice import FaceVoiceDataModule
from crossdistill.data.degrade import (
    DegradationConfig,
    Degrader,
    add_noise_at_snr,
    add_reverb,
    estimate_snr_db,
    measured_snr_db,
)
from crossdistill.data.generators import synth_face_voice as synth
from crossdistill.data.readers.voxceleb.bad_files import BadFileError
from crossdistill.data.readers.voxceleb.media import load_waveform
from crossdistill.data.readers.voxceleb.scan import scan_voxceleb
from crossdistill.data.readers.voxceleb.splits import split_identities
from crossdistill.data.readers.voxceleb.trials import TrialListError, make_trials, read_trials

SR = 16000
TINY = {"n_identities": 8, "n_voice_factors": 3, "gamma": 0.5, "n_face_only": 1,
        "videos_per_identity": 2, "utterances_per_video": 2, "frames_per_video": 2,
        "utt_seconds_min": 1.0, "utt_seconds_max": 1.5, "image_size": 32,
        "n_val_identities": 2, "n_test_identities": 2, "n_trials": 12, "n_val_trials": 12,
        "n_teacher_identities": 6, "teacher_frames_per_identity": 2, "seed": 3}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fv_data")


@pytest.fixture(scope="module")
def synth_root(data_dir) -> Path:
    return synth.generate_synth_face_voice(data_dir, TINY)


@pytest.fixture()
def real_copy(synth_root, tmp_path) -> Path:
    """A writable copy of the tiny data set, used as 'real' VoxCeleb-layout data."""
    dst = tmp_path / "vox"
    shutil.copytree(synth_root, dst)
    return dst


def real_dm(root: Path, **kw) -> FaceVoiceDataModule:
    args = {"root": str(root), "image_size": 32, "crop_seconds": 0.5, "batch_size": 4,
            "split_files": {s: f"splits/{s}.txt" for s in ("train", "val", "test")},
            "val_trials": "trials_val.txt", "test_trials": "trials_test.txt"}
    return FaceVoiceDataModule(**{**args, **kw})


def tiny_dm(data_dir: Path, **kw) -> FaceVoiceDataModule:
    return FaceVoiceDataModule(data_dir=str(data_dir), generator=TINY, crop_seconds=0.5,
                               batch_size=4, seed=1, **kw)


# --------------------------------------------------------------------------- generator
def test_generator_layout(synth_root):
    wavs = sorted((synth_root / "wav").glob("*/*/*.wav"))
    faces = sorted((synth_root / "faces").glob("*/*/*.png"))
    assert len(wavs) == 8 * 2 * 2 and len(faces) == 8 * 2 * 2
    assert wavs[0].relative_to(synth_root).as_posix() == "wav/id00001/vid00/00001.wav"
    assert faces[0].relative_to(synth_root).as_posix() == "faces/id00001/vid00/0001.png"
    for w in wavs[:4]:
        info = sf.info(str(w))
        assert (info.samplerate, info.channels, info.subtype) == (SR, 1, "PCM_16")
        assert 1.0 <= info.duration <= 1.5 + 1e-3
    with Image.open(faces[0]) as im:
        assert im.size == (32, 32) and im.mode == "RGB"
    splits = {s: (synth_root / "splits" / f"{s}.txt").read_text().split() for s in
              ("train", "val", "test")}
    assert [len(splits[s]) for s in ("train", "val", "test")] == [4, 2, 2]
    assert len(set(sum(splits.values(), []))) == 8
    for s in ("val", "test"):
        lines = (synth_root / f"trials_{s}.txt").read_text().splitlines()
        labels = []
        for line in lines:
            label, a, b = line.split()
            labels.append(int(label))
            assert label in ("0", "1") and a != b
            assert (synth_root / "wav" / a).is_file() and (synth_root / "wav" / b).is_file()
            assert {a.split("/")[0], b.split("/")[0]} <= set(splits[s])
            assert (a.split("/")[0] == b.split("/")[0]) == (label == "1")
        assert labels.count(1) == labels.count(0) > 0
    manifest = json.loads((synth_root / "manifest.json").read_text())
    assert manifest["params"]["n_identities"] == 8 and manifest["n_utterances"] == 32


def test_generator_cache(data_dir, synth_root, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("regenerated although cached")

    monkeypatch.setattr(synth, "_write_dataset", boom)
    assert synth.generate_synth_face_voice(data_dir, TINY) == synth_root
    with pytest.raises(AssertionError, match="regenerated"):  # other params -> new dir
        synth.generate_synth_face_voice(data_dir, {**TINY, "gamma": 1.0})


def test_generator_rejects_unknown_key(data_dir):
    with pytest.raises(KeyError, match="n_speakers"):
        synth.generate_synth_face_voice(data_dir, {"n_speakers": 3})


def _f0(x: np.ndarray, sr: int = SR) -> float:
    """Median f0 of the loud frames: centre-clipped autocorrelation."""
    fl = int(0.05 * sr)
    frames = [x[i : i + fl] for i in range(0, len(x) - fl, fl // 2)]
    energy = np.array([np.mean(f**2) for f in frames])
    lo, hi, est = sr // 400, sr // 70, []
    for f, e in zip(frames, energy, strict=True):
        if e < np.percentile(energy, 60):
            continue
        c = 0.6 * np.abs(f).max()
        s = np.where(f > c, f - c, np.where(f < -c, f + c, 0.0))
        ac = np.correlate(s, s, "full")[fl - 1 :]
        seg = ac[lo:hi]
        peaks = np.flatnonzero((seg[1:-1] > seg[:-2]) & (seg[1:-1] >= seg[2:])) + 1
        good = peaks[seg[peaks] > 0.8 * seg.max()]  # first strong peak: avoids octave errors
        if len(good):
            est.append(sr / (lo + good[0]))
    return float(np.median(est))


def test_voice_pitch_is_an_identity_trait(synth_root):
    idents = json.loads((synth_root / "identities.json").read_text())
    true, est = [], []
    for d in idents:
        wavs = sorted((synth_root / "wav" / d["identity"]).glob("*/*.wav"))
        true.append(d["f0_hz"])
        est.append(np.median([_f0(sf.read(str(w))[0]) for w in wavs]))
    assert np.corrcoef(np.log(true), np.log(est))[0, 1] > 0.8
    assert np.ptp(np.log2(est)) > 0.5  # identities span more than half an octave


# --------------------------------------------------------------------------- data module
def test_datamodule_synthetic_batches(data_dir, synth_root):
    dm = tiny_dm(data_dir)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.num_classes == 4 and dm.sample_rate == SR and dm.image_size == 32
    assert dm.teacher_input_shape == (3, 32, 32) and dm.student_input_shape == (8000,)
    ids = {s: set(dm.splits[s]) for s in ("train", "val", "test")}
    assert not (ids["train"] & ids["val"] or ids["train"] & ids["test"] or ids["val"] & ids["test"])
    assert ids["test"] == set((synth_root / "splits/test.txt").read_text().split())

    batch = next(iter(dm.train_dataloader()))
    assert batch["teacher_input"].shape == (4, 3, 32, 32)
    assert batch["teacher_input"].dtype == torch.float32
    assert batch["teacher_input"].min() >= -1 and batch["teacher_input"].max() <= 1
    assert batch["student_input"].shape == (4, 8000)
    assert batch["student_input"].dtype == torch.float32
    assert batch["label"].dtype == torch.int64 and batch["index"].dtype == torch.int64
    assert batch["student_snr_db"].shape == (4,) and torch.isfinite(batch["student_snr_db"]).all()
    train = dm.datasets["train"]
    for i, y in zip(batch["index"].tolist(), batch["label"].tolist(), strict=True):
        assert dm.splits["train"][y] == train.items[i].identity
    # eval: full utterances, zero-padded, with true lengths
    ev = next(iter(dm.test_dataloader()))
    test = dm.dataset("test")
    lengths = [sf.info(str(dm.wav_root / p)).frames for p in test.paths[: len(ev["index"])]]
    assert ev["student_lengths"].tolist() == lengths
    assert ev["student_input"].shape == (len(lengths), max(lengths))
    assert ev["student_input"][0, lengths[0]:].abs().sum() == 0 or lengths[0] == max(lengths)
    assert set(ev["label"].tolist()) <= {0, 1}
    trials = dm.trials("test")
    assert trials and all(t.enroll in test.path_to_index and t.test in test.path_to_index
                          for t in trials)
    assert len(dm.dataset("val")) == 8


def test_seeded_split_uses_trial_speakers(real_copy):
    kw = {"split_files": None, "n_val_identities": 2, "seed": 5}
    dm = real_dm(real_copy, **kw)
    dm.setup()
    trial_ids = {p.split("/")[0] for t in dm.trials("test") for p in (t.enroll, t.test)}
    assert set(dm.splits["test"]) == trial_ids
    assert len(dm.splits["val"]) == 2 and dm.num_classes == 4
    dm2 = real_dm(real_copy, **kw)
    assert dm2.num_classes == 4 and dm2.splits == dm.splits  # deterministic
    s = split_identities([f"id{i}" for i in range(20)], 0.1, 3, seed=0)
    assert [len(s[k]) for k in ("train", "val", "test")] == [15, 2, 3]
    assert not set(s["train"]) & (set(s["val"]) | set(s["test"]))


def test_make_trials_balanced():
    utts = {f"id{i}": [f"id{i}/v{j % 2}/{j}.wav" for j in range(4)] for i in range(3)}
    trials = make_trials(utts, 10, seed=0)
    labels = [t.label for t in trials]
    assert labels.count(1) == labels.count(0) == 5
    assert all(t.enroll.split("/")[1] != t.test.split("/")[1] for t in trials if t.label)
    assert make_trials(utts, 10, seed=0) == trials


# --------------------------------------------------------------------------- degradations
@pytest.mark.parametrize("snr", [0.0, 10.0, 20.0])
@pytest.mark.parametrize("kind", ["white", "pink"])
def test_add_noise_hits_requested_snr(synth_root, snr, kind):
    wave = torch.from_numpy(sf.read(str(synth_root / "wav/id00001/vid00/00001.wav"),
                                    dtype="float32")[0])
    noisy = add_noise_at_snr(wave, snr, np.random.default_rng(0), kind)
    assert abs(measured_snr_db(wave, noisy) - snr) < 0.5


def test_snr_estimator_ranks_clean_20_0(synth_root):
    rng = np.random.default_rng(0)
    for w in sorted((synth_root / "wav").glob("*/*/*.wav"))[:6]:
        wave = torch.from_numpy(sf.read(str(w), dtype="float32")[0])
        est = [estimate_snr_db(wave, SR)] + [
            estimate_snr_db(add_noise_at_snr(wave, s, rng), SR) for s in (20.0, 0.0)]
        assert est[0] > est[1] > est[2], (w, est)
    assert estimate_snr_db(torch.zeros(SR), SR) == -20.0  # silence: lowest quality


def test_degradation_in_datamodule_hits_snr_and_is_deterministic(data_dir):
    deg = {"speech": {"prob": 1.0, "snr_db": [10.0]},
           "face": {"prob": 1.0, "kinds": ["blur", "occlusion", "low_light"]},
           "splits": ["test"]}
    clean = tiny_dm(data_dir).dataset("test")
    noisy = tiny_dm(data_dir, degradation=deg).dataset("test")
    for i in range(3):
        a, b, b2 = clean[i], noisy[i], noisy[i]
        assert bool(b["student_degraded"]) and bool(b["teacher_degraded"])
        assert abs(measured_snr_db(a["student_input"], b["student_input"]) - 10.0) < 0.5
        assert torch.equal(b["student_input"], b2["student_input"])
        assert torch.equal(b["teacher_input"], b2["teacher_input"])
        assert not torch.equal(a["teacher_input"], b["teacher_input"])
        assert b["student_snr_db"] < a["student_snr_db"]
    train = tiny_dm(data_dir, degradation=deg).datasets["train"]
    assert not bool(train[0]["student_degraded"])  # train not in splits


def test_degrader_fraction_and_reverb():
    cfg = DegradationConfig.from_dict({"speech": {"prob": 0.3, "reverb_prob": 1.0}})
    deg = Degrader(cfg, SR)
    hits = [deg.speech(torch.randn(1600), "train", i)[1] is not None for i in range(400)]
    assert 0.2 < np.mean(hits) < 0.4
    wave = torch.randn(SR)
    rev = add_reverb(wave, 0.4, SR, np.random.default_rng(0))
    assert rev.shape == wave.shape and torch.isclose(rev.std(), wave.std(), rtol=1e-3)
    with pytest.raises(KeyError, match="snr"):
        DegradationConfig.from_dict({"speech": {"snr": [5]}})
    with pytest.raises(ValueError, match="valid"):
        DegradationConfig.from_dict({"face": {"prob": 0.5, "kinds": ["fog"]}})


# --------------------------------------------------------------------------- bad input
def test_missing_root_message(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        real_dm(tmp_path / "nowhere").setup()
    assert str(tmp_path / "nowhere") in str(e.value) and "<identity>/<video>" in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="wav"):
        scan_voxceleb(tmp_path / "empty")


def test_missing_face_root_message(real_copy):
    shutil.rmtree(real_copy / "faces")
    with pytest.raises(FileNotFoundError, match="face root not found.*faces"):
        real_dm(real_copy).setup()


def test_corrupt_wav_raise_and_skip(real_copy, caplog):
    bad = real_copy / "wav/id00001/vid01/00002.wav"
    bad.write_bytes(b"RIFF\x00garbage" * 3)
    empty = real_copy / "faces/id00002/vid00/0001.png"
    empty.write_bytes(b"")
    with pytest.raises(BadFileError, match="id00001/vid01/00002.wav"):
        real_dm(real_copy).setup()
    with caplog.at_level(logging.WARNING):
        dm = real_dm(real_copy, on_bad_file="skip")
        dm.setup()
    skipped = [p for p, _ in dm.skipped_files]
    assert skipped == [str(bad), str(empty)]
    assert "skipped 2 bad file(s)" in caplog.text and str(bad) in caplog.text
    n_total = sum(len(d) for d in dm.datasets.values())
    assert n_total == 31
    assert "id00001/vid01/00002.wav" not in sum((d.paths for d in dm.datasets.values()), [])


def test_unvalidated_corrupt_wav_fails_at_load_naming_file(real_copy):
    bad = real_copy / "wav/id00001/vid00/00001.wav"
    bad.write_bytes(b"")
    dm = real_dm(real_copy, validate_files=False)
    ds = next(d for d in dm.datasets.values() if "id00001/vid00/00001.wav" in d.path_to_index)
    with pytest.raises(BadFileError, match="id00001/vid00/00001.wav"):
        ds[ds.path_to_index["id00001/vid00/00001.wav"]]


def test_trial_with_missing_file_names_line(real_copy):
    lines = (real_copy / "trials_test.txt").read_text().splitlines()
    lines[2] = lines[2].split()[0] + " " + lines[2].split()[1] + " id99999/v/00001.wav"
    (real_copy / "trials_test.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(TrialListError, match=r"line 3: utterance 'id99999/v/00001.wav'"):
        real_dm(real_copy).setup()
    (real_copy / "bad.txt").write_text("1 a.wav\n")
    with pytest.raises(TrialListError, match="line 1: malformed"):
        read_trials(real_copy / "bad.txt", real_copy / "wav")


def test_trial_from_other_split_is_rejected(real_copy):
    train_ids = (real_copy / "splits/train.txt").read_text().split()
    rel = next(p for p in (real_copy / "wav").glob("*/*/*.wav")
               if p.parts[-3] in train_ids).relative_to(real_copy / "wav").as_posix()
    first = (real_copy / "trials_test.txt").read_text().splitlines()[0].split()
    (real_copy / "trials_test.txt").write_text(f"0 {first[1]} {rel}\n")
    with pytest.raises(TrialListError, match="line 1.*another split"):
        real_dm(real_copy).setup()


def test_wrong_sample_rate_resampled_or_refused(real_copy):
    rel = "id00001/vid00/00001.wav"
    path = real_copy / "wav" / rel
    t = np.arange(int(1.2 * 8000)) / 8000
    sf.write(str(path), (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32), 8000,
             subtype="PCM_16")
    with pytest.raises(ValueError, match="8000 Hz differs from the configured 16000 Hz.*resample"):
        real_dm(real_copy, resample=False).setup()
    with pytest.raises(ValueError, match="00001.wav: sample rate 8000"):
        load_waveform(path, SR, resample=False)
    dm = real_dm(real_copy, resample=True)
    ds = next(d for d in dm.datasets.values() if rel in d.path_to_index)
    x = ds[ds.path_to_index[rel]]["student_input"]
    assert x.numel() == (8000 if ds.train else int(1.2 * SR))
    x = load_waveform(path, SR, resample=True)
    assert abs(x.numel() - int(1.2 * SR)) <= 2
    spec = torch.fft.rfft(x).abs()
    assert abs(int(spec.argmax()) * SR / x.numel() - 200) < 5  # a 200 Hz tone stays 200 Hz


# --------------------------------------------------------------------------- configs
def test_hydra_configs_instantiate(data_dir, real_copy):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue

    conf = Path(__file__).resolve().parents[1] / "conf" / "data"
    base = {"paths": {"data_dir": str(data_dir)}, "seed": 0}
    cfg = OmegaConf.merge(base, {"data": OmegaConf.load(conf / "face_voice_synth.yaml")},
                          {"data": {"generator": TINY, "crop_seconds": 0.5}})
    dm = instantiate(cfg.data)
    assert isinstance(dm, FaceVoiceDataModule) and dm.num_classes == 4
    assert dm.degradation.seed == 0 and not dm.degradation.enabled
    vox = OmegaConf.merge(base, {"data": OmegaConf.load(conf / "voxceleb.yaml")})
    with pytest.raises(MissingMandatoryValue):
        instantiate(vox.data)
    vox.data.root = str(real_copy)
    vox.data.update(image_size=32, n_val_identities=2, n_test_identities=2, num_workers=0,
                    test_trials=str(real_copy / "trials_test.txt"), n_generated_trials=10)
    dm = instantiate(vox.data)
    assert dm.num_classes == 4 and len(dm.trials("val")) == 10
    assert next(iter(dm.train_dataloader()))["teacher_input"].shape[1:] == (3, 32, 32)


def test_wav_headers_read_once_per_process_until_a_file_changes(real_copy, monkeypatch):
    from crossdistill.data.readers.voxceleb import scan
    from crossdistill.utils import fingerprint

    monkeypatch.setattr(fingerprint, "_SETTLED_NS", -1)  # every file counts as settled
    monkeypatch.setattr(scan, "_wav_headers", {})
    opened: list[str] = []
    real_info = sf.info
    monkeypatch.setattr(scan.sf, "info", lambda p: opened.append(p) or real_info(p))
    first = scan_voxceleb(real_copy)
    n_files = len(opened)
    assert n_files == len(first.utterances) > 0
    assert scan_voxceleb(real_copy).utterances == first.utterances
    assert len(opened) == n_files  # the second scan read no header
    wav = real_copy / "wav" / first.utterances[0].path
    sf.write(wav, np.zeros(123, dtype=np.float32), SR)  # another length: the scan sees it
    again = scan_voxceleb(real_copy)
    assert opened[n_files:] == [str(wav)]
    assert again.utterances[0].num_frames == 123
