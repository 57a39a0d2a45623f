"""Reproduce the text -> image table of issue 4 (NOTES.md section 2) on built-in data.

Rows: no KD, logit KD, hard L2, feature margin, shared classifier, both (C2KD), both +
caption-quality weights, and both with a teacher trained on poor captions. Columns: top-1
and top-5 on the clean test images with 100 % of the training images, top-1 with 25 % and
10 %; mean +- std over seeds. Every run goes through the same code as
``crossdistill-train experiment=text_image/<row> seed=<s> data.train_fraction=<f>``
(Hydra compose + :func:`crossdistill.pipeline.train`, in worker processes). Teachers are
trained once per (data, teacher config, seed) and reused from ``outputs/teachers`` by
every row (the pipeline's teacher cache); per seed, one job per distinct teacher runs first,
so two workers never train the same teacher.

Limited data: ``data.train_fraction`` keeps a stratified, seeded subset of the *paired*
training set, so the teacher of a fraction is trained on the same captions the student's
images come with. Training length is matched in optimiser steps, not epochs: a run on a
fraction gets ``epochs * steps_per_epoch(100 %) / steps_per_epoch(fraction)`` epochs (and
validates about ``epochs`` times), for the student and for the teacher alike.

Writes ``outputs/text_image_reproduction/<timestamp>/`` (and a ``latest`` symlink):
``results.jsonl`` (one line per run, appended as runs finish; ``--out <dir>`` resumes),
``table.md``, ``text_image.png``, ``runs/<row>/f<fraction>/s<seed>/`` (run dirs).

    python scripts/reproduce_text_image.py            # 3 seeds (about an hour, 2 cores)
    python scripts/reproduce_text_image.py --quick    # 1 seed, short training (minutes)
    python scripts/reproduce_text_image.py --rows no_kd c2kd --seeds 0 -- trainer.max_epochs=5
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import multiprocessing as mp
import os
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

#: experiment name (conf/experiment/text_image/<name>.yaml) -> table label
ROWS: dict[str, str] = {
    "no_kd": "no KD",
    "kd": "logit KD",
    "hard_l2": "hard L2",
    "feature_margin": "feature margin",
    "shared_classifier": "shared classifier",
    "c2kd": "both (C2KD)",
    "c2kd_quality": "both + quality weights",
    "poor_teacher": "both, poor teacher (k=0.2)",
}
FRACTIONS = (1.0, 0.25, 0.1)
DEFAULTS = {"seeds": [0, 1, 2], "epochs": 10, "teacher_epochs": 6}
QUICK = {"seeds": [0], "epochs": 3, "teacher_epochs": 3}


# ----------------------------------------------------------------------- planning
def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from crossdistill.utils.config import CONFIG_DIR, register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=overrides)


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Batches per training epoch of the text-image loader (drop_last when n > batch)."""
    return n_train // batch_size if n_train > batch_size else 1


def n_train_images(cfg, fraction: float) -> int:
    """Training-set size after ``stratified_subset`` (synth source: per-class counts)."""
    per_class = int(cfg.data.synth.train_per_class)
    return int(cfg.data.synth.num_classes) * max(1, int(round(fraction * per_class)))


def schedule(cfg, fraction: float, epochs: int, teacher_epochs: int) -> dict[str, int]:
    """Epoch counts matching the 100 % run's number of optimiser steps."""
    bs = int(cfg.data.batch_size)
    full = steps_per_epoch(n_train_images(cfg, 1.0), bs)
    here = steps_per_epoch(n_train_images(cfg, fraction), bs)
    scale = full / here
    return {
        "max_epochs": max(1, math.ceil(epochs * scale)),
        "teacher_epochs": max(1, math.ceil(teacher_epochs * scale)),
        "val_every": max(1, round(scale)),
    }


def job_overrides(job: dict[str, Any]) -> list[str]:
    s = job["schedule"]
    return [
        f"experiment=text_image/{job['row']}",
        f"seed={job['seed']}",
        f"data.train_fraction={job['fraction']}",
        f"trainer.max_epochs={s['max_epochs']}",
        f"teacher.max_epochs={s['teacher_epochs']}",
        f"trainer.check_val_every_n_epoch={s['val_every']}",
        f"paths.output_dir={job['run_dir']}",
        "print_config=false",
        "callbacks.progress_bar=null",
        "+trainer.enable_progress_bar=false",
        *job["extra"],
    ]


# ------------------------------------------------------------------------ running
def _quiet() -> None:
    warnings.filterwarnings("ignore")
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Worker: compose the job's config and train it; its console output goes to a log."""
    import torch

    torch.set_num_threads(job["threads"])
    os.environ.setdefault("WANDB_MODE", "offline")
    from crossdistill.train import train

    _quiet()  # after the import: Lightning sets its loggers' levels when imported

    run_dir = Path(job["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(run_dir / "console.log", "w") as fh, contextlib.redirect_stdout(fh), \
            contextlib.redirect_stderr(fh):
        cfg = compose(job_overrides(job))
        summary = train(cfg)
    student, teacher = summary["student"], summary["teacher"]
    return {
        "row": job["row"],
        "seed": job["seed"],
        "fraction": job["fraction"],
        "top1": student.get("test/acc"),
        # top-5 (``top_k``; the evaluator clips it to the number of classes)
        "top5": next((v for k, v in student.items() if k.startswith("test/acc_top")), None),
        "teacher_top1": teacher.get("test/acc"),
        "seconds": round(time.time() - t0, 1),
        "schedule": job["schedule"],
        "run_dir": str(run_dir),
        "overrides": job_overrides(job),
    }


def plan_jobs(args, out: Path) -> list[dict[str, Any]]:
    jobs = []
    for seed in args.seeds:
        for fraction in args.fractions:
            for row in args.rows:
                cfg = compose([f"experiment=text_image/{row}", *args.overrides])
                jobs.append({
                    "row": row,
                    "seed": seed,
                    "fraction": fraction,
                    "schedule": schedule(cfg, fraction, args.epochs, args.teacher_epochs),
                    "run_dir": str(out / "runs" / row / f"f{fraction}" / f"s{seed}"),
                    "threads": args.threads,
                    "extra": list(args.overrides),
                    "needs_teacher": row != "no_kd",
                    "teacher_data": "poor" if row == "poor_teacher" else "default",
                })
    return jobs


def phases(jobs: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Per seed (so an interrupted run leaves whole seeds): first the first job of each
    distinct teacher (data variant, fraction), then the rest of that seed, which find
    their teacher in the cache."""
    out = []
    for seed in dict.fromkeys(job["seed"] for job in jobs):
        first, rest, seen = [], [], set()
        for job in (j for j in jobs if j["seed"] == seed):
            key = (job["teacher_data"], job["fraction"])
            if job["needs_teacher"] and key not in seen:
                seen.add(key)
                first.append(job)
            else:
                rest.append(job)
        out += [first, rest]
    return out


def run_all(jobs: list[dict[str, Any]], results_file: Path, n_jobs: int) -> list[dict]:
    done = load_results(results_file)
    finished = {(r["row"], r["seed"], r["fraction"]) for r in done}
    todo = [j for j in jobs if (j["row"], j["seed"], j["fraction"]) not in finished]
    if finished:
        print(f"resuming: {len(finished)} runs already in {results_file}, {len(todo)} to go")
    t0 = time.time()
    total = len(todo)
    count = 0
    ctx = mp.get_context("spawn")
    for phase in phases(todo):
        if not phase:
            continue
        with ProcessPoolExecutor(max_workers=n_jobs, mp_context=ctx) as pool:
            futures = {pool.submit(run_job, job): job for job in phase}
            for fut in as_completed(futures):
                job = futures[fut]
                count += 1
                try:
                    rec = fut.result()
                except Exception as err:  # report and keep going; the table marks it missing
                    print(f"[{count}/{total}] FAILED {job['row']} seed={job['seed']} "
                          f"fraction={job['fraction']}: {err!r} (log: {job['run_dir']}/"
                          "console.log)", flush=True)
                    continue
                with open(results_file, "a") as fh:
                    fh.write(json.dumps(rec) + "\n")
                done.append(rec)
                def f3(x):
                    return "n/a" if x is None else f"{x:.3f}"

                print(f"[{count}/{total}] {rec['row']:18s} seed={rec['seed']} "
                      f"fraction={rec['fraction']:<4} top1 {f3(rec['top1'])} "
                      f"top5 {f3(rec['top5'])} teacher {f3(rec['teacher_top1'])} "
                      f"({rec['seconds']:.0f}s, {(time.time() - t0) / 60:.1f} min total)",
                      flush=True)
    return done


def load_results(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ------------------------------------------------------------------------ reporting
def _stats(values: list[float]) -> tuple[float, float, int]:
    import numpy as np

    v = np.asarray([x for x in values if x is not None], dtype=float)
    if v.size == 0:
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0, int(v.size)


def _fmt(values: list[float]) -> str:
    mean, std, n = _stats(values)
    if n == 0:
        return "n/a"
    return f"{100 * mean:.1f} ± {100 * std:.1f}" if n > 1 else f"{100 * mean:.1f}"


def table(records: list[dict[str, Any]], rows: list[str], fractions: list[float]) -> str:
    def pick(row, fraction, key):
        return [r[key] for r in records if r["row"] == row and r["fraction"] == fraction]

    others = [f for f in sorted(fractions, reverse=True) if f != 1.0]
    head = ["method"]
    if 1.0 in fractions:
        head += ["top-1 (100 %)", "top-5 (100 %)"]
    head += [f"top-1 ({100 * f:g} %)" for f in others]
    head += ["teacher top-1 (" + " / ".join(f"{100 * f:g} %" for f in sorted(
        fractions, reverse=True)) + ")", "seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [ROWS[row]]
        if 1.0 in fractions:
            cells += [_fmt(pick(row, 1.0, "top1")), _fmt(pick(row, 1.0, "top5"))]
        cells += [_fmt(pick(row, f, "top1")) for f in others]
        teacher = [_fmt(pick(row, f, "teacher_top1")) for f in sorted(fractions, reverse=True)]
        cells.append("—" if all(t == "n/a" for t in teacher) else " / ".join(teacher))
        seeds = sorted({r["seed"] for r in records if r["row"] == row})
        cells.append(",".join(map(str, seeds)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def paired_table(records: list[dict[str, Any]], rows: list[str], fractions: list[float]) -> str:
    """Top-1 of each row minus no KD, paired by seed, with its 95 % t-interval."""
    from crossdistill.analysis.paired import paired_difference

    if "no_kd" not in rows:
        return ""

    def by_seed(row: str, fraction: float) -> dict[int, float]:
        return {r["seed"]: r["top1"] for r in records if r["row"] == row
                and r["fraction"] == fraction}

    order = sorted(fractions, reverse=True)
    lines = ["Paired difference to no KD, top-1 points (same seed = same data subset, init "
             "and order; mean of the per-seed differences, 95 % t-interval; \"not resolved\" "
             "= the interval contains 0):", "",
             "| method | " + " | ".join(f"Δ top-1 ({100 * f:g} %)" for f in order) + " |",
             "|---|" + "---|" * len(order)]
    for row in rows:
        if row == "no_kd":
            continue
        cells = [paired_difference(by_seed(row, f), by_seed("no_kd", f)).format(100.0, 1)
                 for f in order]
        lines.append(f"| {ROWS[row]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(records: list[dict[str, Any]], rows: list[str], fractions: list[float], path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = sorted(fractions)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in rows:
        stats = [_stats([r["top1"] for r in records
                         if r["row"] == row and r["fraction"] == f]) for f in xs]
        mean = [100 * m for m, _, _ in stats]
        std = [100 * s for _, s, _ in stats]
        style = "--" if row in ("no_kd", "poor_teacher") else "-"
        ax.errorbar([100 * x for x in xs], mean, yerr=std, marker="o", ls=style, capsize=3,
                    label=ROWS[row])
    ax.set_xscale("log")
    ax.set_xticks([100 * x for x in xs], [f"{100 * x:g} %" for x in xs])
    ax.set_xlabel("training images (paired) used")
    ax.set_ylabel("student top-1 on clean test images (%)")
    ax.set_title("text teacher -> image student (built-in captioned shapes)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(records, args, out: Path, seconds: float) -> str:
    md = [
        "# Text -> image reproduction",
        "",
        f"Command: `python scripts/reproduce_text_image.py {' '.join(args.argv)}`".rstrip(),
        f"Seeds {args.seeds}; student epochs at 100 % = {args.epochs}, teacher epochs = "
        f"{args.teacher_epochs} (steps matched on the fractions); extra overrides: "
        f"{args.overrides or 'none'}; wall time {seconds / 60:.1f} min.",
        "Accuracies in %, mean ± std over seeds (sample std); teacher = the text teacher's "
        "top-1 on the test captions of its own data.",
        "",
        table(records, args.rows, args.fractions),
        paired_table(records, args.rows, args.fractions),
        "![top-1 vs training fraction](text_image.png)",
        "",
    ]
    text = "\n".join(md)
    (out / "table.md").write_text(text)
    plot(records, args.rows, args.fractions, out / "text_image.png")
    return text


# ----------------------------------------------------------------------------- CLI
def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 seed, short training (minutes)")
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--epochs", type=int, default=None, help="student epochs at 100 %%")
    p.add_argument("--teacher-epochs", type=int, default=None, help="teacher epochs at 100 %%")
    p.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS))
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--jobs", type=int, default=2, help="parallel worker processes")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--out", type=Path, default=None,
                   help="output dir (default outputs/text_image_reproduction/<timestamp>); "
                        "an existing dir resumes: finished runs are not repeated")
    p.add_argument("--report-only", action="store_true",
                   help="rewrite table.md / the plot from --out's results.jsonl")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = p.parse_args(argv)
    preset = QUICK if args.quick else DEFAULTS
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.argv = argv
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    base = ROOT / "outputs" / "text_image_reproduction"
    out = args.out or base / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "results.jsonl"
    t0 = time.time()
    if args.report_only:
        records = load_results(results_file)
    else:
        jobs = plan_jobs(args, out)
        print(f"{len(jobs)} runs ({len(args.rows)} rows x {len(args.seeds)} seeds x "
              f"{len(args.fractions)} fractions), {args.jobs} workers -> {out}", flush=True)
        records = run_all(jobs, results_file, args.jobs)
    text = report(records, args, out, time.time() - t0)
    if args.out is None:
        latest = base / "latest"
        with contextlib.suppress(OSError):
            if latest.is_symlink() or latest.exists():
                latest.unlink()
            latest.symlink_to(out.name)
    print(text)
    print(f"written: {out / 'table.md'}, {out / 'text_image.png'}, {results_file}")
    expected = len(args.rows) * len(args.seeds) * len(args.fractions)
    return 0 if args.report_only or len(records) >= expected else 1


if __name__ == "__main__":
    sys.exit(main())
