"""``crossdistill-table``: aggregate runs into a table, or run a table spec first.

    crossdistill-table <run or multirun dirs...> [--baseline ROW] [--metrics M ...] [--out DIR]
    crossdistill-table run <spec name or path> [--quick] [--out DIR] [--jobs N] [overrides...]

See docs/tables.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

AGGREGATE_HELP = """\
Group the runs under the given dirs (a multirun dir = its numbered job dirs; other dirs
are searched recursively) by the overrides that differ between them (seed left out), pair
the rows by seed and print a table: mean ± sample std (n-1) and n per cell, and per row
the paired difference to the baseline row with its 95 %% t-interval ("not resolved" where
it contains 0); a table dir whose spec has paired_bootstrap bootstraps those metrics over
test speakers and seeds instead (docs/tables.md). Writes table.md, table.csv (one line
per run), table_summary.csv and table.png to --out (default: the given dir when there is
exactly one).
Run a table spec instead: crossdistill-table run <spec> --help."""


def aggregate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="crossdistill-table", description=AGGREGATE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dirs", nargs="+", type=Path, help="run, multirun or table dirs")
    p.add_argument("--baseline", default=None,
                   help="row compared with: its label or a part of it that names one row "
                        "(default: the first row)")
    p.add_argument("--metrics", nargs="+", default=None,
                   help="metric keys (default: the test/ metrics present; teacher ones as "
                        "teacher/test/...)")
    p.add_argument("--out", type=Path, default=None, help="where to write the table files")
    p.add_argument("--no-png", action="store_true", help="skip the figure")
    return p


def run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="crossdistill-table run",
        description="Run a table spec (conf/table/<name>.yaml or a path): every row as a "
                    "Hydra multirun of crossdistill-train over the seeds, then the table.",
    )
    p.add_argument("spec", help="spec name (conf/table/<name>.yaml) or path")
    p.add_argument("--quick", action="store_true", help="merge in the spec's quick part")
    p.add_argument("--out", type=Path, default=None,
                   help="table dir (default: <paths.log_dir>/tables/<spec>/<date>_<time>)")
    p.add_argument("--jobs", type=int, default=None, help="runs in parallel (default: spec)")
    p.add_argument("--rows", nargs="+", default=None,
                   help="only these rows (row name, its directory name or experiment name); "
                        "the baseline row is always run")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="instead of the spec's")
    p.add_argument("--report", action="store_true",
                   help="only rewrite the table of an existing table dir (--out)")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "run":
        from crossdistill.tables.runner import run_spec

        args = run_parser().parse_intermixed_args(argv[1:])
        try:
            return run_spec(args.spec, quick=args.quick, out=args.out, jobs=args.jobs,
                            rows=args.rows, overrides=args.overrides, report_only=args.report,
                            seeds=args.seeds)
        except (FileNotFoundError, ValueError) as err:
            print(f"crossdistill-table run: {err}", file=sys.stderr)
            return 2
    args = aggregate_parser().parse_args(argv)
    from crossdistill.tables.aggregate import load_table
    from crossdistill.tables.render import markdown, write_all

    try:
        table = load_table(args.dirs, args.metrics, args.baseline)
    except (FileNotFoundError, ValueError) as err:
        print(f"crossdistill-table: {err}", file=sys.stderr)
        return 2
    out = args.out or (args.dirs[0] if len(args.dirs) == 1 else None)
    if out is None:
        print(markdown(table))
        print("(several dirs and no --out: nothing written)")
        return 0
    print(write_all(table, out, png=not args.no_png))
    print(f"written: {out}/table.md, table.csv, table_summary.csv"
          + ("" if args.no_png else ", table.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
