"""Verification metrics must not depend on how eval utterances are batched.

ECAPA convolutions see the zero-padded frames after an utterance that is shorter than its
batch neighbours, so a padded batch gives another embedding than the utterance alone. The
evaluator therefore embeds every utterance at its true length; these tests check that the
metrics are the same at eval batch size 1 and 32, and (slow) with 1 process and 2 DDP ranks.

Run as a script (``python tests/test_eval_invariance.py CFG CKPT OUT DEVICES``) it is the
worker of the DDP test: it evaluates one saved student on val and test and writes each
rank's metrics to ``OUT/rank<r>.json``.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from conftest import run_on_one_and_two_processes
from crossdistill import builders
from crossdistill.data.datamodules.verification import VerificationData
from crossdistill.losses import LossComposer
from crossdistill.models.speech import EcapaSpeechEncoder
from crossdistill.modules.verification import VerificationEvaluator

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
TINY_ECAPA = dict(
    n_mels=20, channels=[8, 8, 8, 8, 24], embedding_dim=8, attention_channels=4, se_channels=4
)
# 3 val + 3 test speakers x 3 videos x 3 utterances of 0.3-1.0 s: lengths differ a lot, so
# a batch of 32 pads most utterances; 27 utterances per split, so 2 DDP ranks get a
# DistributedSampler duplicate; 80 trials per split
DATA = {
    "n_identities": 10,
    "n_voice_factors": 3,
    "gamma": 0.5,
    "n_face_only": 1,
    "videos_per_identity": 3,
    "utterances_per_video": 3,
    "frames_per_video": 2,
    "utt_seconds_min": 0.3,
    "utt_seconds_max": 1.0,
    "image_size": 16,
    "n_val_identities": 3,
    "n_test_identities": 3,
    "n_trials": 80,
    "n_val_trials": 80,
    "n_teacher_identities": 6,
    "teacher_frames_per_identity": 2,
    "seed": 5,
}
OVERRIDES = [
    "experiment=face_voice/c2kd",  # projection head: the match_1of* metrics are produced
    *(f"data.generator.{k}={v}" for k, v in DATA.items()),
    "data.image_size=16",
    "data.crop_seconds=0.3",
    "data.batch_size=8",
    "data.eval_batch_size=32",
    "data.estimate_snr=false",
    "teacher.cache_features=false",
    *(f"student.encoder.{k}={v}".replace(" ", "") for k, v in TINY_ECAPA.items()),
    "teacher.encoder.channels=[4,8,8,8]",
    "teacher.encoder.embedding_dim=8",
    "++projection.hidden_dim=8",
    "evaluator.matching_k=[2,3]",
    "logger=[]",
]
METRICS = (
    "eer",
    "min_dcf",
    "eer_snr20",
    "eer_snr10",
    "eer_snr0",
    "min_dcf_snr0",
    "match_1of2",
    "match_1of3",
    "id_acc",
)


def build_student(cfg, seed: int = 0):
    """Datamodule + randomly initialised face -> voice student (with teacher + projection)."""
    torch.manual_seed(seed)
    dm = builders.build_datamodule(cfg)
    teacher = builders.build_teacher_module(cfg, dm)
    loss = LossComposer(OmegaConf.to_container(cfg.distill))
    module = builders.build_student_module(cfg, dm, loss, teacher)
    return dm, module.eval()


def evaluate(module, dm, split: str, batch_size: int) -> tuple[dict, torch.Tensor]:
    """(metrics, embeddings in index order) of one eval pass at ``batch_size``."""
    dm.eval_batch_size = batch_size
    ev = module.evaluator
    with torch.no_grad():
        for batch in dm.loader(split):
            ev.step(module, batch, split)
    data = ev.collectors[split].compute()
    emb = data["emb"][torch.argsort(data["index"])]
    return ev.compute(split), emb


def assert_same_metrics(a: dict, b: dict, split: str, tol: float = 1e-6) -> None:
    expected = {
        f"{split}/{m}"
        for m in METRICS
        if split == "test" or not m.startswith(("eer_snr", "min_dcf_snr"))
    }
    assert expected <= set(a) and set(a) == set(b), (sorted(a), sorted(b))
    diff = {
        k: (a[k], b[k])
        for k in a
        if not (math.isnan(a[k]) and math.isnan(b[k])) and abs(a[k] - b[k]) > tol
    }
    assert not diff, diff


@pytest.fixture(scope="module")
def tiny_student(tmp_path_factory):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    from crossdistill.utils.config import CONFIG_DIR, register_resolvers

    register_resolvers()
    tmp = tmp_path_factory.mktemp("inv")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=OVERRIDES)
    GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp / "run")
        cfg.paths.log_dir = str(tmp / "logs")
        cfg.paths.data_dir = str(tmp / "data")
        cfg.paths.teacher_cache_dir = str(tmp / "teachers")
    dm, module = build_student(cfg)
    return cfg, dm, module


# --------------------------------------------------------------------------- fast
def test_padded_utterance_embeds_as_alone():
    """The evaluator's embedding of an utterance does not depend on its batch neighbour."""
    torch.manual_seed(0)
    enc = EcapaSpeechEncoder(**TINY_ECAPA).eval()
    module = SimpleNamespace(encoder=enc, embed=enc)
    ev = VerificationEvaluator(_NoData(), noise_snr_db=[], matching_k=[])
    short, long = 0.1 * torch.randn(7_000), 0.1 * torch.randn(12_345)
    padded = torch.zeros(2, long.numel())
    padded[0, : short.numel()], padded[1] = short, long
    with torch.no_grad():
        alone = ev.embed(
            module, {"student_input": short[None], "student_lengths": torch.tensor([short.numel()])}
        )
        batched = ev.embed(
            module, {"student_input": padded, "student_lengths": torch.tensor([7_000, 12_345])}
        )
        long_alone = ev.embed(
            module, {"student_input": long[None], "student_lengths": torch.tensor([long.numel()])}
        )
    torch.testing.assert_close(batched[0], alone[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(batched[1], long_alone[0], rtol=0, atol=1e-6)


def test_metrics_do_not_depend_on_eval_batch_size(tiny_student):
    _, dm, module = tiny_student
    for split in ("val", "test"):
        m1, e1 = evaluate(module, dm, split, 1)
        m32, e32 = evaluate(module, dm, split, 32)
        assert_same_metrics(m1, m32, split)
        torch.testing.assert_close(e32, e1, rtol=0, atol=1e-6)


class _NoData(VerificationData):
    """The evaluator's datamodule interface, unused by ``embed``."""

    def trials(self, split):  # pragma: no cover
        return []

    def eval_utterances(self, split):  # pragma: no cover
        return []

    def noisy_eval_input(self, batch, snr_db, seed, kind="white"):  # pragma: no cover
        return batch["student_input"]


# --------------------------------------------------------------------------- slow: DDP
@pytest.mark.slow
def test_metrics_same_on_one_process_and_two_ddp_ranks(tiny_student, tmp_path):
    """One saved student, evaluated (val + test) by 1 process and by 2 DDP ranks (gloo):
    every rank reports the single-process metrics."""

    cfg, dm, module = tiny_student
    assert all(len(dm.dataset(s)) % 2 for s in ("val", "test"))  # padded by a repeat
    cfg_path, ckpt = tmp_path / "config.yaml", tmp_path / "student.pt"
    OmegaConf.save(cfg, cfg_path)
    torch.save(module.state_dict(), ckpt)
    results = run_on_one_and_two_processes(__file__, [str(cfg_path), str(ckpt)], tmp_path)
    (single,) = results[1]
    for per_rank in results[2]:
        assert per_rank["world_size"] == 2
        for split in ("val", "test"):
            assert_same_metrics(single[split], per_rank[split], split)


def _worker(cfg_path: str, ckpt: str, out: str, devices: int) -> None:
    """Evaluate the saved student on val and test with ``devices`` CPU processes."""
    import pytorch_lightning as pl

    cfg = OmegaConf.load(cfg_path)
    dm, module = build_student(cfg)
    module.load_state_dict(torch.load(ckpt, weights_only=True))
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
    )
    trainer.validate(module, datamodule=dm)
    trainer.test(module, datamodule=dm)
    result = {
        "world_size": trainer.world_size,
        "val": module.evaluator.last["val"],
        "test": module.evaluator.last["test"],
    }
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / f"rank{trainer.global_rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    _worker(sys.argv[3], sys.argv[4], sys.argv[1], int(sys.argv[2]))  # out, devices, cfg, ckpt
