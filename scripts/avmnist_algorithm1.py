"""MFH Algorithm 1 on the AV-MNIST fusion teacher (`make reproduce-avmnist-alg1`).

1. Runs the "no KD" and "logit KD (whole teacher)" rows of ``conf/table/avmnist_alg1.yaml``
   (image+audio teacher -> audio student, 5 seeds).
2. Ranks the 128 fused channels of each seed's teacher with ``crossdistill-diagnose``
   (``layer=fused``, the KD student of that seed, training split) into
   ``<out>/rankings/seed_<seed>.csv`` and counts how many of the top / bottom 32 channels
   come from the audio branch (channels 64-127), in ``<out>/channels.md``.
3. Runs the remaining rows (the teacher reduced to its top / bottom 32 channels) with those
   rankings and writes the table (paired differences to no KD with 95 % intervals), then
   ``<out>/contrasts.md``: the reduced teachers against the whole one and against each
   other (paired, same seeds) and each teacher's own test top-1 as the student saw it.

    python scripts/avmnist_algorithm1.py [--out DIR] [--quick] [extra Hydra overrides]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import torch

from crossdistill.analysis.paired import paired_difference
from crossdistill.run_dir import load_run
from crossdistill.tables.aggregate import cell_dir
from crossdistill.tables.collect import find_runs
from crossdistill.tables.runner import run_spec
from crossdistill.tables.spec import load_spec

SPEC = "avmnist_alg1"
KD_ROW = "logit KD (whole teacher)"
LAYER = "fused"
AUDIO_CHANNELS = range(64, 128)  # the fusion teacher's fused embedding: image 0-63, audio 64-127


def rank_channels(run_dir: Path, n_repeats: int) -> Path:
    """Algorithm 1 on one KD run (crossdistill-diagnose); returns its CSV."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "crossdistill.diagnose",
            f"run_dir={run_dir}",
            f"layer={LAYER}",
            "split=train",
            f"n_repeats={n_repeats}",
            "top_k=32",
        ],
        check=True,
    )
    return run_dir / f"alg1_{LAYER}_train.csv"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/tables/avmnist_alg1/latest"))
    parser.add_argument("--quick", action="store_true", help="1 seed, 3 + 3 epochs")
    parser.add_argument("--n-repeats", type=int, default=20, help="permutations per channel")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_args(argv)
    out = args.out.absolute()
    rankings = out / "rankings"
    overrides = [f"teacher.keep_channels.ranking={rankings}/seed_${{seed}}.csv", *args.overrides]
    spec = load_spec(SPEC, quick=args.quick)
    common = dict(quick=args.quick, out=out, overrides=overrides)

    if run_spec(SPEC, rows=[KD_ROW], **common) != 0:
        print(f"the {KD_ROW!r} runs did not all finish: no rankings", file=sys.stderr)
        return 1
    rankings.mkdir(parents=True, exist_ok=True)
    column = next(iter(spec.columns)).name
    lines = [
        "| seed | audio channels in the top 32 | audio channels in the bottom 32 |",
        "|---|---|---|",
    ]
    for run in sorted(find_runs([cell_dir(out, KD_ROW, column)]), key=lambda r: r.seed):
        target = rankings / f"seed_{run.seed}.csv"
        if not target.is_file():
            shutil.copyfile(rank_channels(run.path, args.n_repeats), target)
        ranked = pd.read_csv(target)["channel"].tolist()
        top = sum(c in AUDIO_CHANNELS for c in ranked[:32])
        bottom = sum(c in AUDIO_CHANNELS for c in ranked[-32:])
        lines.append(f"| {run.seed} | {top} | {bottom} |")
    (out / "channels.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    code = run_spec(SPEC, **common)
    report = contrasts(out)
    (out / "contrasts.md").write_text(report)
    print(report)
    return code


CONTRASTS = [  # (row, against): the comparisons MFH's claim is about
    ("logit KD (top 32 channels)", "logit KD (whole teacher)"),
    ("logit KD (top 32 channels)", "logit KD (bottom 32 channels)"),
    ("logit KD (top 32, head refitted)", "logit KD (whole teacher)"),
    ("logit KD (top 32, head refitted)", "logit KD (bottom 32, head refitted)"),
]


def teacher_accuracy(run_dir: Path) -> float:
    """Test top-1 of the teacher as the run distilled from it (channel mask, refitted head)."""
    run = load_run(run_dir, "auto")
    module = run.module.eval()
    run.datamodule.setup("test")
    correct = total = 0
    with torch.no_grad():
        for batch in run.datamodule.test_dataloader():
            logits = module.teacher_logits(batch["teacher_input"])
            correct += int((logits.argmax(1) == batch["label"]).sum())
            total += len(batch["label"])
    return correct / total


def contrasts(out: Path) -> str:
    """Paired differences between the rows (same seeds) and each reduced teacher's accuracy."""
    runs = pd.read_csv(out / "table.csv")
    runs = runs[runs.status == "ok"]
    acc = {row: dict(zip(g.seed, g["test/acc"], strict=True)) for row, g in runs.groupby("row")}
    lines = ["| student: row - against (same seeds) | difference, top-1 % |", "|---|---|"]
    for row, against in CONTRASTS:
        if row in acc and against in acc:
            diff = paired_difference(acc[row], acc[against])
            lines.append(f"| {row} - {against} | {diff.format(scale=100)} |")
    lines += [
        "",
        "| teacher as distilled (test top-1 %, mean over seeds) | per seed |",
        "|---|---|",
    ]
    for row, group in runs.groupby("row", sort=False):
        if row == "no KD":
            continue
        per_seed = {
            int(r.seed): 100 * teacher_accuracy(Path(r.run_dir)) for r in group.itertuples()
        }
        mean = sum(per_seed.values()) / len(per_seed)
        detail = ", ".join(f"{v:.1f}" for _, v in sorted(per_seed.items()))
        lines.append(f"| {row}: {mean:.1f} | {detail} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
