"""crossdistill.tables: statistics by hand, grouping of fake run dirs, markdown and CSV."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import yaml

from crossdistill.tables.aggregate import load_table
from crossdistill.tables.cli import main
from crossdistill.tables.collect import find_runs, parse_override
from crossdistill.tables.render import markdown, write_all
from crossdistill.tables.stats import better_direction, summarize
from crossdistill.tables.table import Metric, group_runs

T_975_DF2 = 4.302653  # Student t, 97.5 % quantile, 2 degrees of freedom (printed tables)


def write_run(path: Path, overrides: list[str], student: dict | None, teacher=None,
              config: dict | None = None) -> Path:
    """A run dir as crossdistill-train leaves it (``student=None``: the run failed)."""
    (path / ".hydra").mkdir(parents=True)
    if overrides is not None:
        (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    seed = next(int(o.split("=")[1]) for o in overrides if o.startswith("seed="))
    cfg = {"seed": seed, "data": {"seed": seed}, "paths": {"output_dir": str(path)},
           **(config or {})}
    (path / "config.yaml").write_text(yaml.safe_dump(cfg))
    if student is not None:
        (path / "metrics.json").write_text(
            json.dumps({"run_dir": str(path), "student": student, "teacher": teacher or {}})
        )
    return path


# baseline acc 0.50, 0.80, 0.65; method = baseline + 0.01, -0.02, +0.04 (per seed)
BASE = {0: 0.50, 1: 0.80, 2: 0.65}
GAIN = {0: 0.01, 1: -0.02, 2: 0.04}


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """A multirun dir: distill=none|kd x seed 0..2 (jobs 0..5) + one failed job (6)."""
    sweep = tmp_path / "multirun"
    job = 0
    for method in ("none", "kd"):
        for seed in (0, 1, 2):
            acc = BASE[seed] + (GAIN[seed] if method == "kd" else 0.0)
            write_run(sweep / str(job), ["experiment=mfh/exp1", f"distill={method}",
                                         f"seed={seed}"],
                      {"val/acc": 0.0, "test/acc": acc, "test/loss": 1.0 - acc},
                      teacher={"test/acc": 0.9})
            job += 1
    write_run(sweep / "10", ["experiment=mfh/exp1", "distill=kd", "seed=3"], None)
    return sweep


def test_summary_is_mean_and_sample_std_by_hand():
    s = summarize([0.50, 0.80, 0.65, None, math.nan])
    assert s.n == 3
    assert s.mean == pytest.approx(0.65)
    # sample std: sqrt(((-.15)^2 + .15^2 + 0) / (3 - 1)) = 0.15 (population std: 0.1225)
    assert s.std == pytest.approx(0.15)
    assert s.format(100, 1) == "65.0 ± 15.0 (n=3)"
    assert summarize([0.3]).format() == "0.300 (n=1)" and summarize([]).format() == "—"


def test_directions():
    assert better_direction("test/eer") == "lower"
    assert better_direction("teacher/test/min_dcf") == "lower"
    assert better_direction("test/loss") == "lower"
    assert better_direction("test/acc_top5") == "higher"
    assert better_direction("test/match_1of2") == "higher"
    assert better_direction("test/something") is None


def test_overrides_are_parsed():
    assert parse_override("+trainer.x=1") == ("trainer.x", "1")
    assert parse_override("data.overlap=0,10") == ("data.overlap", "0,10")
    with pytest.raises(ValueError, match="'oops' is not of the form key=value"):
        parse_override("oops")


def test_runs_are_grouped_by_the_overrides_that_differ(sweep: Path):
    runs = find_runs([sweep])
    assert [r.path.name for r in runs] == ["0", "1", "2", "3", "4", "5", "10"]  # numeric order
    labels, groups, varying = group_runs(runs)
    assert varying == ["distill"]  # experiment is the same everywhere, seed is left out
    assert labels == ["distill=none", "distill=kd"]
    assert [r.seed for r in groups["distill=kd"]] == [0, 1, 2, 3]
    assert groups["distill=kd"][-1].failed


def test_grouping_falls_back_to_the_resolved_config(tmp_path: Path):
    for i, (lr, seed) in enumerate([(0.1, 0), (0.1, 1), (0.01, 0), (0.01, 1)]):
        path = write_run(tmp_path / f"run{i}", [f"seed={seed}"], {"test/acc": 0.5},
                         config={"student": {"optimizer": {"lr": lr}}})
        (path / ".hydra" / "overrides.yaml").unlink()
    labels, groups, varying = group_runs(find_runs([tmp_path]))
    assert varying == ["student.optimizer.lr"]  # seed, data.seed and paths.* are left out
    assert labels == ["student.optimizer.lr=0.1", "student.optimizer.lr=0.01"]
    assert all(len(g) == 2 for g in groups.values())


def test_table_markdown_has_cells_and_paired_differences_by_hand(sweep: Path):
    table = load_table([sweep])
    assert table.baseline == "distill=none"
    assert [m.key for m in table.metrics] == ["test/acc", "test/loss"]  # no val/, no teacher
    text = markdown(table)
    # none: 0.50, 0.80, 0.65 -> 0.650 ± 0.150; kd: 0.51, 0.78, 0.69 -> mean 0.66,
    # std sqrt((.15^2 + .12^2 + .03^2) / 2) = 0.1375
    assert "| distill=none (baseline) | 0.650 ± 0.150 (n=3) |" in text
    assert "| distill=kd | 0.660 ± 0.137 (n=3) |" in text
    # paired kd - none: +0.01, -0.02, +0.04: mean 0.01, sample std 0.03,
    # half-width t(0.975, 2) * 0.03 / sqrt(3) = 0.07452 -> [-0.0645, +0.0845]
    half = T_975_DF2 * 0.03 / math.sqrt(3)
    diff = table.paired("distill=kd", "", "test/acc")
    assert diff.mean == pytest.approx(0.01)
    assert diff.low == pytest.approx(0.01 - half, abs=1e-6)
    assert diff.high == pytest.approx(0.01 + half, abs=1e-6)
    assert "| distill=kd | +0.010 [-0.065, +0.085] (n=3), not resolved |" in text
    assert "test/acc ↑" in text and "test/loss ↓" in text
    assert "Failed or unfinished runs (no metrics.json, left out): 1" in text


def test_a_resolved_difference_is_marked_resolved(sweep: Path):
    table = load_table([sweep], metrics=["teacher/test/acc", "test/acc"], baseline="distill=kd")
    text = markdown(table)
    assert "| distill=kd (baseline) | 0.900 ± 0.000 (n=3) |" in text
    # none - kd = -0.01, +0.02, -0.04 (same interval, mirrored)
    assert "| distill=none | -0.010 [-0.085, +0.065] (n=3), not resolved |" in text
    assert load_table([sweep], baseline="=kd").baseline == "distill=kd"  # a unique part
    with pytest.raises(ValueError, match="'distill' matches several rows"):
        load_table([sweep], baseline="distill")
    constant = load_table([sweep], metrics=["val/acc"])
    assert "+0.000 [+0.000, +0.000] (n=3), not resolved" in markdown(constant)


def test_csv_files_hold_one_line_per_run_and_per_cell(sweep: Path, tmp_path: Path):
    write_all(load_table([sweep]), tmp_path / "out")
    with open(tmp_path / "out" / "table.csv") as fh:
        runs = list(csv.DictReader(fh))
    assert len(runs) == 7
    assert [r["status"] for r in runs].count("failed") == 1
    kd1 = next(r for r in runs if r["row"] == "distill=kd" and r["seed"] == "1")
    assert float(kd1["test/acc"]) == pytest.approx(0.78)
    assert float(kd1["teacher/test/acc"]) == pytest.approx(0.9)
    with open(tmp_path / "out" / "table_summary.csv") as fh:
        summary = {(r["row"], r["metric"]): r for r in csv.DictReader(fh)}
    kd = summary[("distill=kd", "test/acc")]
    assert float(kd["mean"]) == pytest.approx(0.66) and kd["n"] == "3"
    assert float(kd["delta_mean"]) == pytest.approx(0.01) and kd["delta_resolved"] == "False"
    assert summary[("distill=none", "test/acc")]["delta_mean"] == ""  # the baseline itself
    assert (tmp_path / "out" / "table.png").stat().st_size > 0


def test_cli_prints_and_writes_into_the_sweep_dir(sweep: Path, capsys):
    assert main([str(sweep), "--metrics", "test/acc"]) == 0
    out = capsys.readouterr().out
    assert "+0.010 [-0.065, +0.085] (n=3), not resolved" in out
    assert (sweep / "table.md").read_text() in out
    assert main([str(sweep), "--baseline", "nope"]) == 2
    assert "--baseline 'nope' is not a row; rows: ['distill=none', 'distill=kd']" in (
        capsys.readouterr().err
    )
    assert main([str(sweep / "missing")]) == 2


def test_a_metric_with_a_chance_level_is_tested_against_it_by_hand(sweep: Path):
    table = load_table([sweep])
    table.metrics = [Metric("test/acc", chance=0.6), Metric("test/loss")]
    text = markdown(table)
    # none - 0.6: -0.10, +0.20, +0.05 -> mean 0.05, sample std 0.15,
    # half-width t(0.975, 2) * 0.15 / sqrt(3) = 0.3726 -> [-0.323, +0.423]
    half = T_975_DF2 * 0.15 / math.sqrt(3)
    diff = table.above_chance("distill=none", "", table.metrics[0])
    assert diff.mean == pytest.approx(0.05)
    assert (diff.low, diff.high) == pytest.approx((0.05 - half, 0.05 + half), abs=1e-6)
    assert "test/acc above chance (0.6)" in text
    assert "| distill=none | +0.050 [-0.323, +0.423] (n=3), not resolved |" in text
    # chance 0: every seed is above it by its value (0.65 ± 0.3726): resolved
    table.metrics = [Metric("test/acc", chance=0.0)]
    assert "| distill=none | +0.650 [+0.277, +1.023] (n=3), resolved |" in markdown(table)
    assert table.above_chance("distill=none", "", Metric("test/loss")) is None
    assert "above chance" not in markdown(load_table([sweep]))
