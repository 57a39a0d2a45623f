"""The data contract: PairedDataModule (abstract members, loaders, fingerprints), what the
builders read through it, and the noisy eval inputs of the verification data."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from crossdistill import builders
from crossdistill.data.datamodules.base import PairedDataModule
from crossdistill.data.datamodules.gaussian import GaussianMFHDataModule
from crossdistill.data.degrade import add_noise_at_snr


class _Tiny(PairedDataModule):
    """Ten samples in memory, or read from ``files`` when given."""

    def __init__(self, batch_size: int = 4, files: list[Path] | None = None) -> None:
        super().__init__(batch_size, eval_batch_size=3)
        self.files = files or []
        self.data = TensorDataset(torch.arange(10))

    @property
    def num_classes(self) -> int:
        return 2

    def encoder_inputs(self, side):
        return {"input_dim": 1}

    @property
    def teacher_input_fixed_per_index(self) -> bool:
        return True

    def input_paths(self) -> list[Path]:
        return self.files

    def dataset(self, split):
        return self.data


def test_missing_contract_member_fails_at_instantiation():
    class NoDataset(PairedDataModule):
        num_classes = 2
        teacher_input_fixed_per_index = True

        def encoder_inputs(self, side):
            return {}

        def input_paths(self):
            return []

    with pytest.raises(TypeError, match="abstract.*dataset"):
        NoDataset(batch_size=2)


def test_loaders_built_by_the_base_class():
    dm = _Tiny(batch_size=4)
    train = [b[0].tolist() for b in dm.train_dataloader()]
    assert [len(b) for b in train] == [4, 4]  # 10 > 4: the last partial batch is dropped
    assert len(set(sum(train, []))) == 8 and set(sum(train, [])) <= set(range(10))
    assert [b[0].tolist() for b in dm.val_dataloader()] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    ordered = [b[0].tolist() for b in dm.loader("train", ordered=True)]
    assert ordered == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]  # no shuffle, nothing dropped
    with pytest.raises(ValueError, match="split='dev'"):
        dm.loader("dev")


def test_content_fingerprint_follows_the_files_and_is_none_in_memory(tmp_path):
    assert _Tiny().content_fingerprint() is None
    f = tmp_path / "a.txt"
    f.write_text("one")
    first = _Tiny(files=[f]).content_fingerprint()
    f.write_text("two")
    dm = _Tiny(files=[f])
    assert dm.content_fingerprint() != first
    f.write_text("one")
    assert dm.content_fingerprint() != first  # computed once per datamodule and mode
    assert _Tiny(files=[f]).content_fingerprint() == first
    assert dm.items_fingerprint("train") is None  # no sample ids: config + files fix them


def test_build_datamodule_refuses_other_classes(compose_cfg):
    cfg = compose_cfg("experiment=mfh/exp1")
    cfg.data = {"_target_": "torch.utils.data.TensorDataset"}
    with pytest.raises(TypeError, match="TensorDataset.*PairedDataModule"):
        builders.build_datamodule(cfg)


def test_gaussian_contract():
    dm = GaussianMFHDataModule(teacher_dim=25, student_dim=50, teacher_columns=[0, 3], n_train=20)
    dm.setup()
    assert builders.input_wiring(dm, "teacher") == {"input_dim": 2}
    assert builders.input_wiring(dm, "student") == {"input_dim": 50}
    with pytest.raises(ValueError, match="side must be one of"):
        dm.encoder_inputs("both")
    assert dm.input_paths() == [] and dm.content_fingerprint() is None
    assert [len(b["label"]) for b in dm.train_dataloader()] == [20]  # full batch


def test_face_voice_contract(tiny_face_voice):
    cfg = tiny_face_voice("face_voice/c2kd")
    dm = builders.build_datamodule(cfg)
    assert dm.teacher_input_fixed_per_index  # c2kd: train_face_frame=per_index
    assert builders.input_wiring(dm, "teacher")["in_chans"] == 3
    fbank = {"sample_rate": 16000, "n_mels": 20, "n_fft": 400, "win_length": 25, "hop_length": 10}
    assert builders.input_wiring(dm, "student") == {
        "sample_rate": 16000, "input": "features", "input_features": fbank}  # fmt: skip
    paths = dm.dataset("train").paths
    assert dm.items_fingerprint("train") == hashlib.sha256("\n".join(paths).encode()).hexdigest()
    assert dm.eval_size("test") == len(dm.dataset("test"))
    index = dm.trial_index("test")
    utts = dm.eval_utterances("test")
    for k, trial in enumerate(dm.trials("test")):
        assert utts[index.enroll[k]].path == trial.enroll
        assert utts[index.test[k]].path == trial.test and index.label[k] == trial.label


def test_noisy_eval_input_is_seeded_per_index_and_keeps_padding(tiny_face_voice):
    dm = builders.build_datamodule(tiny_face_voice("face_voice/c2kd", "data.audio_input=waveform"))
    batch = next(iter(dm.loader("test")))
    lengths = batch["student_lengths"]
    j = int(torch.argmin(lengths))  # a padded utterance
    noisy = dm.noisy_eval_input(batch, 10.0, seed=7)
    n = int(lengths[j])
    assert torch.all(noisy[j, n:] == 0)
    idx = int(batch["index"][j])
    rng = np.random.default_rng([7, 1000 + 100_000, idx])
    expected = add_noise_at_snr(batch["student_input"][j, :n], 10.0, rng)
    torch.testing.assert_close(noisy[j, :n], expected, rtol=0, atol=0)
    # the same utterance alone in a batch gets the same noise
    alone = {"student_input": batch["student_input"][j : j + 1, :n],
             "student_lengths": lengths[j : j + 1], "index": batch["index"][j : j + 1]}
    torch.testing.assert_close(dm.noisy_eval_input(alone, 10.0, seed=7)[0], noisy[j, :n])
