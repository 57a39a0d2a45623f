"""Build a table from run / multirun dirs or from a table dir written by the runner."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import yaml

from crossdistill.tables.collect import find_runs
from crossdistill.tables.spec import TableSpec, parse_spec, slug
from crossdistill.tables.table import (
    Metric,
    Table,
    duplicate_seed_notes,
    find_row,
    table_from_runs,
)

SPEC_FILE = "table.yaml"  # the spec a table dir was run with (written by the runner)


def read_table_spec(table_dir: Path) -> TableSpec:
    """The spec a table dir was run with (its ``table.yaml``), validated: a bad file is
    reported by path, key and value."""
    spec_file = table_dir / SPEC_FILE
    data = yaml.safe_load(spec_file.read_text())
    return parse_spec(data, name=table_dir.name, source=str(spec_file))


def cell_dir(table_dir: Path, row: str, column: str) -> Path:
    """``<table dir>/<row>`` or ``<table dir>/<row>/<column>``: one multirun over seeds."""
    path = table_dir / slug(row)
    return path / slug(column) if column else path


def table_from_spec(spec: TableSpec, table_dir: Path) -> Table:
    """The runs of a table dir laid out by :func:`cell_dir`, labelled as the spec says."""
    runs = {}
    for row in spec.rows:
        for column in spec.columns:
            path = cell_dir(table_dir, row.name, column.name)
            runs[(row.name, column.name)] = find_runs([path]) if path.is_dir() else []
    table = Table(
        title=spec.title,
        rows=[r.name for r in spec.rows],
        metrics=list(spec.metrics),
        baseline=spec.baseline,
        runs=runs,
        columns=[c.name for c in spec.columns],
        column_axis=spec.column_axis,
        paired_metrics=list(spec.paired_metrics) if spec.paired_metrics is not None else None,
        description=spec.description,
        curve=spec.curve,
        column_contrast=spec.column_contrast,
        bootstrap=spec.paired_bootstrap,
    )
    table.notes += duplicate_seed_notes(table)
    return table


def load_table(
    paths: Sequence[Path | str],
    metrics: Sequence[str] | None = None,
    baseline: str | None = None,
) -> Table:
    """A table of the runs under ``paths``: a table dir of the runner (holding
    ``table.yaml``) is laid out by its spec; anything else is grouped by the overrides
    that differ between runs."""
    paths = [Path(p) for p in paths]
    if len(paths) == 1 and (paths[0] / SPEC_FILE).is_file():
        spec = read_table_spec(paths[0])
        table = table_from_spec(spec, paths[0])
        if metrics:
            table.metrics = [Metric(k) for k in metrics]
            table.paired_metrics = None
        if baseline is not None:
            table.baseline = find_row(table.rows, baseline)
        return table
    title = "Runs of " + ", ".join(str(p) for p in paths)
    return table_from_runs(find_runs(paths), metrics, baseline, title=title)
