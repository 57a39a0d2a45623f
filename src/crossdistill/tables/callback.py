"""Hydra callback: every multirun prints its sweep dir, and at the end its table and the
summary of its jobs; the process exits non-zero when a job failed.

Registered in ``conf/hydra/default.yaml``. A failed job does not stop the sweep
(:func:`crossdistill.pipeline.run_task` records it in the job's ``status.json``), so
``on_multirun_end`` runs; it writes ``summary.md``/``summary.csv`` (job, overrides, status,
error's last line, run dir) and then raises ``SystemExit(1)`` if any job failed or never
finished. Hydra swallows ``Exception`` raised by callbacks but not ``SystemExit``; it calls
``on_multirun_end`` in reverse registration order, so callbacks registered after this one
have run by then. If the sweep itself ends with an error (a sweeper or launcher error),
Hydra skips ``on_multirun_end``; the table and summary of what finished are printed at exit.
Printing the report itself never fails a sweep.
"""

from __future__ import annotations

import atexit
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from crossdistill.sweeps.status import SUMMARY_CSV, SUMMARY_MD, failed_jobs, write_summary

log = logging.getLogger(__name__)


def print_sweep_table(sweep_dir: Path, header: str = "") -> str | None:
    """Aggregate the runs under ``sweep_dir``, write the table files there, print it."""
    from crossdistill.tables.aggregate import load_table
    from crossdistill.tables.render import write_all

    try:
        table = load_table([sweep_dir])
        text = write_all(table, sweep_dir)
    except Exception as err:  # noqa: BLE001 - a report must never fail the sweep
        print(f"{header}multirun table of {sweep_dir}: not written ({err})", flush=True)
        return None
    print(f"{header}{text}\nTable files (table.md, table.csv, table_summary.csv, table.png) "
          f"in {sweep_dir}; again with: crossdistill-table {sweep_dir}", flush=True)
    return text


def print_sweep_summary(sweep_dir: Path) -> int:
    """Write and print the jobs' summary; return the number of failed or unfinished jobs."""
    try:
        text, records = write_summary(sweep_dir)
    except Exception as err:  # noqa: BLE001 - a report must never fail the sweep
        print(f"sweep summary of {sweep_dir}: not written ({err})", flush=True)
        return 0
    print(f"\n{text}\n({SUMMARY_MD}, {SUMMARY_CSV} in {sweep_dir})", flush=True)
    return len(failed_jobs(records))


class MultirunTable(Callback):
    """Print the sweep dir at the start; at the end the table (``enabled``) and the jobs'
    summary (``job_summary``), and exit non-zero if a job failed (``job_summary``).

    The table runner (``crossdistill-table run``) turns the table off and keeps the summary
    and exit code."""

    def __init__(self, enabled: bool = True, job_summary: bool = True) -> None:
        self.enabled = enabled
        self.job_summary = job_summary
        self.sweep_dir: Path | None = None
        self.done = False

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not (self.enabled or self.job_summary):
            return
        self.sweep_dir = Path(str(config.hydra.sweep.dir)).absolute()
        if self.enabled:
            print(f"multirun sweep dir: {self.sweep_dir}", flush=True)
        atexit.register(self._at_exit)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.sweep_dir is None:
            return
        self.done = True
        if self.enabled:
            print(f"\nmultirun finished; sweep dir: {self.sweep_dir}\n", flush=True)
            print_sweep_table(self.sweep_dir)
        n_failed = print_sweep_summary(self.sweep_dir) if self.job_summary else 0
        if n_failed:
            print(f"{n_failed} job(s) failed; exit code 1", flush=True)
            raise SystemExit(1)

    def _at_exit(self) -> None:
        """The sweep ended without ``on_multirun_end``: report what finished."""
        if self.done or self.sweep_dir is None or not self.sweep_dir.is_dir():
            return
        self.done = True
        if self.enabled:
            print(f"\nmultirun ended early (a job failed); sweep dir: {self.sweep_dir}\n"
                  "table of the runs that finished:\n", flush=True)
            print_sweep_table(self.sweep_dir)
        if self.job_summary:
            print_sweep_summary(self.sweep_dir)
