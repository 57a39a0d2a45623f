"""Hydra callback: every multirun prints its sweep dir and, at the end, its table.

Registered in ``conf/hydra/default.yaml``. When a job fails, Hydra ends the sweep with
that job's error and never calls ``on_multirun_end``; the table of the runs that did
finish is then printed at exit instead. The callback itself never fails a sweep.
"""

from __future__ import annotations

import atexit
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

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


class MultirunTable(Callback):
    """Print the sweep dir at the start and the aggregated table at the end of a multirun."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.sweep_dir: Path | None = None
        self.done = False

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.enabled:
            return
        self.sweep_dir = Path(str(config.hydra.sweep.dir)).absolute()
        print(f"multirun sweep dir: {self.sweep_dir}", flush=True)
        atexit.register(self._at_exit)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.enabled or self.sweep_dir is None:
            return
        self.done = True
        print(f"\nmultirun finished; sweep dir: {self.sweep_dir}\n", flush=True)
        print_sweep_table(self.sweep_dir)

    def _at_exit(self) -> None:
        """The sweep ended without ``on_multirun_end`` (a job failed): report what finished."""
        if self.done or self.sweep_dir is None or not self.sweep_dir.is_dir():
            return
        self.done = True
        print(f"\nmultirun ended early (a job failed); sweep dir: {self.sweep_dir}\n"
              "table of the runs that finished:\n", flush=True)
        print_sweep_table(self.sweep_dir)
