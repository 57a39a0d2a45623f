"""Cached filter banks of the face -> voice data (``data.audio_input=features``).

The features must be what the ECAPA encoder computes from the same waveform, built once
(content-keyed), with the training degradation fixed per sample, training crops taken in
the frame domain, and the evaluator's noisy inputs cached per (seed, SNR, utterance).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch

from crossdistill.data import audio_features
from crossdistill.data.datamodules.face_voice import FaceVoiceDataModule
from crossdistill.data.degrade import add_noise_at_snr, estimate_snr_db
from crossdistill.data.generators import synth_face_voice as synth
from crossdistill.data.readers.voxceleb.collate import pad_collate
from crossdistill.data.readers.voxceleb.media import load_waveform
from crossdistill.models.speech import EcapaSpeechEncoder
from crossdistill.modules.verification import VerificationEvaluator

SR = 16000
N_MELS = 20
TINY = {"n_identities": 8, "n_voice_factors": 3, "gamma": 0.5, "n_face_only": 1,
        "n_teacher_identities": 4, "teacher_frames_per_identity": 2, "n_val_trials": 12,
        "videos_per_identity": 2, "utterances_per_video": 2, "frames_per_video": 2,
        "utt_seconds_min": 0.6, "utt_seconds_max": 1.2, "image_size": 16,
        "n_val_identities": 2, "n_test_identities": 2, "n_trials": 12, "seed": 4}  # fmt: skip
TINY_ECAPA = {"n_mels": N_MELS, "channels": [8, 8, 8, 8, 24], "embedding_dim": 8,
              "attention_channels": 4, "se_channels": 4}  # fmt: skip
# every training utterance noised at 5 dB (faces untouched): the cache holds degraded inputs
DEGRADATION = {"speech": {"prob": 1.0, "snr_db": [5.0]}, "splits": ["train"], "seed": 9}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fv_features")
    synth.generate_synth_face_voice(root, TINY)
    return root


def features_dm(data_dir: Path, cache_dir: Path, **kw) -> FaceVoiceDataModule:
    args = {"data_dir": str(data_dir), "generator": TINY, "image_size": 16,
            "crop_seconds": 0.5, "batch_size": 4, "seed": 1, "audio_input": "features",
            "audio_features": {"n_mels": N_MELS, "cache_dir": str(cache_dir)},
            "degradation": DEGRADATION}  # fmt: skip
    dm = FaceVoiceDataModule(**{**args, **kw})
    dm.setup()
    return dm


@pytest.fixture(scope="module")
def dm(data_dir, tmp_path_factory) -> FaceVoiceDataModule:
    return features_dm(data_dir, tmp_path_factory.mktemp("feature_cache"))


def encoder_fbank(wave: torch.Tensor) -> torch.Tensor:
    """The filter banks the waveform encoder computes itself (before mean normalisation)."""
    enc = EcapaSpeechEncoder(**TINY_ECAPA)
    with torch.no_grad():
        return enc.fbank(wave[None].float())[0]


def test_eval_features_equal_the_encoders_fbank_of_the_waveform(dm):
    ds = dm.dataset("test")
    for i in range(len(ds)):
        wave = load_waveform(ds.index.wav_root / ds.paths[i], SR)
        cached = ds[i]["student_input"]
        assert cached.shape == (wave.numel() // 160 + 1, N_MELS)
        torch.testing.assert_close(cached, encoder_fbank(wave), rtol=0, atol=1e-5)


def test_encoder_on_features_embeds_as_on_the_waveform(dm):
    """End to end: the same weights give the same embedding from the waveform and from the
    cached features (mean normalisation and ECAPA run on both)."""
    torch.manual_seed(0)
    on_wave = EcapaSpeechEncoder(**TINY_ECAPA).eval()
    on_feats = EcapaSpeechEncoder(**TINY_ECAPA, input="features").eval()
    on_feats.load_state_dict(on_wave.state_dict())
    ds = dm.dataset("val")
    with torch.no_grad():
        for i in range(3):
            wave = load_waveform(ds.index.wav_root / ds.paths[i], SR)
            expected = on_wave(wave[None])
            got = on_feats(ds[i]["student_input"][None])
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_training_degradation_is_cached_fixed_per_sample(dm):
    """Row i of the training cache = Fbank of the full utterance noised at 5 dB with the
    noise of (seed 9, train, index i) (written out here); its SNR estimate and flag too."""
    ds = dm.dataset("train")
    store = ds.features
    for i in (0, 3):
        wave = load_waveform(ds.index.wav_root / ds.paths[i], SR)
        rng = np.random.default_rng([9, 0, i, 0])  # (seed, split id of train, index, speech)
        assert rng.random() < 1.0  # the draw "is this sample degraded" (prob 1)
        rng.integers(1)  # the draw of the SNR among [5.0]
        noisy = add_noise_at_snr(wave, 5.0, rng)
        torch.testing.assert_close(
            torch.from_numpy(np.array(store[i])), encoder_fbank(noisy), rtol=0, atol=1e-5
        )
        assert store.columns["snr_db"][i] == pytest.approx(estimate_snr_db(noisy, SR), abs=1e-4)
        assert store.columns["degraded"][i] == 1.0
        sample = ds[i]
        assert bool(sample["student_degraded"])
        assert float(sample["student_snr_db"]) == pytest.approx(store.columns["snr_db"][i])


def test_training_crops_are_taken_in_the_frame_domain(dm):
    ds = dm.dataset("train")
    crop = int(0.5 * SR) // 160 + 1  # frames of a 0.5 s waveform crop
    assert dm.student_input_shape == (crop, N_MELS)
    full = torch.from_numpy(np.array(ds.features[1]))
    assert full.shape[0] > crop
    starts = set()
    torch.manual_seed(0)
    for _ in range(8):  # a new crop every epoch, always a window of the same cached rows
        x = ds[1]["student_input"]
        assert x.shape == (crop, N_MELS)
        matches = [s for s in range(full.shape[0] - crop + 1) if torch.equal(full[s : s + crop], x)]
        assert matches
        starts.add(matches[0])
    assert len(starts) > 1
    batch = next(iter(dm.train_dataloader()))
    assert batch["student_input"].shape == (4, crop, N_MELS)
    assert batch["student_lengths"].tolist() == [crop] * 4


def test_short_utterance_is_wrapped_in_frames(dm):
    ds = dm.dataset("train")
    ds.crop_frames, saved = 400, ds.crop_frames  # longer than every utterance
    try:
        x, full = ds[0]["student_input"], torch.from_numpy(np.array(ds.features[0]))
    finally:
        ds.crop_frames = saved
    n = full.shape[0]
    assert x.shape == (400, N_MELS)
    torch.testing.assert_close(x[:n], full)
    torch.testing.assert_close(x[n : 2 * n], full[: min(n, 400 - n)])


def test_eval_batches_pad_frames_and_keep_true_lengths(dm):
    ds = dm.dataset("test")
    batch = next(iter(dm.loader("test")))
    lengths = [ds.features.length(i) for i in batch["index"].tolist()]
    assert batch["student_lengths"].tolist() == lengths
    assert batch["student_input"].shape == (len(lengths), max(lengths), N_MELS)
    j = int(np.argmin(lengths))
    assert torch.all(batch["student_input"][j, lengths[j] :] == 0)


def test_noisy_eval_features_are_seeded_per_utterance(dm):
    """The evaluator's noisy input = Fbank of the utterance noised with the noise of
    (seed, SNR, index), whatever the batch; padding stays zero."""
    ds = dm.dataset("test")
    batch = next(iter(dm.loader("test")))
    noisy = dm.noisy_eval_input(batch, 10.0, seed=7, split="test")
    for j, i in enumerate(batch["index"].tolist()):
        n = int(batch["student_lengths"][j])
        wave = load_waveform(ds.index.wav_root / ds.paths[i], SR)
        rng = np.random.default_rng([7, 1000 + 100_000, i])
        expected = encoder_fbank(add_noise_at_snr(wave, 10.0, rng))
        torch.testing.assert_close(noisy[j, :n], expected, rtol=0, atol=1e-5)
        assert torch.all(noisy[j, n:] == 0)
    alone = pad_collate([ds[int(batch["index"][1])]])
    torch.testing.assert_close(
        dm.noisy_eval_input(alone, 10.0, seed=7, split="test")[0],
        noisy[1, : int(batch["student_lengths"][1])],
    )
    with pytest.raises(ValueError, match="split='val' or 'test'"):
        dm.noisy_eval_input(batch, 10.0, seed=7)


def test_cache_built_once_reused_and_keyed_by_content(data_dir, tmp_path, monkeypatch):
    calls = []
    real = audio_features.FbankExtractor.__call__

    def counting(self, wave):
        calls.append(wave.numel())
        return real(self, wave)

    monkeypatch.setattr(audio_features.FbankExtractor, "__call__", counting)
    root = tmp_path / "copy"
    shutil.copytree(data_dir, root)
    cache = tmp_path / "cache"
    first = features_dm(root, cache)
    n_utts = sum(len(first.dataset(s)) for s in ("train", "val", "test"))
    assert len(calls) == n_utts
    assert len(list(cache.glob("*.npy"))) == 3  # one flat array per split
    second = features_dm(root, cache)  # a new run: everything read back, nothing computed
    assert len(calls) == n_utts
    np.testing.assert_array_equal(
        second.dataset("train").features.frames, first.dataset("train").features.frames
    )
    # another degradation seed: new training features only
    features_dm(root, cache, degradation={**DEGRADATION, "seed": 10})
    assert len(calls) == n_utts + len(first.dataset("train"))
    # the content of one test utterance changes (same name, same length): new test features
    test = first.dataset("test")
    wav = test.index.wav_root / test.paths[0]
    data, rate = sf.read(wav, dtype="float32")
    sf.write(wav, data[::-1].copy(), rate)
    before = len(calls)
    changed = features_dm(root, cache)
    assert len(calls) == before + len(test)
    assert not np.array_equal(
        np.array(changed.dataset("test").features[0]), np.array(test.features[0])
    )


def test_encoder_refuses_other_filter_bank_settings():
    given = {"sample_rate": SR, "n_mels": 40, "n_fft": 400, "win_length": 25, "hop_length": 10}
    expected = "data.audio_features.n_mels=40 vs student.encoder.n_mels=20"
    with pytest.raises(ValueError, match=expected):
        EcapaSpeechEncoder(**TINY_ECAPA, input="features", input_features=given)
    with pytest.raises(ValueError, match="student.encoder.input='waveform'"):
        EcapaSpeechEncoder(**TINY_ECAPA, input_features={**given, "n_mels": N_MELS})
    with pytest.raises(ValueError, match="valid: \\['waveform', 'features'\\]"):
        EcapaSpeechEncoder(**TINY_ECAPA, input="fbank")
    enc = EcapaSpeechEncoder(**TINY_ECAPA, input="features")
    with pytest.raises(ValueError, match="expected filter banks"):
        enc(torch.zeros(2, 16000))


def test_real_layout_data_with_cached_features(data_dir, tmp_path):
    """The VoxCeleb reader path (``root`` given) serves cached features too."""
    root = data_dir / "synth_face_voice"
    (root,) = [p for p in root.iterdir() if (p / "wav").is_dir()]
    dm = FaceVoiceDataModule(
        root=str(root), image_size=16, crop_seconds=0.5, batch_size=4,
        split_files={s: f"splits/{s}.txt" for s in ("train", "val", "test")},
        val_trials="trials_val.txt", test_trials="trials_test.txt", audio_input="features",
        audio_features={"n_mels": N_MELS, "cache_dir": str(tmp_path / "cache")},
    )  # fmt: skip
    dm.setup()
    assert next(iter(dm.train_dataloader()))["student_input"].shape == (4, 51, N_MELS)
    ev = next(iter(dm.loader("val")))
    assert ev["student_input"].shape[-1] == N_MELS and "student_lengths" in ev


def test_eval_loader_in_length_order_and_equal_lengths_embedded_together(dm):
    """Cached eval utterances come sorted by length; the evaluator embeds each length
    group in one call, cut to that length, giving the embeddings of each utterance alone."""
    loader_lengths = [n for b in dm.loader("val") for n in b["student_lengths"].tolist()]
    assert loader_lengths == sorted(loader_lengths)
    assert sorted(b for batch in dm.loader("val") for b in batch["index"].tolist()) == list(
        range(len(dm.dataset("val")))
    )
    torch.manual_seed(0)
    enc = EcapaSpeechEncoder(**TINY_ECAPA, input="features").eval()
    calls = []

    def embed(x):
        calls.append(tuple(x.shape))
        return enc(x)

    module = SimpleNamespace(embed=embed)
    evaluator = VerificationEvaluator(dm, noise_snr_db=[], matching_k=[])
    a, b = torch.randn(30, N_MELS), torch.randn(42, N_MELS)
    batch = pad_collate([{"student_input": x} for x in (a, b, a + 1, b - 1, a * 2)])
    with torch.no_grad():
        got = evaluator.embed(module, batch)
        alone = [enc(x[None])[0] for x in (a, b, a + 1, b - 1, a * 2)]
    assert sorted(calls) == [(2, 42, N_MELS), (3, 30, N_MELS)]
    torch.testing.assert_close(got, torch.stack(alone), rtol=0, atol=1e-6)
