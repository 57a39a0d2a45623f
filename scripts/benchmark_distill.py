"""Speed and memory of a distillation epoch versus a student-only epoch (face -> voice).

In one process, on the built-in data of an experiment config (default face_voice/c2kd),
runs training epochs of

* ``student``: the student alone (distill=none: CE only),
* ``distill``: the distillation step running the frozen teacher every step,
* ``distill+cache``: the same step reading the teacher's embeddings from the memory-mapped
  TeacherFeatureCache (built before timing),

each a plain loop over the training dataloader (data loading included) with forward,
backward and optimizer step, in rounds (student, distill, distill+cache, repeated
``--rounds`` times; the fastest round of each mode is reported, as in ``timeit``). Prints
samples/s of every mode, peak memory (CUDA: max allocated; CPU: peak RSS sampled every 5 ms
during the mode, above the RSS at its start) and the ratio of epoch times to the
student-only epoch (issue target: distill+cache <= 1.15x). Also times the check that keys
the caches to the data files (``cache_check=content``: sha256 of every file; ``stat``:
size + mtime), paid once per run, in the same rounds.

    python scripts/benchmark_distill.py
    python scripts/benchmark_distill.py --rounds 3 experiment=face_voice/c2kd_quality
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf, open_dict

from crossdistill import builders
from crossdistill.losses import LossComposer
from crossdistill.utils import teacher_store
from crossdistill.utils.config import compose_config
from crossdistill.utils.fingerprint import FINGERPRINT_MODES, fingerprint_paths


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class PeakMemory:
    """Peak memory above the start of the ``with`` block (CUDA allocator or sampled RSS)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            return self
        self.base = rss_bytes()
        self._stop = threading.Event()
        self._max = self.base

        def sample() -> None:
            while not self._stop.wait(0.005):
                self._max = max(self._max, rss_bytes())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.base
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self._max, rss_bytes()) - self.base


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def epoch(module, loader, device: torch.device, max_batches: int | None) -> tuple[int, float, int]:
    """One training epoch; returns (samples, seconds, peak bytes)."""
    opt = module.configure_optimizers()
    opt = opt["optimizer"] if isinstance(opt, dict) else opt
    module.train()
    n = 0
    with PeakMemory(device) as mem:
        t0 = time.perf_counter()
        for step, batch in enumerate(loader):
            if max_batches is not None and step >= max_batches:
                break
            batch = to_device(batch, device)
            total, _ = module.loss(module.loss_inputs(batch))
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            n += batch["label"].shape[0]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        secs = time.perf_counter() - t0
    return n, secs, mem.peak


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=2, help="timed epochs per mode")
    p.add_argument("--max-batches", type=int, default=None, help="cut epochs (smoke test)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("overrides", nargs="*", help="Hydra overrides (default experiment c2kd)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    overrides = list(args.overrides)
    if not any(o.startswith("experiment=") for o in overrides):
        overrides.insert(0, "experiment=face_voice/c2kd")
    cfg = compose_config("train", overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(Path(cfg.paths.log_dir) / "benchmark_distill")
        cfg.teacher.cache_features = True

    torch.manual_seed(0)
    dm = builders.build_datamodule(cfg)
    teacher = builders.build_teacher_module(cfg, dm)
    key = builders.teacher_cache_key(cfg, dm)
    cached = Path(cfg.paths.teacher_cache_dir) / key / "teacher.ckpt"
    if cached.exists():
        teacher_store.load_weights(teacher, cached)
        print(f"teacher: {cached}")
    else:
        print("teacher: random init (no trained teacher cached for this config; speed is the same)")
    loss = LossComposer(OmegaConf.to_container(cfg.distill, resolve=True))
    t0 = time.perf_counter()
    with_cache = builders.build_student_module(cfg, dm, loss, teacher).to(device)
    print(
        f"teacher cache ready in {time.perf_counter() - t0:.1f}s: "
        f"{with_cache.teacher_cache.array_path}"
    )
    torch.manual_seed(0)
    no_cache = builders.build_student_module(cfg, dm, loss, teacher).to(device)
    no_cache.teacher_cache = None
    torch.manual_seed(0)
    student = builders.build_student_module(cfg, dm, LossComposer({"ce": {"weight": 1.0}}), None)
    student = student.to(device)
    modes = {"student": student, "distill": no_cache, "distill+cache": with_cache}
    loader = dm.train_dataloader()
    for module in modes.values():  # warm-up (allocator, lazy init)
        epoch(module, loader, device, 1)
    best: dict[str, tuple[int, float, int]] = {}
    inputs = dm.input_paths()
    check_secs = dict.fromkeys(FINGERPRINT_MODES, float("inf"))
    for r in range(args.rounds):
        for name, module in modes.items():
            n, secs, peak = epoch(module, loader, device, args.max_batches)
            print(
                f"round {r}: {name:14s} {n} samples in {secs:6.2f}s = {n / secs:7.1f} "
                f"samples/s, peak +{peak / 2**20:.0f} MiB",
                flush=True,
            )
            if name not in best or secs < best[name][1]:
                best[name] = (n, secs, max(peak, best.get(name, (0, 0, 0))[2]))
        for mode in FINGERPRINT_MODES:
            t0 = time.perf_counter()
            fingerprint_paths(inputs, mode)
            check_secs[mode] = min(check_secs[mode], time.perf_counter() - t0)
    print(
        f"\n{cfg.data._target_.rsplit('.', 1)[-1]}, distill={list(cfg.distill)}, "
        f"device={device}, threads={torch.get_num_threads()}, "
        f"batch={dm.batch_size}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}"
    )
    print(f"{'mode':14s} {'samples/s':>10s} {'epoch s':>8s} {'x student':>10s} {'peak MiB':>9s}")
    base = best["student"][1]
    for name, (n, secs, peak) in best.items():
        print(f"{name:14s} {n / secs:10.1f} {secs:8.2f} {secs / base:10.3f} {peak / 2**20:9.0f}")
    n_files = sum(
        1 if Path(p).is_file() else sum(f.is_file() for f in Path(p).rglob("*")) for p in inputs
    )
    for mode, secs in check_secs.items():
        print(
            f"cache_check={mode}: {secs:.3f}s for {n_files} files "
            f"= {secs / base:.3f}x a student-only epoch (once per run)"
        )
    ratio = best["distill+cache"][1] / base
    print(
        f"\ndistillation epoch with the teacher cache = {ratio:.3f}x the student-only epoch "
        f"(target <= 1.15x: {'met' if ratio <= 1.15 else 'NOT met'})"
    )


if __name__ == "__main__":
    main()
