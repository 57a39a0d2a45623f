"""Learning curves of a table: a logged metric per epoch, mean over the seeds of a cell.

Each run's CSV logger writes ``<run dir>/csv/metrics.csv`` (one line per logging event,
``epoch`` and the metric columns). A table spec with ``curve: {key: val/acc, ...}`` gets a
``curves.png`` beside ``table.png``: one panel per column, one line per row (mean over the
seeds that logged that epoch, band = ± sample std), so a reader sees whether the training
curves flattened before the epoch budget ended.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from crossdistill.tables.stats import summarize
from crossdistill.tables.table import Metric, Table

CSV_LOG = Path("csv") / "metrics.csv"


def read_curve(run_dir: Path, key: str) -> dict[int, float]:
    """``{epoch: value}`` of ``key`` in a run's CSV log (the last value logged in an epoch);
    empty when the run has no CSV log or never logged the key."""
    path = run_dir / CSV_LOG
    if not path.is_file():
        return {}
    curve: dict[int, float] = {}
    with path.open(newline="") as fh:
        for line in csv.DictReader(fh):
            value, epoch = line.get(key), line.get("epoch")
            if value not in (None, "") and epoch not in (None, ""):
                curve[int(float(epoch))] = float(value)
    return curve


def cell_curve(
    table: Table, row: str, column: str, key: str
) -> list[tuple[int, float, float, int]]:
    """``[(epoch, mean, std, n)]`` over the finished runs of a cell."""
    curves = [read_curve(run.path, key) for run in table.cell_runs(row, column)]
    epochs = sorted({e for c in curves for e in c})
    points = []
    for epoch in epochs:
        s = summarize(c[epoch] for c in curves if epoch in c)
        points.append((epoch, s.mean, s.std, s.n))
    return points


def plot_curves(table: Table, metric: Metric, path: Path) -> Path | None:
    """``curves.png``: one panel per column, a line per row; ``None`` when no run logged
    ``metric.key``."""
    data = {
        (row, column): cell_curve(table, row, column, metric.key)
        for row in table.rows for column in table.columns
    }
    if not any(data.values()):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_panels = len(table.columns)
    fig, axes = plt.subplots(1, n_panels, figsize=(5.5 * n_panels, 4.2), squeeze=False)
    for ax, column in zip(axes[0], table.columns, strict=True):
        for row in table.rows:
            points = data[(row, column)]
            if not points:
                continue
            epochs = [p[0] + 1 for p in points]
            means = [p[1] * metric.scale for p in points]
            stds = [(p[2] if p[3] > 1 and math.isfinite(p[2]) else 0.0) * metric.scale
                    for p in points]
            (line,) = ax.plot(epochs, means, label=row, linewidth=1.2)
            ax.fill_between(epochs, [m - s for m, s in zip(means, stds, strict=True)],
                            [m + s for m, s in zip(means, stds, strict=True)],
                            color=line.get_color(), alpha=0.12)
        title = f"{table.column_axis}: {column}" if column and table.column_axis else column
        ax.set_title(title or metric.header, fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric.header)
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.suptitle(f"{table.title}: {metric.header} per epoch\nline: mean over seeds; "
                 "band: ± sample std", fontsize=10)
    fig.tight_layout()
    fig.legend(handles, labels, loc="upper center", ncol=min(5, len(labels)), frameon=False,
               fontsize=8, bbox_to_anchor=(0.5, 0.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
