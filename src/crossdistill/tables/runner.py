"""Run a table spec: each (row, column) is one Hydra multirun of ``crossdistill-train``
over the spec's seeds, written to ``<table dir>/<row>[/<column>]/<job>``; then the table of
the whole dir.

``jobs`` runs at a time: ``jobs`` cells run at once, each one process running its seeds in
turn (one start-up per cell, no idle worker at the end of an odd number of seeds); the last
cell to start runs its seeds ``jobs`` at a time instead (hydra-joblib-launcher), so that
the workers that run out of cells are not left idle while it trains. A teacher needed by
several cells at once (same data, teacher config and seed) is trained by one of them while
the others wait for it (the pipeline's teacher lock), then reused from the teacher cache.
The rows named by the spec's ``teachers`` have their teachers trained first instead, one
job per seed (``stop_after=teacher``, in ``<table dir>/_teachers/<row>/<seed>``), ``jobs``
at a time, so no cell waits on another's teacher; each such job takes the overrides of one
column in turn (a teacher that depends on the column is still trained by its cells).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

import yaml

from crossdistill.tables.aggregate import SPEC_FILE, cell_dir, load_table, read_table_spec
from crossdistill.tables.collect import Run, find_runs
from crossdistill.tables.render import write_all
from crossdistill.tables.spec import (
    Column,
    Row,
    TableSpec,
    load_spec,
    select_rows,
    slug,
    spec_to_dict,
)

TEACHERS_DIR = "_teachers"  # no row's directory name starts with "_" (spec.slug)
QUIET = ["print_config=false", "callbacks.progress_bar=null", "+trainer.enable_progress_bar=false"]


def train_command(
    spec: TableSpec, row: Row, column: Column, sweep_dir: Path, jobs: int,
    extra: Sequence[str] = (), seed_offset: int = 0,
) -> list[str]:
    """The ``crossdistill-train -m`` command of one (row, column) over the seeds.

    ``seed_offset`` rotates the order the seeds run in (not which seeds run): cells running
    side by side then start on different seeds, so each trains the teacher of its own seed
    instead of waiting for the other's (teacher lock).
    """
    start = seed_offset % len(spec.seeds)
    seeds = [*spec.seeds[start:], *spec.seeds[:start]]
    cmd = [
        sys.executable, "-m", "crossdistill.train", "-m",
        *row.train_overrides, *column.overrides, *spec.overrides, *extra,
        "seed=" + ",".join(str(s) for s in seeds),
        f"hydra.sweep.dir={sweep_dir}",
        "hydra.callbacks.multirun_table.enabled=false",  # the runner prints the whole table
    ]
    if jobs > 1:
        cmd += ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"]
    return cmd


def single_run_command(
    spec: TableSpec, row: Row, column: Column, seed: int, run_dir: Path, extra: Sequence[str] = ()
) -> list[str]:
    """The ``crossdistill-train`` command of one seed of a cell, into ``run_dir``."""
    return [
        sys.executable, "-m", "crossdistill.train",
        *row.train_overrides, *column.overrides, *spec.overrides, *extra,
        f"seed={seed}", f"hydra.run.dir={run_dir}",
    ]


def teacher_command(
    spec: TableSpec, row: Row, column: Column, seed: int, run_dir: Path, extra: Sequence[str] = ()
) -> list[str]:
    """The ``crossdistill-train`` command that trains (or reuses) the teacher of one row and
    seed into the teacher cache and stops (``stop_after=teacher``)."""
    return [*single_run_command(spec, row, column, seed, run_dir, extra), "stop_after=teacher"]


def resume_command(run_dir: Path) -> list[str]:
    """``crossdistill-train resume=<run dir>``: a killed or failed run goes on from its saved
    config and its latest good checkpoints (each stage)."""
    return [sys.executable, "-m", "crossdistill.train", f"resume={run_dir}"]


def unfinished_seed_commands(
    spec: TableSpec, row: Row, column: Column, sweep_dir: Path, extra: Sequence[str] = ()
) -> list[list[str]]:
    """The commands that finish a cell started before (its sweep dir holds job dirs), one
    per seed without a finished run: ``resume=`` its job dir where one was started (saved
    config present), else a fresh single run into its job dir (killed before it saved its
    config) or the next free job number. Finished seeds are not run again and a killed run
    loses only the work since its last checkpoint."""
    runs: dict[int, Run] = {}
    for run in find_runs([sweep_dir]):
        if run.seed is not None and (run.seed not in runs or runs[run.seed].failed):
            runs[run.seed] = run  # a finished run of the seed wins over an unfinished one
    numbers = [int(p.name) for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    free = max(numbers, default=-1) + 1
    commands = []
    for seed in spec.seeds:
        run = runs.get(seed)
        if run is not None and not run.failed:
            continue
        if run is not None and (run.path / "config.yaml").is_file():
            commands.append(resume_command(run.path))
            continue
        if run is None:
            run_dir, free = sweep_dir / str(free), free + 1
        else:  # killed before it saved its config: start it again in its own dir
            run_dir = run.path
        commands.append(single_run_command(spec, row, column, seed, run_dir, extra))
    return commands


class TeacherJob(NamedTuple):
    """One teacher to train before the cells (``stop_after=teacher``)."""

    label: str
    row: Row
    column: Column
    seed: int
    run_dir: Path


def teacher_jobs(spec: TableSpec, table_dir: Path) -> list[TeacherJob]:
    """Every teacher to train before the cells, the columns taken in turn; those already
    trained (``metrics.json`` in the run dir) left out."""
    jobs = []
    for row_name in spec.teachers:
        for seed in spec.seeds:
            column = spec.columns[len(jobs) % len(spec.columns)]
            run_dir = table_dir / TEACHERS_DIR / slug(row_name) / str(seed)
            jobs.append(TeacherJob(f"teacher of {row_name}, seed {seed}", spec.row(row_name),
                                   column, seed, run_dir))
    return [job for job in jobs if not (job.run_dir / "metrics.json").is_file()]


def default_table_dir(spec: TableSpec, overrides: Sequence[str]) -> Path:
    """``<paths.log_dir>/tables/<spec name>/<date>_<time>`` (``paths.*`` overrides apply)."""
    from crossdistill.utils.config import compose_config

    cfg = compose_config("train", [o for o in overrides if o.lstrip("+").startswith("paths.")])
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    return Path(str(cfg.paths.log_dir)) / "tables" / spec.name / stamp


def _finished(sweep_dir: Path, spec: TableSpec) -> bool:
    """Every seed of this cell already has a finished run (``--out`` of an earlier run)."""
    if not sweep_dir.is_dir():
        return False
    return {r.seed for r in find_runs([sweep_dir]) if not r.failed} >= set(spec.seeds)


def _with_earlier_rows(spec: TableSpec, full_spec: TableSpec, table_dir: Path) -> TableSpec:
    """``spec`` (its rows selected by ``--rows``) plus the rows of the spec's full row list
    that an earlier run wrote into ``table_dir/table.yaml``: a re-run with other ``--rows``
    adds rows to the table instead of hiding the ones finished before."""
    if not (table_dir / SPEC_FILE).is_file():
        return spec
    earlier = read_table_spec(table_dir).rows
    names = {row.name for row in (*spec.rows, *earlier)}
    return replace(spec, rows=tuple(row for row in full_spec.rows if row.name in names))


def _point_latest(table_dir: Path) -> None:
    latest = table_dir.parent / "latest"
    with contextlib.suppress(OSError):
        if latest.is_symlink() or latest.exists():
            latest.unlink()
        latest.symlink_to(table_dir.name)


def run_spec(
    name_or_path: str,
    quick: bool = False,
    out: Path | None = None,
    jobs: int | None = None,
    rows: Sequence[str] | None = None,
    overrides: Sequence[str] = (),
    report_only: bool = False,
    seeds: Sequence[int] | None = None,
) -> int:
    """Run every (row, column) of the spec, then write and print the table.

    Returns 0 when every run finished, 1 otherwise (the table shows what finished).
    """
    if report_only:
        if out is None or not (out / SPEC_FILE).is_file():
            raise FileNotFoundError(f"--report needs --out <table dir> holding {SPEC_FILE}")
        print(write_all(load_table([out]), out))
        return 0
    full_spec = load_spec(name_or_path, quick=quick)
    spec = select_rows(full_spec, list(rows)) if rows else full_spec
    if seeds:
        spec = replace(spec, seeds=tuple(seeds))
    jobs = jobs or spec.jobs
    extra = [*QUIET, *overrides]
    table_dir = (out or default_table_dir(spec, overrides)).absolute()
    # the rows of an earlier run into this dir stay in the table (their cells are kept)
    shown = _with_earlier_rows(spec, full_spec, table_dir) if rows else spec
    table_dir.mkdir(parents=True, exist_ok=True)  # an existing dir resumes: done cells stay
    as_run = spec_to_dict(shown)
    as_run["overrides"] = [*as_run["overrides"], *extra]
    (table_dir / SPEC_FILE).write_text(yaml.safe_dump(as_run, sort_keys=False, allow_unicode=True))
    (table_dir / "command.txt").write_text(
        "crossdistill-table run " + " ".join([
            name_or_path, *(["--quick"] if quick else []), *(["--rows", *rows] if rows else []),
            *(["--seeds", *map(str, seeds)] if seeds else []), *overrides,
        ]) + "\n"
    )
    cells = [(r, c) for r in spec.rows for c in spec.columns]
    print(f"table {spec.name}: {len(spec.rows)} rows x {len(spec.columns)} column(s) x "
          f"{len(spec.seeds)} seeds, {jobs} run(s) at a time -> {table_dir}", flush=True)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // jobs)),  # jobs runs share cores
        "WANDB_MODE": os.environ.get("WANDB_MODE", "offline"),
        "PYTHONWARNINGS": "ignore",
    }
    logs = table_dir / "logs"
    logs.mkdir(exist_ok=True)
    t_start = time.time()
    todo = []
    for i, (row, column) in enumerate(cells, 1):
        sweep_dir = cell_dir(table_dir, row.name, column.name)
        where = f"{row.name} ({column.name})" if column.name else row.name
        if _finished(sweep_dir, spec):
            print(f"[{i}/{len(cells)}] {where}: already finished in {sweep_dir}", flush=True)
        else:
            todo.append((i, row, column, sweep_dir, where))
    teachers = teacher_jobs(spec, table_dir)
    workers = max(1, min(jobs, len(todo) + len(teachers)))
    lock = threading.Lock()  # the printed lines and the count of cells not started
    not_started = len(todo)  # cells not yet started; the last one runs its seeds in parallel

    def run_logged(cmd: list[str], log: Path, mode: str = "w") -> int:
        with open(log, mode) as fh:
            fh.write(" ".join(cmd) + "\n\n")
            fh.flush()
            return subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT).returncode

    def train_teacher(label: str, row: Row, column: Column, seed: int, run_dir: Path) -> bool:
        log = logs / f"{TEACHERS_DIR}__{slug(row.name)}__{seed}.log"
        t0 = time.time()
        started = (run_dir / "config.yaml").is_file()  # a teacher run killed before: go on
        cmd = resume_command(run_dir) if started else teacher_command(
            spec, row, column, seed, run_dir, extra)
        code = run_logged(cmd, log, "a" if started else "w")
        with lock:
            print(f"[teachers] {label}: " + (
                f"ready in {time.time() - t0:.0f} s" if code == 0 else f"FAILED: see {log}"
            ), flush=True)
        return code == 0

    def run_cell(
        k: int, i: int, row: Row, column: Column, sweep_dir: Path, where: str
    ) -> bool:
        nonlocal not_started
        log = logs / (sweep_dir.relative_to(table_dir).as_posix().replace("/", "__") + ".log")
        with lock:
            not_started -= 1
            seeds_at_once = jobs if not_started == 0 and len(spec.seeds) > 1 else 1
        t0 = time.time()
        if sweep_dir.is_dir() and find_runs([sweep_dir]):  # started before: finish it
            codes = [run_logged(cmd, log, "a") for cmd in
                     unfinished_seed_commands(spec, row, column, sweep_dir, extra)]
            code = next((c for c in codes if c != 0), 0)  # a kill's code is negative
        else:
            code = run_logged(train_command(spec, row, column, sweep_dir, seeds_at_once, extra,
                                            seed_offset=k), log)
        done = [r for r in find_runs([sweep_dir]) if not r.failed] if sweep_dir.is_dir() else []
        ok = code == 0 and len(done) == len(spec.seeds)
        with lock:
            print(f"[{i}/{len(cells)}] {where}: {len(done)}/{len(spec.seeds)} runs finished "
                  f"in {time.time() - t0:.0f} s" + ("" if ok else f", FAILED: see {log}"),
                  flush=True)
        return ok

    with ThreadPoolExecutor(max_workers=workers) as pool:  # teachers first, then the cells
        started = [pool.submit(train_teacher, *job) for job in teachers]
        started += [pool.submit(run_cell, k, *cell) for k, cell in enumerate(todo)]
        all_ok = all([future.result() for future in started])
    text = write_all(load_table([table_dir]), table_dir)
    if out is None:
        _point_latest(table_dir)
    print(text)
    print(f"total {(time.time() - t_start) / 60:.1f} min; table.md, table.csv, "
          f"table_summary.csv, table.png in {table_dir}; again: crossdistill-table {table_dir}")
    return 0 if all_ok else 1
