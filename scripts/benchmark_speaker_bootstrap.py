"""Time the speaker-and-seed bootstrap of a table on synthetic saved scores.

Writes a table dir (rows x columns x seeds fake runs, each with ``scores/test.npz``: a
clean and a 10 dB pass on one trial list of ``--speakers`` speakers) and times
``crossdistill-table``'s report of it, whose paired EER, EER 10 dB and minDCF cells are
bootstrapped (docs/tables.md, "Speaker bootstrap")::

    OMP_NUM_THREADS=1 python scripts/benchmark_speaker_bootstrap.py --out /tmp/bootstrap_bench
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from crossdistill.metrics.trial_scores import scores_path, write_trial_scores
from crossdistill.metrics.verification import compute_eer, compute_min_dcf
from crossdistill.tables.aggregate import load_table
from crossdistill.tables.render import markdown

METRICS = ["test/eer", "test/eer_snr10", "test/min_dcf"]


def trial_list(speakers: int, per_speaker: int, rng: np.random.Generator) -> dict:
    """Half target, half non-target trials per enrolment speaker."""
    enroll = np.repeat(np.arange(speakers), per_speaker)
    label = np.tile(np.arange(per_speaker) % 2 == 0, speakers).astype(int)
    other = (enroll + rng.integers(1, speakers, enroll.size)) % speakers
    return {"enroll": enroll, "test": np.where(label == 1, enroll, other), "label": label}


def logged(clean: np.ndarray, noisy: np.ndarray, label: np.ndarray) -> dict[str, float]:
    """The metrics the evaluator would log for these scores (the table checks them)."""
    labels = torch.tensor(label)
    return {
        "test/eer": compute_eer(torch.tensor(clean), labels)[0],
        "test/min_dcf": compute_min_dcf(torch.tensor(clean), labels)[0],
        "test/eer_snr10": compute_eer(torch.tensor(noisy), labels)[0],
    }


def write_table(out: Path, args: argparse.Namespace) -> None:
    rng = np.random.default_rng(0)
    trials = trial_list(args.speakers, args.trials_per_speaker, rng)
    names = [f"id{k:05d}" for k in range(args.speakers)]
    rows = {f"row{r}": {"overrides": [f"x={r}"]} for r in range(args.rows)}
    columns = {f"col{c}": [f"y={c}"] for c in range(args.columns)}
    spec = {"title": "bootstrap benchmark", "rows": rows, "baseline": "row0",
            "seeds": list(range(args.seeds)), "metrics": METRICS, "columns": columns,
            "paired_bootstrap": {"metrics": METRICS, "draws": args.draws}}  # fmt: skip
    out.mkdir(parents=True)
    (out / "table.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    speaker_level = rng.normal(size=args.speakers)[trials["enroll"]]
    for r in range(args.rows):
        for c in range(args.columns):
            for seed in range(args.seeds):
                run = out / f"row{r}" / f"col{c}" / str(seed)
                run.mkdir(parents=True)
                (run / "config.yaml").write_text(yaml.safe_dump({"seed": seed}))
                gap = 1.0 + 0.05 * r + 0.3 * speaker_level
                clean = trials["label"] * gap + rng.normal(size=trials["label"].size)
                noisy = clean + 0.5 * rng.normal(size=clean.size)
                write_trial_scores(
                    scores_path(run, "test"), trial=np.arange(clean.size),
                    enroll=trials["enroll"], test=trials["test"], label=trials["label"],
                    enroll_identity=[names[k] for k in trials["enroll"]],
                    test_identity=[names[k] for k in trials["test"]],
                    scores={"": clean, "snr10": noisy}, p_target=0.01, c_miss=1.0, c_fa=1.0,
                )  # fmt: skip
                (run / "metrics.json").write_text(
                    json.dumps({"student": logged(clean, noisy, trials["label"]), "teacher": {}})
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="table dir (replaced)")
    parser.add_argument("--speakers", type=int, default=300)
    parser.add_argument("--trials-per-speaker", type=int, default=34)
    parser.add_argument("--rows", type=int, default=9)
    parser.add_argument("--columns", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--draws", type=int, default=2000)
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    write_table(args.out, args)
    start, cpu = time.perf_counter(), time.process_time()
    table = load_table([args.out])
    text = markdown(table)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    runs = args.rows * args.columns * args.seeds
    print(text)
    print(f"{runs} runs x 2 passes (clean, 10 dB), {args.speakers} speakers, "
          f"{args.speakers * args.trials_per_speaker} trials, {args.draws} draws: "
          f"table report {seconds:.1f} s wall, {cpu:.1f} s CPU")  # fmt: skip


if __name__ == "__main__":
    main()
