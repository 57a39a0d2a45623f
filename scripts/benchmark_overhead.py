"""Framework overhead: the same student, data and steps through crossdistill + Lightning and
through a plain PyTorch loop written here.

Both sides get the same composed config, the same datamodule and training loader
(``crossdistill.builders``), the same student (built by ``builders.build_student_module``
under the same seed: the same initial weights) and the same optimizer (``student.optimizer``).
The framework side is what ``crossdistill-train`` runs for the student stage: Lightning
``Trainer`` from ``cfg.trainer`` with the configured callbacks (progress bar, checkpoints)
and loggers (CSV by default), the config logged as hyperparameters. The plain side is a
``for batch in loader: loss.backward(); optimizer.step()`` loop with the same loss
(cross-entropy of the student's training logits). Validation is off on both sides
(``limit_val_batches=0``): the plain loop has no evaluator, and an eval pass runs the same
forward in both.

Every measurement runs in its own subprocess (so ``ru_maxrss`` is that run's peak memory),
the variants interleaved over ``--rounds`` rounds; times are medians over the rounds, and
every ratio is paired: the geometric mean of the per-round ratios (the variants of one
round ran back to back) with its 95 % t-interval over the rounds. A target counts as met
or not met only when the whole interval is on one side of it, else "not resolved": runs
of the same loop in different processes vary by a few per cent here. Epoch time = from
the start of one training epoch to the start of the next, neither the first (warm-up) nor
the last (teardown); "incl. set-up" = module + optimizer/trainer/loggers built, all epochs run.
A third pass per round trains the same model, optimizer and loss in a minimal
``LightningModule`` (no logging, callbacks, loggers, progress bar or checkpointing): the
floor of any Lightning loop, which tells Lightning's cost from crossdistill's. A fourth
iterates the training loader alone (no model), for the loader-vs-step check (target: a
training step takes >= 3x a loader batch). The report also compares every loop's final
weights with the plain loop's: they agree (to float rounding) only if the loops trained
the same steps on the same batches.

    python scripts/benchmark_overhead.py            # both cases, 5 rounds (~20 min on 2 cores)
    python scripts/benchmark_overhead.py --quick    # 2 rounds, fewer epochs (~6 min)
    python scripts/benchmark_overhead.py --profile  # + framework with pieces turned off
    python scripts/benchmark_overhead.py --save raw.json  # + every round's measurements

Cases: ``face_voice`` = experiment=face_voice/no_kd (tiny ECAPA student on the built-in
face -> voice data, default data sizes); ``mfh`` = experiment=mfh/exp1 distill=none (linear
student, one full-batch step per epoch). Built-in data are generated once into a temporary
dir before timing. Threads: 1 per process (OMP_NUM_THREADS=1) on both sides.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CASES: dict[str, list[str]] = {
    "face_voice": ["experiment=face_voice/no_kd"],
    "mfh": ["experiment=mfh/exp1", "distill=none"],
}
#: epochs per measurement (default, --quick): a face_voice epoch at the default data size is
#: 168 steps (~11 s), an MFH epoch one step (~ms); the first epoch is warm-up, not timed
EPOCHS = {"face_voice": (3, 2), "mfh": (300, 100)}
#: framework variants of --profile: what is turned off
ABLATIONS = {
    "no_progress_bar": "progress bar off",
    "no_logger": "loggers off (and no hparams logged)",
    "no_checkpoint": "checkpointing off",
    "bare": "progress bar, loggers and checkpointing off",
}
#: the minimal-Lightning reference row (always run)
LIGHTNING_FLOOR = "a minimal LightningModule, same model/optimizer/loss, nothing of ours"
TARGETS = {"epoch": 1.05, "setup": 1.10, "loader": 3.0}


# --------------------------------------------------------------------------- workers
def _compose(case: str, work_dir: Path, extra: list[str]) -> Any:
    from omegaconf import open_dict

    from crossdistill.utils.config import compose_config

    cfg = compose_config("train", [*CASES[case], *extra])
    with open_dict(cfg):
        cfg.paths.output_dir = str(work_dir / "run")
        cfg.paths.log_dir = str(work_dir / "logs")
        cfg.paths.data_dir = str(work_dir.parent / "data")
        cfg.paths.teacher_cache_dir = str(work_dir / "teachers")
    return cfg


def _build_student(cfg: Any, datamodule: Any) -> Any:
    import pytorch_lightning as pl
    from omegaconf import OmegaConf

    from crossdistill import builders
    from crossdistill.losses import LossComposer

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    loss = LossComposer(OmegaConf.to_container(cfg.distill, resolve=True))
    return builders.build_student_module(cfg, datamodule, loss, None)


def run_framework(cfg: Any, datamodule: Any, epochs: int, ablation: str | None) -> dict:
    """The student stage as the pipeline runs it, validation off; per-epoch stamps."""
    import pytorch_lightning as pl

    from crossdistill import builders
    from crossdistill.utils.loggers import finish_runs, log_config

    stamps: list[Stamp] = []

    class EpochClock(pl.Callback):
        def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
            stamps.append(_now())

    start = _now()
    module = _build_student(cfg, datamodule)
    callbacks = builders.build_callbacks(cfg)
    for callback in callbacks:
        if isinstance(callback, pl.callbacks.ModelCheckpoint):
            callback.dirpath = str(Path(cfg.paths.output_dir) / "checkpoints")
    bar_off = ablation in ("no_progress_bar", "bare")
    ckpt_off = ablation in ("no_checkpoint", "bare")
    callbacks = [
        c
        for c in callbacks
        if not (bar_off and isinstance(c, pl.callbacks.ProgressBar))
        and not (ckpt_off and isinstance(c, pl.callbacks.ModelCheckpoint))
    ]
    loggers = [] if ablation in ("no_logger", "bare") else builders.build_loggers(cfg)
    trainer = builders.build_trainer(
        cfg,
        callbacks=[*callbacks, EpochClock()],
        logger=loggers or False,
        max_epochs=epochs,
        limit_val_batches=0,
        enable_progress_bar=not bar_off,
        enable_checkpointing=not ckpt_off,
    )
    log_config(trainer.loggers, cfg)
    trainer.fit(module, datamodule=datamodule)
    end = _now()
    finish_runs(trainer.loggers)
    steps = trainer.global_step
    return _timing(start, stamps, end, steps, datamodule, module)


def run_plain(cfg: Any, datamodule: Any, epochs: int) -> dict:
    """The same steps in a hand-written loop: CE of the student's training logits."""
    import hydra
    import torch
    from torch.nn import functional

    start = _now()
    module = _build_student(cfg, datamodule)
    encoder, classifier = module.encoder, module.classifier
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = hydra.utils.instantiate(cfg.student.optimizer)(params=params)
    loader = datamodule.train_dataloader()
    input_key = module.input_key
    module.train()
    stamps, steps = [], 0
    for _ in range(epochs):
        stamps.append(_now())
        for batch in loader:
            labels = batch["label"]
            logits = classifier(encoder(batch[input_key]), labels)
            loss = functional.cross_entropy(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
    end = _now()
    assert torch.isfinite(loss)
    return _timing(start, stamps, end, steps, datamodule, module)


def run_lightning_floor(cfg: Any, datamodule: Any, epochs: int) -> dict:
    """Lightning's own floor: the plain loop's encoder, classifier, optimizer and loss in a
    minimal ``LightningModule`` (no logging, no callbacks, no loggers, no progress bar, no
    checkpointing): what any Lightning-based loop costs, nothing of crossdistill."""
    import hydra
    import pytorch_lightning as pl
    from torch.nn import functional

    stamps: list[Stamp] = []

    class EpochClock(pl.Callback):
        def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
            stamps.append(_now())

    class MinimalModule(pl.LightningModule):
        def __init__(self, student: Any) -> None:
            super().__init__()
            self.encoder, self.classifier = student.encoder, student.classifier
            self.input_key = student.input_key

        def training_step(self, batch: dict, batch_idx: int) -> Any:
            labels = batch["label"]
            logits = self.classifier(self.encoder(batch[self.input_key]), labels)
            return functional.cross_entropy(logits, labels)

        def configure_optimizers(self) -> Any:
            params = [p for p in self.parameters() if p.requires_grad]
            return hydra.utils.instantiate(cfg.student.optimizer)(params=params)

    start = _now()
    module = MinimalModule(_build_student(cfg, datamodule))
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        limit_val_batches=0,
        logger=False,
        callbacks=[EpochClock()],
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(module, train_dataloaders=datamodule.train_dataloader())
    return _timing(start, stamps, _now(), trainer.global_step, datamodule, module)


def run_loader(cfg: Any, datamodule: Any, epochs: int) -> dict:
    """The training loader alone (no model): the data cost of the same epochs."""
    stamps, steps = [], 0
    start = _now()
    loader = datamodule.train_dataloader()
    for _ in range(epochs):
        stamps.append(_now())
        for batch in loader:
            steps += int(batch["label"].shape[0] > 0)
    return _timing(start, stamps, _now(), steps, datamodule)


def _now() -> tuple[float, float]:
    """(wall, this process's CPU time): CPU time is far less disturbed by other jobs on
    shared cores than wall time (one thread per process)."""
    return time.perf_counter(), time.process_time()


Stamp = tuple[float, float]


def _epoch_median(stamps: list[Stamp], end: Stamp, clock: int) -> float:
    # epoch k = start of k to start of k + 1 (what runs between epochs included); the first
    # warms up (allocator, loader, caches) and the last ends in the framework's teardown
    times = [s[clock] for s in stamps]
    steady = [b - a for a, b in itertools.pairwise(times)][1:]
    return statistics.median(steady or [b - a for a, b in itertools.pairwise([*times, end[clock]])])


def _timing(
    start: Stamp, stamps: list[Stamp], end: Stamp, steps: int, datamodule, module: Any = None
) -> dict:
    steps_per_epoch = max(steps // len(stamps), 1)  # every epoch runs the same steps
    epoch_s = _epoch_median(stamps, end, 0)
    return {
        "epoch_s": epoch_s,
        "epoch_cpu_s": _epoch_median(stamps, end, 1),
        "total_s": end[0] - start[0],
        "total_cpu_s": end[1] - start[1],
        "steps": steps,
        "step_s": epoch_s / steps_per_epoch,
        "step_cpu_s": _epoch_median(stamps, end, 1) / steps_per_epoch,
        # training batches are full (drop_last, or MFH's one full batch)
        "samples_per_s": steps_per_epoch * datamodule.batch_size / epoch_s,
        "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        # sum of |weights| after training: the loops did the same steps iff these agree
        "weights_abs_sum": _weights_abs_sum(module) if module is not None else None,
    }


def _weights_abs_sum(module: Any) -> float:
    return float(sum(p.detach().double().abs().sum() for p in module.parameters()))


def worker(case: str, variant: str, epochs: int, work_dir: Path, out: Path) -> None:
    import logging
    import warnings

    import torch

    from crossdistill import builders

    warnings.filterwarnings("ignore")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    work_dir.mkdir(parents=True, exist_ok=True)
    cfg = _compose(case, work_dir, [])
    datamodule = builders.build_datamodule(cfg)  # data generated/read: not timed
    if variant == "plain":
        result = run_plain(cfg, datamodule, epochs)
    elif variant == "loader":
        result = run_loader(cfg, datamodule, epochs)
    elif variant == "lightning_floor":
        result = run_lightning_floor(cfg, datamodule, epochs)
    else:
        ablation = None if variant == "framework" else variant
        result = run_framework(cfg, datamodule, epochs, ablation)
    out.write_text(json.dumps(result))


# --------------------------------------------------------------------------- driver
def _spawn(case: str, variant: str, epochs: int, tmp: Path, index: int) -> dict:
    work_dir = tmp / f"{case}_{variant}_{index}"
    out = tmp / f"{case}_{variant}_{index}.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    cmd = [sys.executable, __file__, "--worker", case, variant, str(epochs), str(work_dir)]
    with open(tmp / "worker.log", "a") as log:
        proc = subprocess.run([*cmd, str(out)], env=env, stdout=log, stderr=log)
    if proc.returncode != 0:
        tail = (tmp / "worker.log").read_text()[-3000:]
        raise SystemExit(f"worker {case}/{variant} failed (rc {proc.returncode}):\n{tail}")
    return json.loads(out.read_text())


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def paired_ratio(
    numerator: list[float], denominator: list[float], confidence: float = 0.95
) -> tuple[float, float, float]:
    """Geometric mean of the per-round ratios ``numerator[i] / denominator[i]`` and its
    t-interval (a t-interval of the mean log ratio over the rounds, exponentiated); the
    interval is (nan, nan) with fewer than 2 rounds."""
    from scipy import stats

    logs = [math.log(a / b) for a, b in zip(numerator, denominator, strict=True)]
    centre = statistics.fmean(logs)
    if len(logs) < 2:
        return math.exp(centre), math.nan, math.nan
    half = stats.t.ppf(0.5 + confidence / 2, len(logs) - 1) * statistics.stdev(logs)
    half /= math.sqrt(len(logs))
    return math.exp(centre), math.exp(centre - half), math.exp(centre + half)


def verdict(low: float, high: float, target: float, at_least: bool = False) -> str:
    """Met / NOT met when the whole interval is on one side of the target (a ceiling, or a
    floor with ``at_least``), else not resolved (also for an undefined interval)."""
    if at_least:
        met, missed = low >= target, high < target
    else:
        met, missed = high <= target, low > target
    return "met" if met else "NOT met" if missed else "not resolved"


def _ratio_text(ratio: tuple[float, float, float]) -> str:
    centre, low, high = ratio
    return f"{centre:5.2f} [{low:.2f}, {high:.2f}]"


def _paired(runs: list[dict], reference: list[dict], key: str) -> tuple[float, float, float]:
    return paired_ratio([r[key] for r in runs], [r[key] for r in reference])


def report(case: str, results: dict[str, list[dict]], epochs: int) -> list[str]:
    """The comparison table of one case: medians over rounds, wall and CPU time; ratios
    paired by round with 95 % intervals."""
    fw, plain, loader = results["framework"], results["plain"], results["loader"]
    lines = [
        f"== {case}: {' '.join(CASES[case])}, {epochs} epochs x {len(fw)} rounds "
        f"({fw[0]['steps'] // epochs} steps/epoch); times: medians; ratio: per-round "
        "geometric mean [95 % interval]",
        f"{'':26s}{'framework':>10s}{'plain':>10s}  {'ratio [95 % interval]':<22s}  target",
    ]
    for label, key, target in (
        ("epoch, wall (s)", "epoch_s", "epoch"),
        ("epoch, CPU (s)", "epoch_cpu_s", "epoch"),
        ("incl. set-up, wall (s)", "total_s", "setup"),
        ("incl. set-up, CPU (s)", "total_cpu_s", "setup"),
    ):
        ratio = _paired(fw, plain, key)
        lines.append(
            f"{label:26s}{_median(fw, key):10.4g}{_median(plain, key):10.4g}  "
            f"{_ratio_text(ratio):<22s}  <= {TARGETS[target]} "
            + verdict(ratio[1], ratio[2], TARGETS[target])
        )
    lines += [
        f"{'samples/s (wall)':26s}{_median(fw, 'samples_per_s'):10.1f}"
        f"{_median(plain, 'samples_per_s'):10.1f}",
        f"{'peak RSS (MB)':26s}{_median(fw, 'maxrss_mb'):10.0f}{_median(plain, 'maxrss_mb'):10.0f}",
    ]
    lines.append(_weights_line(results))
    for clock, key in (("wall", "step_s"), ("CPU", "step_cpu_s")):
        ratio = _paired(plain, loader, key)
        lines.append(
            f"{'loader batch vs step, ' + clock:26s}{_median(loader, key) * 1e3:8.2f}ms"
            f"{_median(plain, key) * 1e3:8.2f}ms  step = {_ratio_text(ratio)}x loader, "
            f">= {TARGETS['loader']}x " + verdict(ratio[1], ratio[2], TARGETS["loader"], True)
        )
    for variant, label in {"lightning_floor": LIGHTNING_FLOOR, **ABLATIONS}.items():
        if variant in results:
            runs = results[variant]
            name = variant if variant == "lightning_floor" else "framework, " + variant
            lines.append(
                f"{name:30s}epoch {_median(runs, 'epoch_cpu_s'):.4g} s CPU, "
                f"{_ratio_text(_paired(runs, plain, 'epoch_cpu_s')).strip()}x plain: {label}"
            )
    if "lightning_floor" in results:  # what crossdistill adds over any Lightning loop
        lines.append(
            f"{'framework vs floor':30s}epoch CPU "
            f"{_ratio_text(_paired(fw, results['lightning_floor'], 'epoch_cpu_s')).strip()}x: "
            "crossdistill's own share"
        )
    return lines


def _weights_line(results: dict[str, list[dict]]) -> str:
    """How far the trained weights of each loop are from the plain loop's (round 1): ~1e-7
    (float rounding) means the loops trained the same steps on the same batches."""
    plain = results["plain"][0]["weights_abs_sum"]
    gaps = {
        variant: abs(runs[0]["weights_abs_sum"] - plain) / plain
        for variant, runs in results.items()
        if runs and runs[0].get("weights_abs_sum") is not None and variant != "plain"
    }
    return "final weights vs plain (rel.): " + ", ".join(f"{v} {g:.1e}" for v, g in gaps.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=None, help="default 5 (--quick: 2)")
    parser.add_argument("--cases", default="face_voice,mfh", help=f"of {list(CASES)}")
    parser.add_argument("--quick", action="store_true", help="2 rounds, fewer epochs")
    parser.add_argument("--profile", action="store_true", help="+ framework ablations")
    parser.add_argument("--epochs", type=int, default=None, help="override per-case epochs")
    parser.add_argument("--save", type=Path, default=None,
                        help="also write every round's raw measurements to this JSON file")
    parser.add_argument("--worker", nargs=5, metavar="X", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        case, variant, epochs, work_dir, out = args.worker
        worker(case, variant, int(epochs), Path(work_dir), Path(out))
        return
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"--cases: unknown {unknown}; valid: {list(CASES)}")
    rounds = args.rounds or (2 if args.quick else 5)
    variants = ["framework", "plain", "lightning_floor", "loader"]
    variants += list(ABLATIONS) if args.profile else []
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, 1 thread per process")
    began = time.perf_counter()
    raw: dict[str, dict[str, list[dict]]] = {}
    with tempfile.TemporaryDirectory(prefix="crossdistill_bench_") as tmp_name:
        tmp = Path(tmp_name)
        for case in cases:
            epochs = args.epochs or EPOCHS[case][1 if args.quick else 0]
            _spawn(case, "loader", 1, tmp, -1)  # generates the built-in data once
            results: dict[str, list[dict]] = raw.setdefault(case, {v: [] for v in variants})
            for round_index in range(rounds):
                for variant in variants:
                    results[variant].append(_spawn(case, variant, epochs, tmp, round_index))
                print(f"  {case}: round {round_index + 1}/{rounds} done", flush=True)
                if args.save:  # every round, so a stopped benchmark keeps what it measured
                    args.save.write_text(json.dumps(raw, indent=1))
            print("\n".join(report(case, results, epochs)), flush=True)
    print(f"total {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
