"""Epoch and evaluation time of the face -> voice student: waveform input vs cached features.

On the built-in data of an experiment (default ``face_voice/no_kd``; scale it up with the
generator's keys, e.g. ``data.generator.n_identities=200``), in one process, builds the
data twice, ``data.audio_input=waveform`` (every step reads WAV files, degrades the crop,
estimates its SNR; the encoder computes the filter banks) and ``features`` (filter banks
computed once into the content-keyed memmap: its build and its reuse are timed), and two
students with the same initial weights. Then, in interleaved rounds (waveform, features,
repeated ``--rounds`` times), times

* one training epoch: the training loader (data loading included) with forward, backward
  and optimizer step of the student (CE on its AAM classifier);
* one evaluation: the verification evaluator over val and test (test with its noise
  passes) and its metrics, as after every validation epoch / in the test stage;

and prints the median of each (and the min / max) with the ratio features / waveform.
No timing is asserted anywhere; the numbers vary with the machine's load.

    python scripts/benchmark_face_voice_data.py --rounds 5 data.generator.n_identities=200
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from omegaconf import open_dict

from crossdistill import builders
from crossdistill.losses import LossComposer
from crossdistill.utils.config import compose_config

MODES = ("waveform", "features")


def train_epoch(module, loader, optimizer) -> float:
    module.train()
    t0 = time.perf_counter()
    for batch in loader:
        total, _ = module.loss(module.loss_inputs(batch))
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
    return time.perf_counter() - t0


def evaluation(module, datamodule) -> tuple[float, dict[str, float]]:
    module.eval()
    evaluator = module.evaluator
    metrics: dict[str, float] = {}
    t0 = time.perf_counter()
    with torch.no_grad():
        for split in ("val", "test"):
            for batch in datamodule.loader(split):
                evaluator.step(module, batch, split)
            metrics.update(evaluator.compute(split))
    return time.perf_counter() - t0, metrics


def build(overrides: list[str], mode: str):
    cfg = compose_config("train", [*overrides, f"data.audio_input={mode}"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(Path(cfg.paths.log_dir) / "benchmark_face_voice_data")
    t0 = time.perf_counter()
    datamodule = builders.build_datamodule(cfg)
    setup = time.perf_counter() - t0
    torch.manual_seed(0)
    module = builders.build_student_module(
        cfg, datamodule, LossComposer({"ce": {"weight": 1.0}}), None
    )
    optimizer = module.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    return datamodule, module, optimizer, setup


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):7.2f} s (min {min(values):.2f}, max {max(values):.2f})"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (table: 1)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides (default face_voice/no_kd)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    overrides = list(args.overrides)
    if not any(o.startswith("experiment=") for o in overrides):
        overrides.insert(0, "experiment=face_voice/no_kd")
    overrides += ["logger=[]"]
    built = {}
    for mode in MODES:
        built[mode] = build(overrides, mode)
        print(f"{mode}: data set-up {built[mode][3]:.1f} s (generation / feature cache)")
    _, _, _, reuse = build(overrides, "features")
    print(f"features: set-up with the cache present {reuse:.1f} s")
    dm = built["features"][0]
    sizes = {s: len(dm.dataset(s)) for s in ("train", "val", "test")}
    print(f"utterances {sizes}, batch {dm.batch_size}, eval batch {dm.eval_batch_size}, "
          f"threads {torch.get_num_threads()}")  # fmt: skip
    times: dict[str, dict[str, list[float]]] = {m: {"epoch": [], "eval": []} for m in MODES}
    for r in range(args.rounds):
        for mode in MODES:
            datamodule, module, optimizer, _ = built[mode]
            epoch = train_epoch(module, datamodule.train_dataloader(), optimizer)
            secs, metrics = evaluation(module, datamodule)
            times[mode]["epoch"].append(epoch)
            times[mode]["eval"].append(secs)
            eer = metrics.get("test/eer", float("nan"))
            print(f"round {r} {mode:8s}: epoch {epoch:6.2f} s, eval {secs:6.2f} s "
                  f"(test/eer {eer:.3f})", flush=True)  # fmt: skip
    print(f"\nmedians of {args.rounds} interleaved rounds:")
    for what in ("epoch", "eval"):
        for mode in MODES:
            print(f"  {what:5s} {mode:8s} {summary(times[mode][what])}")
        ratio = statistics.median(times["features"][what]) / statistics.median(
            times["waveform"][what]
        )
        print(f"  {what:5s} features / waveform = {ratio:.2f}")


if __name__ == "__main__":
    main()
