"""DDP parity: 2 gloo processes (``trainer=ddp_cpu``) train and evaluate like 1 process.

The framework's DDP semantics (Lightning defaults, nothing overridden): every process
builds the *same* loader, so ``data.batch_size`` is the per-process batch and the global
batch is ``world_size x batch_size``; Lightning swaps the training sampler for a
``DistributedSampler(shuffle=True, seed=PL_GLOBAL_SEED)`` whose seeded permutation ``perm``
of epoch ``e`` gives rank ``r`` the positions ``r, r + W, r + 2W, ...``; DDP averages the
ranks' gradients. ``ddp_cpu`` has no SyncBatchNorm (torch's SyncBatchNorm needs a GPU; the
GPU ``trainer=ddp`` turns it on), which is why the training parity runs use the MFH linear
models (no BatchNorm). So the same *effective* batch under 2 processes is half the
per-process batch, and then (fast test below) step ``k`` of the two ranks together sees
exactly the samples ``perm[kB:(k+1)B]`` that a 1-process run with a (1-replica)
DistributedSampler sees: the same sample sets, the gradient the same mean summed in another
order. A plain 1-process run (``trainer=cpu``) shuffles with a ``RandomSampler`` instead,
so its batches hold other samples and only the end result is comparable.

Run as a script (``python tests/test_ddp_parity.py OUT DEVICES RUN_DIR...``) this file is
the worker of the evaluation test: it evaluates each run dir's ``last.ckpt`` on val and
test with ``DEVICES`` CPU processes and writes each rank's metrics to ``OUT/rank<r>.json``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DistributedSampler

from conftest import run_on_one_and_two_processes
from crossdistill.metrics.predictions import load_predictions, predictions_path

REPO = Path(__file__).resolve().parents[1]
# MFH exp1 (linear teacher + student, CE + KD) cut to 20 epochs; n_train = 200, so a
# 1-process batch of 50 is 4 steps per epoch (and the teacher trains the same way)
EPOCHS = 20
MFH = [
    "experiment=mfh/exp1",
    f"trainer.max_epochs={EPOCHS}",
    f"teacher.max_epochs={EPOCHS}",
    f"trainer.check_val_every_n_epoch={EPOCHS}",
    "print_config=false",
]
BATCH = 50  # the effective (global) batch of every run below


# --------------------------------------------------------------------------- fast
@pytest.mark.parametrize("n_samples", [200, 10])
def test_halved_batches_on_two_ranks_cover_the_one_process_batches(n_samples):
    """Per step, the union of the 2 ranks' half batches is the 1-replica sampler's batch
    (the claim the step-for-step parity test rests on); no sample is seen twice."""
    batch = 4 if n_samples == 10 else BATCH
    for epoch in (0, 3):
        one = DistributedSampler(range(n_samples), num_replicas=1, rank=0, shuffle=True, seed=7)
        one.set_epoch(epoch)
        one_order = list(one)
        ranks = []
        for rank in (0, 1):
            sampler = DistributedSampler(
                range(n_samples), num_replicas=2, rank=rank, shuffle=True, seed=7
            )
            sampler.set_epoch(epoch)
            ranks.append(list(sampler))
        half = batch // 2
        for step in range(n_samples // batch):
            together = {i for r in ranks for i in r[step * half : (step + 1) * half]}
            assert together == set(one_order[step * batch : (step + 1) * batch])
        assert sorted(ranks[0] + ranks[1]) == list(range(n_samples))


# --------------------------------------------------------------------------- slow
def _train(tmp: Path, name: str, *overrides: str) -> dict:
    """One ``crossdistill-train`` run (own log dir and teacher cache); its metrics.json."""
    log_dir = tmp / name
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "offline",
        "PYTHONPATH": str(REPO / "src"),
        "PYTHONWARNINGS": "ignore",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "crossdistill.train", *MFH, *overrides, f"paths.log_dir={log_dir}"],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    (run,) = list((log_dir / "mfh_exp1" / "runs").iterdir())
    summary = json.loads((run / "metrics.json").read_text())
    return {"run": run, **summary}


@pytest.fixture(scope="module")
def mfh_runs(tmp_path_factory) -> dict[str, dict]:
    tmp = tmp_path_factory.mktemp("ddp_parity")
    return {
        # 2 gloo processes, per-process batch halved: global batch 50
        "ddp2": _train(tmp, "ddp2", "trainer=ddp_cpu", f"data.batch_size={BATCH // 2}"),
        # 1 process through the same DDP strategy: a 1-replica DistributedSampler
        "ddp1": _train(
            tmp, "ddp1", "trainer=ddp_cpu", "trainer.devices=1", f"data.batch_size={BATCH}"
        ),
        # the plain 1-process run (RandomSampler)
        "cpu": _train(tmp, "cpu", "trainer=cpu", f"data.batch_size={BATCH}"),
    }


def _student_weights(run: Path) -> dict[str, torch.Tensor]:
    """Student and frozen-teacher weights of the run's final checkpoint."""
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    return ckpt["state_dict"]


@pytest.mark.slow
def test_two_ranks_train_step_for_step_like_one_process(mfh_runs):
    """Same sample sets per step (see the fast test): the 2-process run differs from the
    1-process run only in float summation order. Tolerance: each step's gradient is a mean
    of the same 50 per-sample gradients, once as one float32 sum and once as two 25-sample
    means averaged by the all-reduce (relative rounding ~1e-7); over 2 x 80 SGD steps of a
    well-conditioned linear problem that stays below 1e-5 on weights and losses (measured:
    ~1e-7). Accuracies are counts, so a sample lying within ~1e-5 of the decision boundary
    could flip: at most one sample of the 200 val / 1000 test samples may differ."""
    one, two = mfh_runs["ddp1"], mfh_runs["ddp2"]
    for stage in ("teacher", "student"):
        for split, n in (("val", 200), ("test", 1000)):
            a, b = one[stage], two[stage]
            assert abs(a[f"{split}/loss"] - b[f"{split}/loss"]) < 1e-5, (stage, split, a, b)
            assert abs(a[f"{split}/acc"] - b[f"{split}/acc"]) <= 1 / n + 1e-9, (stage, a, b)
    w1, w2 = _student_weights(one["run"]), _student_weights(two["run"])
    assert w1.keys() == w2.keys() and w1
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=0, atol=1e-5, msg=name)
    # the check can fail: the 2-process run did move its weights far from the init
    assert max((w1[k] - w2[k]).abs().max() for k in w1) < 1e-5 < w1["classifier.fc.weight"].std()


@pytest.mark.slow
def test_two_ranks_reach_the_plain_one_process_metrics(mfh_runs):
    """Against ``trainer=cpu`` the batches hold other samples (RandomSampler vs the seeded
    DistributedSampler permutation), so the runs follow different SGD paths on the same
    convex problem. Tolerance: 0.03 accuracy (6 of 200 val samples, 30 of 1000 test) and
    0.02 loss; measured: 0.005 / 0.001. A wrong effective batch (e.g. not halving the
    per-process batch) or the ranks' gradients not being averaged breaks it."""
    one, two = mfh_runs["cpu"]["student"], mfh_runs["ddp2"]["student"]
    for split in ("val", "test"):
        assert abs(one[f"{split}/acc"] - two[f"{split}/acc"]) <= 0.03, (split, one, two)
        assert abs(one[f"{split}/loss"] - two[f"{split}/loss"]) <= 0.02, (split, one, two)
    assert two["test/acc"] > 0.7  # it learned (chance: 0.5)


@pytest.mark.slow
def test_two_ranks_save_every_test_prediction_once(mfh_runs):
    """Each rank predicts its share of the test set; rank 0 gathers them into one file
    whose accuracy is the logged one (the tables' sample bootstrap reads it)."""
    for name in ("ddp2", "cpu"):
        saved = load_predictions(predictions_path(mfh_runs[name]["run"], "test"))
        assert saved.index.tolist() == list(range(len(saved.index))) and len(saved.index) > 100
        logged = mfh_runs[name]["student"]["test/acc"]
        assert saved.correct(1).mean() == pytest.approx(logged, abs=1e-6), name


@pytest.mark.slow
def test_same_checkpoint_evaluates_identically_on_one_and_two_processes(
    mfh_runs, tiny_face_voice, tmp_path
):
    """One trained checkpoint each of the MFH classifier (accuracy, torchmetrics-synced) and
    of a tiny face -> voice student (EER / minDCF / SNR passes / id accuracy over gathered
    embeddings), evaluated on val and test by 1 process and by 2 DDP ranks: every rank
    reports the 1-process metrics (1e-6: the same embeddings scored in another order)."""
    from crossdistill.pipeline import train

    face_voice = train(tiny_face_voice("face_voice/no_kd", "trainer.max_epochs=1"))
    run_dirs = [str(mfh_runs["ddp2"]["run"]), face_voice["run_dir"]]
    results = run_on_one_and_two_processes(__file__, run_dirs, tmp_path, timeout=600)
    (single,) = results[1]
    assert {"val/acc", "test/acc"} <= set(single[run_dirs[0]])
    assert {"val/eer", "test/eer", "test/eer_snr0"} <= set(single[run_dirs[1]])
    for per_rank in results[2]:
        assert per_rank["world_size"] == 2
        for run_dir in run_dirs:
            a, b = single[run_dir], per_rank[run_dir]
            assert a.keys() == b.keys()
            diff = {
                k: (a[k], b[k])
                for k in a
                if not (math.isnan(a[k]) and math.isnan(b[k])) and abs(a[k] - b[k]) > 1e-6
            }
            assert not diff, (run_dir, diff)


def _evaluate_worker(out: str, devices: int, run_dirs: list[str]) -> None:
    """Evaluate each run dir's ``last.ckpt`` on val and test with ``devices`` processes."""
    import pytorch_lightning as pl

    from crossdistill.run_dir import load_run

    torch.set_num_threads(1)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
    )
    result: dict = {}
    for run_dir in run_dirs:
        run = load_run(run_dir, "last")
        metrics: dict[str, float] = {}
        for stage in (trainer.validate, trainer.test):
            (stage_metrics,) = stage(run.module, datamodule=run.datamodule)
            metrics.update({k: float(v) for k, v in stage_metrics.items()})
        result[run_dir] = metrics
    result["world_size"] = trainer.world_size
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / f"rank{trainer.global_rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    _evaluate_worker(sys.argv[1], int(sys.argv[2]), sys.argv[3:])
