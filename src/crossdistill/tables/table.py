"""A table of runs: rows (and an optional column axis) of runs paired by seed, metrics,
a baseline row; cells summarised by :mod:`crossdistill.tables.stats`.

Without a spec, rows are the groups of runs whose overrides (``.hydra/overrides.yaml``;
the resolved ``config.yaml`` where a run has none) differ, ``seed`` left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from crossdistill.tables.collect import Run
from crossdistill.tables.stats import PairedDifference, Summary, paired_difference, summarize

if TYPE_CHECKING:
    from crossdistill.tables.bootstrap import BootstrapSpec, TableBootstrap

SEED_KEY = "seed"
# config leaves that differ between runs without saying what the runs compare
_IGNORED_PREFIXES = ("paths.", "hydra.", "run_dir")


@dataclass(frozen=True)
class Metric:
    """A metric column: its key in the runs' metrics, header label, display scale/digits."""

    key: str
    label: str = ""
    scale: float = 1.0
    digits: int = 3
    chance: float | None = None  # the value of guessing: the table tests each cell against it

    @property
    def header(self) -> str:
        return self.label or self.key


@dataclass
class Table:
    """Runs by (row, column); ``columns == [""]`` when there is no column axis."""

    title: str
    rows: list[str]
    metrics: list[Metric]
    baseline: str | None
    runs: dict[tuple[str, str], list[Run]]
    columns: list[str] = field(default_factory=lambda: [""])
    column_axis: str = ""
    paired_metrics: list[str] | None = None  # None: every metric not of the teacher
    description: str = ""
    notes: list[str] = field(default_factory=list)
    curve: Metric | None = None  # a logged metric drawn per epoch in curves.png
    #: ``(a, b)``: columns whose paired differences are compared (does an effect grow?)
    column_contrast: tuple[str, str] | None = None
    #: paired metrics whose interval is bootstrapped over test speakers and seeds
    bootstrap: BootstrapSpec | None = None
    _bootstrapper: TableBootstrap | None = field(default=None, repr=False, compare=False)

    def cell_runs(self, row: str, column: str = "") -> list[Run]:
        return [r for r in self.runs.get((row, column), []) if not r.failed]

    def failed_runs(self) -> list[Run]:
        return [r for runs in self.runs.values() for r in runs if r.failed]

    def all_runs(self) -> list[Run]:
        return [r for runs in self.runs.values() for r in runs]

    def summary(self, row: str, column: str, metric: str) -> Summary:
        return summarize(r.metrics.get(metric) for r in self.cell_runs(row, column))

    def by_seed(self, row: str, column: str, metric: str) -> dict[int, float]:
        """``{seed: value}`` of a cell (runs without a seed are not paired)."""
        return {
            r.seed: r.metrics[metric]
            for r in self.cell_runs(row, column)
            if r.seed is not None and metric in r.metrics
        }

    def paired(self, row: str, column: str, metric: str) -> PairedDifference | None:
        """``row - baseline`` over shared seeds; ``None`` for the baseline row itself. A
        metric of ``bootstrap`` gets the speaker-and-seed bootstrap interval
        (:mod:`crossdistill.tables.bootstrap`) where its runs saved usable scores."""
        if self.baseline is None or row == self.baseline:
            return None
        if self.is_bootstrapped(metric):
            diff = self.bootstrapper().paired(row, column, metric)
            if diff is not None:
                return diff
        return paired_difference(
            self.by_seed(row, column, metric), self.by_seed(self.baseline, column, metric)
        )

    def above_chance(self, row: str, column: str, metric: Metric) -> PairedDifference | None:
        """``value - metric.chance`` per seed, mean with its 95 % t interval over the seeds
        (a one-sample test: is the cell above the guessing level?); ``None`` without a
        chance level or values."""
        if metric.chance is None:
            return None
        values = self.by_seed(row, column, metric.key)
        if not values:
            return None
        return paired_difference(values, dict.fromkeys(values, metric.chance))

    def contrast(self, row: str, metric: str) -> PairedDifference | None:
        """How the paired difference changes between the two ``column_contrast`` columns:
        per seed ``(row - baseline at a) - (row - baseline at b)``, with its t interval over
        the seeds all four cells share; ``None`` for the baseline or without a contrast."""
        if self.column_contrast is None or self.baseline is None or row == self.baseline:
            return None
        deltas = []
        for column in self.column_contrast:
            ours, base = self.by_seed(row, column, metric), self.by_seed(self.baseline, column,
                                                                          metric)
            deltas.append({s: ours[s] - base[s] for s in ours.keys() & base.keys()})
        return paired_difference(deltas[0], deltas[1])

    def is_bootstrapped(self, metric: str) -> bool:
        return self.bootstrap is not None and metric in self.bootstrap.metrics

    def bootstrapper(self) -> TableBootstrap:
        """The table's bootstrap (built on first use; it caches every run's draws)."""
        from crossdistill.tables.bootstrap import TableBootstrap

        if self.bootstrap is None:
            raise ValueError("this table has no paired_bootstrap")
        if self._bootstrapper is None or self._bootstrapper.spec != self.bootstrap:
            self._bootstrapper = TableBootstrap(self.bootstrap, self)
        return self._bootstrapper

    def all_notes(self) -> list[str]:
        """``notes`` and the bootstrap's notes (cells that kept the t interval, and why)."""
        extra = self._bootstrapper.notes if self._bootstrapper is not None else []
        return [*self.notes, *extra]

    @property
    def paired_keys(self) -> list[str]:
        if self.paired_metrics is not None:
            return list(self.paired_metrics)
        return [m.key for m in self.metrics if not m.key.startswith("teacher/")]

    def seeds(self) -> list[int]:
        return sorted({r.seed for r in self.all_runs() if r.seed is not None})


def _varying(values: Sequence[dict[str, str]], keys: Sequence[str]) -> list[str]:
    """Keys whose value is not the same in every run (missing counts as a value)."""
    return [k for k in keys if len({str(v.get(k, "<unset>")) for v in values}) > 1]


def group_runs(runs: Sequence[Run]) -> tuple[list[str], dict[str, list[Run]], list[str]]:
    """Group runs by the overrides that differ between them, ``seed`` excluded.

    Returns (row labels in order of first appearance, runs per label, the differing keys).
    Uses ``.hydra/overrides.yaml`` when every run has one, else the resolved config.
    """
    if all(r.has_overrides for r in runs):
        values = [r.overrides for r in runs]
    else:
        values = [
            {k: v for k, v in r.config.items() if not k.startswith(_IGNORED_PREFIXES)}
            for r in runs
        ]
    keys = list(dict.fromkeys(k for v in values for k in v))
    varying = [
        k for k in _varying(values, keys) if k != SEED_KEY and not k.endswith(f".{SEED_KEY}")
    ]
    labels: list[str] = []
    groups: dict[str, list[Run]] = {}
    for run, value in zip(runs, values, strict=True):
        label = ", ".join(f"{k}={value[k]}" for k in varying if k in value) or "all runs"
        if label not in groups:
            labels.append(label)
            groups[label] = []
        groups[label].append(run)
    return labels, groups, varying


def find_row(labels: Sequence[str], wanted: str) -> str:
    """The row labelled ``wanted``, else the one row whose label contains it."""
    if wanted in labels:
        return wanted
    near = [label for label in labels if wanted in label]
    if len(near) == 1:
        return near[0]
    why = "matches several rows" if near else "is not a row"
    raise ValueError(f"--baseline {wanted!r} {why}; rows: {list(labels)}")


def default_metrics(runs: Sequence[Run]) -> list[Metric]:
    """The student's ``test/`` metrics present in the runs, in logged order."""
    keys = dict.fromkeys(k for r in runs for k in r.metrics if k.startswith("test/"))
    return [Metric(k) for k in keys]


def duplicate_seed_notes(table: Table) -> list[str]:
    """A note per cell where two runs share a seed (pairing keeps the later one)."""
    notes = []
    for (row, column), runs in table.runs.items():
        seeds = [r.seed for r in runs if not r.failed and r.seed is not None]
        dup = sorted({s for s in seeds if seeds.count(s) > 1})
        if dup:
            where = f"{row} ({column})" if column else row
            notes.append(
                f"{where}: several runs with seed(s) {dup}; the mean/std use all of them, "
                "the paired difference the last one"
            )
    return notes


def table_from_runs(
    runs: Sequence[Run],
    metrics: Sequence[str] | None = None,
    baseline: str | None = None,
    title: str = "Runs",
) -> Table:
    """Group runs by differing overrides into a table (baseline = first row by default)."""
    if not runs:
        raise ValueError("no runs found (a run dir holds config.yaml / metrics.json)")
    labels, groups, _ = group_runs(runs)
    chosen = [Metric(k) for k in metrics] if metrics else default_metrics(runs)
    baseline = labels[0] if baseline is None else find_row(labels, baseline)
    table = Table(
        title=title,
        rows=labels,
        metrics=chosen,
        baseline=baseline,
        runs={(label, ""): groups[label] for label in labels},
    )
    table.notes += duplicate_seed_notes(table)
    return table
