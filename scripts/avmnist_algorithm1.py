"""MFH Algorithm 1 on the AV-MNIST fusion teacher (`make reproduce-avmnist-alg1`).

1. Runs the "no KD" and "logit KD (whole teacher)" rows of ``conf/table/avmnist_alg1.yaml``
   (image+audio teacher -> audio student, 5 seeds).
2. Ranks the 128 fused channels of each seed's teacher with ``crossdistill-diagnose``
   (``layer=fused``, the KD student of that seed, training split) into
   ``<out>/rankings/seed_<seed>.csv`` and counts how many of the top / bottom 32 channels
   come from the audio branch (channels 64-127), in ``<out>/channels.md``.
3. Runs the remaining rows (the teacher reduced to its top / bottom 32 channels) with those
   rankings and writes the table (paired differences to no KD with 95 % intervals).

    python scripts/avmnist_algorithm1.py [--out DIR] [--quick] [extra Hydra overrides]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

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
    return run_spec(SPEC, **common)


if __name__ == "__main__":
    sys.exit(main())
