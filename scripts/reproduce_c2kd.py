"""Reproduce the C2KD claims (NOTES.md section 2) on the built-in face -> voice data.

Runs every row (conf/experiment/face_voice/<row>.yaml) for each seed through the normal
training entry point (a ``crossdistill-train`` subprocess per run), then writes

    outputs/c2kd_reproduction/<timestamp>/
        table.md       mean ± std over seeds: EER / minDCF clean, EER at two SNRs, matching;
                       per row the paired difference to No KD with its 95 % interval
        results.csv    one line per run (all logged test metrics, teacher EER)
        c2kd.png       EER clean and under noise per row (error bars = std over seeds)
        runs/<row>_s<seed>/   the run dirs (config, checkpoints, metrics.json, log)

and points ``outputs/c2kd_reproduction/latest`` at it. Teachers are cached by the
pipeline (hash of data + teacher config + seed + data files) under ``outputs/teachers``,
so all rows of a seed share one face teacher (and the weak-teacher row its own); the runs
that train a teacher go first, then the others, ``--jobs`` at a time.

    python scripts/reproduce_c2kd.py            # 9 rows x 3 seeds
    python scripts/reproduce_c2kd.py --quick    # 1 seed, 3 + 3 epochs: a smoke test
    python scripts/reproduce_c2kd.py --report outputs/c2kd_reproduction/latest  # table again
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

from crossdistill.analysis.paired import paired_difference

ROOT = Path(__file__).resolve().parents[1]
ROWS = [  # (row name in the table, experiment file)
    ("No KD", "no_kd"),
    ("Hard L2 (FitNets)", "hard_l2"),
    ("Logit KD", "kd"),
    ("RKD", "rkd"),
    ("Feature margin", "feature_margin"),
    ("Shared classifier", "shared_classifier"),
    ("Both (C2KD)", "c2kd"),
    ("Both + quality weights", "c2kd_quality"),
    ("Both, weak teacher", "weak_teacher"),
]
BASELINE = "no_kd"  # every other row is compared with it, paired by seed
TEACHER_ROWS = ("c2kd", "weak_teacher")  # run first: they train the two teachers per seed
SNRS = (10, 0)  # EER columns under noise (the evaluator also logs 20 dB)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 seed, 3 teacher + 3 student epochs")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0 1 2")
    p.add_argument("--rows", nargs="+", default=None, choices=[r for _, r in ROWS])
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel (1 thread each)")
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "c2kd_reproduction")
    p.add_argument("--report", type=Path, default=None,
                   help="only rewrite table.md / c2kd.png from <dir>/results.csv")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    return p.parse_args(argv)


def run_one(row: str, seed: int, out: Path, overrides: list[str], threads: int) -> dict:
    run_dir = out / "runs" / f"{row}_s{seed}"
    cmd = [
        str(Path(sys.executable).parent / "crossdistill-train"),
        f"experiment=face_voice/{row}",
        f"seed={seed}",
        f"hydra.run.dir={run_dir}",
        f"paths.teacher_cache_dir={ROOT / 'outputs' / 'teachers'}",
        "print_config=false",
        "callbacks.progress_bar=null",
        "+trainer.enable_progress_bar=false",
        *overrides,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "WANDB_MODE": "offline",
           "PYTHONWARNINGS": "ignore"}
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    secs = time.time() - t0
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "stdout.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        print(f"FAILED {row} seed {seed} ({secs:.0f}s): see {run_dir / 'stdout.log'}", flush=True)
        return {"row": row, "seed": seed, "ok": False, "seconds": secs}
    summary = json.loads((run_dir / "metrics.json").read_text())
    res = {"row": row, "seed": seed, "ok": True, "seconds": secs, "run_dir": str(run_dir)}
    res.update({k: v for k, v in summary["student"].items()})
    res["teacher/test/eer"] = summary.get("teacher", {}).get("test/eer")
    print(f"done {row:18s} seed {seed}  EER {res.get('test/eer', math.nan):.4f}  "
          f"({secs:.0f}s)", flush=True)
    return res


def mean_std(values: list[float]) -> tuple[float, float]:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def fmt(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    m, s = mean_std(values)
    if math.isnan(m):
        return "—"
    return f"{m * scale:.{digits}f} ± {s * scale:.{digits}f}"


COLUMNS = [  # (header, metric key, scale, digits)
    ("EER % (clean)", "test/eer", 100.0, 1),
    ("minDCF (clean)", "test/min_dcf", 1.0, 3),
    *((f"EER % ({s} dB)", f"test/eer_snr{s}", 100.0, 1) for s in SNRS),
    ("match 1-of-2 %", "test/match_1of2", 100.0, 1),
    ("match 1-of-5 %", "test/match_1of5", 100.0, 1),
    ("speaker ID %", "test/id_acc", 100.0, 1),
    ("teacher face EER %", "teacher/test/eer", 100.0, 1),
]


def write_table(results: list[dict], rows: list[tuple[str, str]], seeds: list[int],
                out: Path, args: argparse.Namespace) -> str:
    lines = [
        f"# C2KD reproduction on the built-in face -> voice data ({len(seeds)} seed(s): "
        f"{seeds}{', --quick' if args.quick else ''})",
        "",
        "Test split: unseen speakers, trial list of the synthetic data; mean ± std over seeds. "
        "Noise columns: test utterance mixed with white noise at that SNR, enrolment clean. "
        "Matching: student voice vs projected teacher face (chance 50% / 20%); only rows with "
        "a projection head. Teacher EER: the face teacher's own face verification.",
        "",
        "| row | " + " | ".join(h for h, *_ in COLUMNS) + " | runs |",
        "|---|" + "---|" * (len(COLUMNS) + 1),
    ]
    for name, row in rows:
        got = [r for r in results if r["row"] == row and r["ok"]]
        cells = [fmt([r.get(key) for r in got], scale, digits) for _, key, scale, digits in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {len(got)} |")
    lines += paired_table(results, rows)
    extra = " ".join(args.overrides)
    lines += ["", f"Command: `python scripts/reproduce_c2kd.py {' '.join(sys.argv[1:])}`"
              + (f" (overrides: `{extra}`)" if extra else "")]
    text = "\n".join(lines) + "\n"
    (out / "table.md").write_text(text)
    return text


PAIRED_COLUMNS = [("EER % (clean)", "test/eer"), ("EER % (10 dB)", "test/eer_snr10"),
                  ("minDCF (clean)", "test/min_dcf")]


def paired_table(results: list[dict], rows: list[tuple[str, str]]) -> list[str]:
    """Per row: the paired difference to No KD over seeds with its 95 % t-interval."""
    if not any(r == BASELINE for _, r in rows):
        return []

    def by_seed(row: str, key: str) -> dict[int, float]:
        return {r["seed"]: r.get(key) for r in results if r["row"] == row and r["ok"]}

    lines = ["", "Paired difference to No KD (same seed = same data, init and order; mean of the "
             "per-seed differences, 95 % t-interval; negative EER / minDCF = better than No KD; "
             "\"not resolved\" = the interval contains 0):", "",
             "| row | " + " | ".join(f"Δ {h}" for h, _ in PAIRED_COLUMNS) + " |",
             "|---|" + "---|" * len(PAIRED_COLUMNS)]
    for name, row in rows:
        if row == BASELINE:
            continue
        cells = []
        for header, key in PAIRED_COLUMNS:
            scale, digits = (1.0, 3) if "minDCF" in header else (100.0, 1)
            diff = paired_difference(by_seed(row, key), by_seed(BASELINE, key))
            cells.append(diff.format(scale, digits))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def write_csv(results: list[dict], out: Path) -> None:
    keys = sorted({k for r in results for k in r})
    front = ["row", "seed", "ok", "seconds"]
    keys = front + [k for k in keys if k not in front]
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(results)


def read_csv(path: Path) -> list[dict]:
    """``results.csv`` back as run dicts (numbers as floats, seed as int)."""
    def value(key: str, text: str):
        if key in ("row", "run_dir"):
            return text
        if key == "ok":
            return text == "True"
        return float(text) if text else None

    with open(path, newline="") as f:
        rows = [{k: value(k, v) for k, v in r.items()} for r in csv.DictReader(f)]
    for r in rows:
        r["seed"] = int(r["seed"])
    return rows


def write_plot(results: list[dict], rows: list[tuple[str, str]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [("clean", "test/eer"), *((f"{s} dB", f"test/eer_snr{s}") for s in SNRS)]
    fig, ax = plt.subplots(figsize=(11, 4.5))
    width = 0.8 / len(keys)
    for j, (label, key) in enumerate(keys):
        stats = [mean_std([r.get(key) for r in results if r["row"] == row and r["ok"]])
                 for _, row in rows]
        xs = [i + (j - (len(keys) - 1) / 2) * width for i in range(len(rows))]
        ax.bar(xs, [100 * m for m, _ in stats], width, yerr=[100 * s for _, s in stats],
               label=f"EER {label}", capsize=2)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([name for name, _ in rows], rotation=25, ha="right")
    ax.set_ylabel("test EER (%)")
    ax.set_title("Face -> voice distillation on the built-in data (mean ± std over seeds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "c2kd.png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    wanted = args.rows or [r for _, r in ROWS]
    rows = [(n, r) for n, r in ROWS if r in wanted]
    overrides = list(args.overrides)
    if args.quick:
        overrides = ["trainer.max_epochs=3", "teacher.max_epochs=3", *overrides]
    if args.report:
        results = read_csv(args.report / "results.csv")
        print(write_table(results, rows, sorted({r["seed"] for r in results}), args.report, args))
        write_plot(results, rows, args.report)
        return 0
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out = args.out / stamp
    out.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 2) // max(args.jobs, 1))
    first = [(r, s) for s in seeds for _, r in rows if r in TEACHER_ROWS]
    rest = [(r, s) for s in seeds for _, r in rows if r not in TEACHER_ROWS]
    print(f"{len(first) + len(rest)} runs ({len(rows)} rows x {len(seeds)} seeds), "
          f"{args.jobs} at a time -> {out}", flush=True)
    t0 = time.time()
    results: list[dict] = []
    with ThreadPoolExecutor(max_workers=max(args.jobs, 1)) as pool:
        for phase in (first, rest):  # teachers are trained (and cached) by the first phase
            results += list(pool.map(lambda rs: run_one(*rs, out, overrides, threads), phase))
    write_csv(results, out)
    table = write_table(results, rows, seeds, out, args)
    write_plot(results, rows, out)
    latest = args.out / "latest"
    if latest.is_symlink() or not latest.exists():
        latest.unlink(missing_ok=True)
        latest.symlink_to(out.name)
    print(table)
    print(f"total {time.time() - t0:.0f}s; written to {out}")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
