"""The ``paired_bootstrap`` spec key: a table of fake run dirs with saved trial scores gets
bootstrap intervals and their footnote; runs without usable scores keep the t interval."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from crossdistill.metrics.trial_scores import scores_path, write_trial_scores
from crossdistill.metrics.verification import compute_eer, compute_min_dcf
from crossdistill.tables.aggregate import load_table
from crossdistill.tables.render import markdown, write_all
from crossdistill.tables.spec import load_spec, parse_spec, spec_to_dict

N_SPEAKERS = 30
SPEC = {
    "title": "Bootstrap table",
    "rows": {"No KD": {"experiment": "face_voice/no_kd"}, "Better": {"overrides": ["x=1"]},
             "Same": {"overrides": ["x=2"]}},
    "baseline": "No KD",
    "seeds": [0, 1, 2],
    "metrics": [{"key": "test/eer", "label": "EER %", "scale": 100, "digits": 1},
                "test/min_dcf", "test/id_acc"],
    "paired_bootstrap": {"metrics": ["test/eer", "test/min_dcf"], "draws": 300},
}  # fmt: skip


def _trials() -> dict[str, np.ndarray]:
    """10 target and 10 non-target trials per enrolment speaker."""
    rng = np.random.default_rng(0)
    enroll = np.repeat(np.arange(N_SPEAKERS), 20)
    other = (enroll + rng.integers(1, N_SPEAKERS, enroll.size)) % N_SPEAKERS
    label = np.tile(np.r_[np.ones(10, int), np.zeros(10, int)], N_SPEAKERS)
    return {"enroll": enroll, "test": np.where(label == 1, enroll, other), "label": label}


def _write_run(run_dir: Path, seed: int, gap: float, scores: bool = True) -> None:
    trials = _trials()
    noise = np.random.default_rng(10 + seed).normal(size=trials["label"].size)
    values = trials["label"] * (1.0 + gap) + noise
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"seed": seed}))
    labels = torch.tensor(trials["label"])
    eer = compute_eer(torch.tensor(values), labels)[0]
    dcf = compute_min_dcf(torch.tensor(values), labels)[0]
    student = {"test/eer": float(np.float32(eer)), "test/min_dcf": float(np.float32(dcf)),
               "test/id_acc": 0.5 + gap / 10 + seed / 100}  # fmt: skip
    (run_dir / "metrics.json").write_text(json.dumps({"student": student, "teacher": {}}))
    if scores:
        names = [f"id{k:02d}" for k in range(N_SPEAKERS)]
        write_trial_scores(
            scores_path(run_dir, "test"), trial=np.arange(values.size),
            enroll=trials["enroll"], test=trials["test"], label=trials["label"],
            enroll_identity=[names[k] for k in trials["enroll"]],
            test_identity=[names[k] for k in trials["test"]], scores={"": values},
            p_target=0.01, c_miss=1.0, c_fa=1.0,
        )  # fmt: skip


@pytest.fixture
def table_dir(tmp_path: Path) -> Path:
    """A table dir as the runner lays it out: 3 rows x 3 seeds, each run with its scores."""
    out = tmp_path / "table"
    out.mkdir()
    (out / "table.yaml").write_text(yaml.safe_dump(SPEC))
    for row, gap in (("no_kd", 0.0), ("better", 1.5), ("same", 0.0)):
        for seed in (0, 1, 2):
            _write_run(out / row / str(seed), seed, gap)
    return out


def test_bootstrap_intervals_and_footnote(table_dir: Path):
    table = load_table([table_dir])
    text = markdown(table)
    assert "For Δ EER %, test/min_dcf the interval is instead the 95 % percentile " in text
    assert "interval of 300 bootstrap draws (seed 0); each draw resamples the test " in text
    better = table.paired("Better", "", "test/eer")
    assert better.n == 3 and better.speakers == N_SPEAKERS and better.draws == 300
    assert better.low <= better.mean <= better.high < 0 and better.resolved
    assert f"| Better | {better.format(100, 1)} |" in text
    assert better.format(100, 1).endswith(f"(n=3, {N_SPEAKERS} spk), resolved")
    # the point is the mean of the per-seed differences of the logged metrics
    assert better.mean == pytest.approx(
        np.mean([table.by_seed("Better", "", "test/eer")[s]
                 - table.by_seed("No KD", "", "test/eer")[s] for s in (0, 1, 2)]),
        abs=1e-6)  # fmt: skip
    same = table.paired("Same", "", "test/eer")  # the baseline's scores again
    assert (same.mean, same.low, same.high) == (0.0, 0.0, 0.0)
    assert "+0.0 [+0.0, +0.0] (n=3, 30 spk), not resolved" in text
    # a metric that is not bootstrapped keeps the t interval
    assert table.paired("Better", "", "test/id_acc").format(1, 3) in text
    assert "Note:" not in text


def test_summary_csv_says_which_interval(table_dir: Path):
    write_all(load_table([table_dir]), table_dir, png=False)
    with open(table_dir / "table_summary.csv") as fh:
        rows = {(r["row"], r["metric"]): r for r in csv.DictReader(fh)}
    assert rows[("Better", "test/eer")]["delta_interval"] == "bootstrap"
    assert rows[("Better", "test/id_acc")]["delta_interval"] == "t"
    assert rows[("No KD", "test/eer")]["delta_interval"] == ""


def test_runs_without_usable_scores_keep_the_t_interval(table_dir: Path):
    scores_path(table_dir / "better" / "1", "test").unlink()
    metrics_file = table_dir / "same" / "2" / "metrics.json"
    summary = json.loads(metrics_file.read_text())
    summary["student"]["test/eer"] = 0.49  # as if another checkpoint had been tested
    metrics_file.write_text(json.dumps(summary))
    table = load_table([table_dir])
    text = markdown(table)
    t_cell = table.paired("Better", "", "test/eer")
    assert type(t_cell).__name__ == "PairedDifference"
    assert f"| Better | {t_cell.format(100, 1)}; t interval |" in text
    missing = scores_path(table_dir / "better" / "1", "test")
    assert (
        f"Note: Better, test/eer: t interval over seeds, not the bootstrap: run "
        f"{table_dir / 'better' / '1'}: no saved scores {missing}"
    ) in text
    assert "its saved scores give test/eer = " in text and "metrics.json has 0.49" in text
    # the min_dcf of the re-logged run still matches its scores: bootstrapped
    assert type(table.paired("Same", "", "test/min_dcf")).__name__ == "BootstrapDifference"


def test_scores_without_both_classes_keep_the_t_interval(table_dir: Path):
    """A partial test pass (fast_dev_run) can save no scorable trial list."""
    path = scores_path(table_dir / "better" / "0", "test")
    write_trial_scores(
        path, trial=np.arange(2), enroll=np.arange(2), test=np.arange(2),
        label=np.ones(2, int), enroll_identity=["a", "b"], test_identity=["a", "b"],
        scores={"": np.zeros(2)}, p_target=0.01, c_miss=1.0, c_fa=1.0,
    )  # fmt: skip
    table = load_table([table_dir])
    assert type(table.paired("Better", "", "test/eer")).__name__ == "PairedDifference"
    assert f"{path} holds no target + non-target trials" in markdown(table)


def test_spec_errors_name_the_key_and_value():
    def parse(**bootstrap):
        return parse_spec({**SPEC, "paired_bootstrap": bootstrap}, source="t.yaml")

    with pytest.raises(ValueError, match=r"t.yaml: paired_bootstrap: unknown key\(s\) \['n'\]"):
        parse(metrics=["test/eer"], n=3)
    with pytest.raises(ValueError, match="'test/acc' is not among the paired metrics"):
        parse(metrics=["test/acc"])
    with pytest.raises(ValueError, match="'test/id_acc' is not a verification metric"):
        parse(metrics=["test/id_acc"])
    with pytest.raises(ValueError, match=r"unit 'trial'; valid: \['speaker', 'sample'\]"):
        parse(metrics=["test/eer"], unit="trial")
    with pytest.raises(ValueError, match="draws must be an integer >= 1, got 0"):
        parse(metrics=["test/eer"], draws=0)
    spec = parse(metrics=["test/eer"])
    assert spec.paired_bootstrap.draws == 2000 and spec.paired_bootstrap.unit == "speaker"
    assert parse_spec(spec_to_dict(spec)).paired_bootstrap == spec.paired_bootstrap  # table.yaml


def test_the_c2kd_table_bootstraps_its_verification_columns():
    bootstrap = load_spec("c2kd").paired_bootstrap
    assert bootstrap.metrics == ("test/eer", "test/eer_snr10", "test/min_dcf")
    assert (bootstrap.unit, bootstrap.draws) == ("speaker", 2000)


def test_a_row_without_runs_shows_a_dash(table_dir: Path):
    """A row that has not run yet (a table re-reported while the runner works) has no
    interval at all, so its bootstrapped cells are a plain dash, not a t-interval marker."""
    spec = {**SPEC, "rows": {**SPEC["rows"], "Pending": {"overrides": ["x=3"]}}}
    (table_dir / "table.yaml").write_text(yaml.safe_dump(spec))
    text = markdown(load_table([table_dir]))
    assert "| Pending | — |" in text and "—; t interval" not in text
