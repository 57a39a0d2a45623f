"""Write a :class:`~crossdistill.tables.table.Table` as markdown, CSV and a PNG."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from crossdistill.analysis.speaker_bootstrap import BootstrapDifference
from crossdistill.tables.stats import PairedDifference, better_direction
from crossdistill.tables.table import Metric, Table

ARROWS = {"lower": " ↓", "higher": " ↑", None: ""}
CELL_RULE = "cells: mean ± sample std (n − 1) over seeds, n = finished runs"
PAIRED_RULE = (
    "over seeds (same seed = same init, data and order): mean of the per-seed differences "
    "row − baseline with its 95 % Student-t interval (n − 1 degrees of freedom); "
    '"not resolved" = the interval contains 0, the two are not ranked'
)


def _header(metric: Metric, column: str) -> str:
    text = metric.header + ARROWS[better_direction(metric.key)]
    return f"{text} ({column})" if column else text


def _directions(metrics: list[Metric]) -> str:
    lower = [m.header for m in metrics if better_direction(m.key) == "lower"]
    higher = [m.header for m in metrics if better_direction(m.key) == "higher"]
    parts = []
    if lower:
        parts.append("lower is better (↓): " + ", ".join(lower))
    if higher:
        parts.append("higher is better (↑): " + ", ".join(higher))
    return "; ".join(parts)


def _md_table(head: list[str], body: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        *("| " + " | ".join(cells) + " |" for cells in body),
    ]


def markdown(table: Table) -> str:
    """The results table (mean ± std (n)) and the paired-difference table."""
    lines = [f"# {table.title}", ""]
    if table.description:
        lines += [table.description.strip(), ""]
    seeds = table.seeds()
    lines += [f"Seeds: {seeds}; {CELL_RULE}."]
    directions = _directions(table.metrics)
    if directions:
        lines += [f"Better: {directions}."]
    lines.append("")
    columns = table.columns
    head = ["row"]
    head += [_header(m, c) for m in table.metrics for c in columns]
    body = []
    for row in table.rows:
        name = f"{row} (baseline)" if row == table.baseline else row
        cells = [
            table.summary(row, c, m.key).format(m.scale, m.digits)
            for m in table.metrics
            for c in columns
        ]
        body.append([name, *cells])
    lines += _md_table(head, body)
    paired = [m for m in table.metrics if m.key in table.paired_keys]
    if table.baseline is not None and paired and len(table.rows) > 1:
        lines += ["", f"Δ = paired difference to the baseline `{table.baseline}` {PAIRED_RULE}.",
                  *_bootstrap_rule(table, paired), ""]
        head = ["row"] + [f"Δ {_header(m, c)}" for m in paired for c in columns]
        body = []
        for row in table.rows:
            if row == table.baseline:
                continue
            cells = []
            for m in paired:
                for c in columns:
                    cells.append(_delta_cell(table, row, c, m))
            body.append([row, *cells])
        lines += _md_table(head, body)
        lines += _contrast_lines(table, paired)
    lines += _chance_lines(table)
    failed = table.failed_runs()
    if failed:
        lines += ["", f"Failed or unfinished runs (no metrics.json, left out): {len(failed)}"]
        lines += [f"- {r.path}" for r in failed]
    notes = table.all_notes()
    if notes:
        lines += ["", *(f"Note: {n}" for n in notes)]
    return "\n".join(lines) + "\n"


def _bootstrap_rule(table: Table, paired: list[Metric]) -> list[str]:
    """The footnote of the bootstrapped columns (``paired_bootstrap``)."""
    chosen = [m.header for m in paired if table.is_bootstrapped(m.key)]
    if not chosen or table.bootstrap is None:
        return []
    return [f"For Δ {', '.join(chosen)} the interval is instead the {table.bootstrap.rule()}."]


def _interval_kind(diff: PairedDifference | None) -> str:
    """``bootstrap`` / ``t`` (the interval a paired cell shows), ``""`` without one."""
    if diff is None:
        return ""
    return "bootstrap" if isinstance(diff, BootstrapDifference) else "t"


def _delta_cell(table: Table, row: str, column: str, metric: Metric) -> str:
    diff = table.paired(row, column, metric.key)
    if diff is None:
        return "—"
    text = diff.format(metric.scale, metric.digits)
    if table.is_bootstrapped(metric.key) and _interval_kind(diff) == "t" and diff.n > 0:
        text += "; t interval"
    return text


def _contrast_lines(table: Table, paired: list[Metric]) -> list[str]:
    """The ``column_contrast`` section: does a row's paired difference change between two
    columns (e.g. grow from a small to a large modality gap)?"""
    if table.column_contrast is None:
        return []
    a, b = table.column_contrast
    lines = ["", f"ΔΔ = Δ at `{a}` − Δ at `{b}`, per seed (each Δ paired to "
             f"`{table.baseline}` on that seed), mean with its 95 % Student-t interval over "
             "the seeds all four cells share; > 0 means the difference is larger at "
             f"`{a}` than at `{b}`; \"not resolved\" = the interval contains 0.", ""]
    head = ["row"] + [f"ΔΔ {_header(m, '')}" for m in paired]
    body = []
    for row in table.rows:
        if row == table.baseline:
            continue
        cells = []
        for m in paired:
            diff = table.contrast(row, m.key)
            cells.append(diff.format(m.scale, m.digits) if diff else "—")
        body.append([row, *cells])
    return lines + _md_table(head, body)


def _chance_lines(table: Table) -> list[str]:
    """Metrics with a ``chance`` level: each cell minus that level, one-sample t interval."""
    lines: list[str] = []
    for metric in (m for m in table.metrics if m.chance is not None):
        body = []
        for row in table.rows:
            diffs = [table.above_chance(row, c, metric) for c in table.columns]
            if any(diffs):
                body.append([row, *(d.format(metric.scale, metric.digits) if d else "—"
                                    for d in diffs)])
        if not body:
            continue
        chance = f"{metric.chance * metric.scale:g}"
        lines += ["", f"{metric.header} above chance ({chance}): the cell minus {chance} per "
                  "seed, mean with its 95 % Student-t interval over the seeds; \"not "
                  "resolved\" = the interval contains 0.", ""]
        lines += _md_table(["row", *(f"{metric.header} − chance ({c})" if c else
                                     f"{metric.header} − chance" for c in table.columns)], body)
    return lines


def _fmt(value: float) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else repr(value)


def write_csv(table: Table, out: Path) -> tuple[Path, Path]:
    """``table.csv``: one line per run; ``table_summary.csv``: one line per cell and metric."""
    out.mkdir(parents=True, exist_ok=True)
    runs_path, summary_path = out / "table.csv", out / "table_summary.csv"
    keys = list(dict.fromkeys(k for r in table.all_runs() for k in r.metrics))
    with open(runs_path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["row", "column", "seed", "status", "run_dir", *keys])
        for (row, column), runs in table.runs.items():
            for r in runs:
                writer.writerow(
                    [row, column, "" if r.seed is None else r.seed,
                     "failed" if r.failed else "ok", str(r.path),
                     *(_fmt(r.metrics.get(k)) for k in keys)]
                )
    with open(summary_path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(
            ["row", "column", "metric", "mean", "std", "n", "baseline", "delta_mean",
             "delta_low", "delta_high", "delta_n", "delta_resolved", "delta_interval"]
        )
        for row in table.rows:
            for column in table.columns:
                for m in table.metrics:
                    s = table.summary(row, column, m.key)
                    d = table.paired(row, column, m.key) if m.key in table.paired_keys else None
                    delta = (
                        [_fmt(d.mean), _fmt(d.low), _fmt(d.high), d.n, d.resolved,
                         _interval_kind(d)]
                        if d else ["", "", "", "", "", ""]
                    )
                    writer.writerow([row, column, m.key, _fmt(s.mean), _fmt(s.std), s.n,
                                     table.baseline or "", *delta])
    return runs_path, summary_path


def plot(table: Table, path: Path) -> Path:
    """One panel per metric: a bar per row (grouped by column) = mean, error bar = ± sample
    std; what the bars mean and n are written on the figure; the legend sits below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = table.metrics
    n_cols = min(3, len(metrics)) or 1
    n_rows = math.ceil(len(metrics) / n_cols) or 1
    width_per_panel = max(4.0, 0.6 * len(table.rows) * len(table.columns) + 1.5)
    fig, axes = plt.subplots(
        n_rows, n_cols, figsize=(width_per_panel * n_cols, 3.8 * n_rows + 0.8), squeeze=False
    )
    ns = sorted({n for r in table.rows for c in table.columns for m in metrics
                 if (n := table.summary(r, c, m.key).n) > 0}) or [0]
    n_text = f"n = {ns[0]}" if len(ns) == 1 else f"n = {ns[0]}..{ns[-1]} (written per bar)"
    bar_w = 0.8 / len(table.columns)
    for i, m in enumerate(metrics):
        ax = axes[i // n_cols][i % n_cols]
        empty = all(table.summary(r, c, m.key).n == 0 for r in table.rows for c in table.columns)
        for j, column in enumerate(table.columns):
            stats = [table.summary(r, column, m.key) for r in table.rows]
            xs = [k + (j - (len(table.columns) - 1) / 2) * bar_w for k in range(len(table.rows))]
            means = [s.mean * m.scale if s.n else 0.0 for s in stats]
            errs = [s.std * m.scale if s.n > 1 else math.nan for s in stats]
            bars = ax.bar(xs, means, bar_w, yerr=errs, capsize=3,
                          label=column or None, alpha=0.85)
            for bar, s in zip(bars, stats, strict=True):
                if not empty and (len(ns) > 1 or s.n == 0):
                    ax.annotate("no value" if s.n == 0 else f"n={s.n}",
                                (bar.get_x() + bar.get_width() / 2, 0),
                                ha="center", va="bottom", fontsize=7)
        if empty:
            ax.text(0.5, 0.5, "no values in these runs", transform=ax.transAxes,
                    ha="center", va="center", color="gray")
            ax.set_yticks([])
        ax.set_xticks(range(len(table.rows)))
        ax.set_xticklabels(table.rows, rotation=25, ha="right", fontsize=8)
        ax.set_title(_header(m, ""), fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    for k in range(len(metrics), n_rows * n_cols):
        axes[k // n_cols][k % n_cols].set_visible(False)
    fig.suptitle(
        f"{table.title}\nbars: mean over seeds; error bars: ± sample std (n − 1)"
        + (" (none where n = 1)" if 1 in ns else "") + f"; {n_text}"
        + ("; ↓ lower / ↑ higher is better" if _directions(metrics) else ""),
        fontsize=10,
    )
    fig.tight_layout()
    if len(table.columns) > 1:
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="upper center", ncol=len(labels), frameon=False,
                   title=table.column_axis or None, bbox_to_anchor=(0.5, 0.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def write_all(table: Table, out: Path, png: bool = True) -> str:
    """``table.md``, ``table.csv``, ``table_summary.csv``, ``table.png`` and, when the table
    has a ``curve`` metric, ``curves.png`` (:mod:`crossdistill.tables.curves`) in ``out``."""
    text = markdown(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(text)
    write_csv(table, out)
    if png and table.metrics:
        plot(table, out / "table.png")
    if png and table.curve is not None:
        from crossdistill.tables.curves import plot_curves

        plot_curves(table, table.curve, out / "curves.png")
    return text
