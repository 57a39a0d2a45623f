"""Saved per-sample predictions (``<run dir>/predictions/<split>.npz``) and the tables'
``unit: sample`` bootstrap of accuracy differences over test samples and seeds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from crossdistill.metrics.predictions import (
    load_predictions,
    parse_accuracy_metric,
    predictions_path,
    write_predictions,
)
from crossdistill.tables.aggregate import load_table
from crossdistill.tables.render import markdown
from crossdistill.tables.spec import parse_spec, spec_to_dict

N_SAMPLES = 400
SPEC = {
    "title": "Sample bootstrap table",
    "rows": {"No KD": {"overrides": ["x=0"]}, "Better": {"overrides": ["x=1"]},
             "Same": {"overrides": ["x=2"]}},
    "baseline": "No KD",
    "seeds": [0, 1, 2],
    "metrics": [{"key": "test/acc", "scale": 100}, {"key": "test/acc_top2", "scale": 100}],
    "paired_bootstrap": {"metrics": ["test/acc", "test/acc_top2"], "unit": "sample",
                         "draws": 2000},
}  # fmt: skip


def test_write_sorts_keeps_repeats_once_and_rejects_conflicts(tmp_path: Path):
    path = tmp_path / "p.npz"
    # index 2 twice, as a distributed sampler pads the last batch
    write_predictions(
        path, index=np.array([2, 0, 1, 2]), label=np.array([1, 0, 2, 1]),
        top=np.array([[1, 0], [2, 0], [2, 1], [1, 0]]),
    )  # fmt: skip
    found = load_predictions(path)
    assert found.index.tolist() == [0, 1, 2]
    assert found.label.tolist() == [0, 2, 1]
    assert found.correct(1).tolist() == [False, True, True]
    assert found.correct(2).tolist() == [True, True, True]
    with pytest.raises(ValueError, match="top-3 needs k in 1..2"):
        found.correct(3)
    with pytest.raises(ValueError, match="predicted twice with different results"):
        write_predictions(path, index=np.array([0, 0]), label=np.array([1, 1]),
                          top=np.array([[1], [0]]))  # fmt: skip
    np.savez(tmp_path / "bad.npz", index=np.arange(2))
    with pytest.raises(ValueError, match=r"missing arrays \['label', 'top'\]"):
        load_predictions(tmp_path / "bad.npz")


def test_parse_accuracy_metric():
    assert parse_accuracy_metric("test/acc") == ("test", 1)
    assert parse_accuracy_metric("val/acc_top5") == ("val", 5)
    for bad in ("test/eer", "test/acc_top0", "acc"):
        with pytest.raises(ValueError, match="not an accuracy of saved predictions"):
            parse_accuracy_metric(bad)


def _write_run(run_dir: Path, seed: int, extra_correct: int, save: bool = True) -> None:
    """Labels 0/1/2; the baseline (extra_correct=0) is right on a seeded 60 % of the
    samples, a row with ``extra_correct`` = m is also right on m of the others."""
    rng = np.random.default_rng(seed)
    label = np.arange(N_SAMPLES) % 3
    right = rng.random(N_SAMPLES) < 0.6
    wrong = np.flatnonzero(~right)
    right[wrong[:extra_correct]] = True
    first = np.where(right, label, (label + 1) % 3)
    top = np.stack([first, (first + 1) % 3], axis=1)  # top 2: right when label == first - 1
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"seed": seed}))
    student = {"test/acc": float(np.float32(right.mean())),
               "test/acc_top2": float(np.float32(((top == label[:, None]).any(1)).mean()))}
    (run_dir / "metrics.json").write_text(json.dumps({"student": student, "teacher": {}}))
    if save:
        write_predictions(predictions_path(run_dir, "test"), index=np.arange(N_SAMPLES),
                          label=label, top=top)  # fmt: skip


@pytest.fixture
def table_dir(tmp_path: Path) -> Path:
    out = tmp_path / "table"
    out.mkdir()
    (out / "table.yaml").write_text(yaml.safe_dump(SPEC))
    for row, extra in (("no_kd", 0), ("better", 24), ("same", 0)):
        for seed in (0, 1, 2):
            _write_run(out / row / str(seed), seed, extra)
    return out


def test_sample_bootstrap_matches_the_normal_approximation(table_dir: Path):
    table = load_table([table_dir])
    better = table.paired("Better", "", "test/acc")
    # every seed: exactly 24 more of 400 right -> +6 points, per-sample differences 0 / 1
    assert better.mean == pytest.approx(24 / N_SAMPLES, abs=1e-6)
    assert better.n == 3 and better.speakers == N_SAMPLES and better.unit == "samples"
    # the seeds agree exactly, so the interval is the samples' one: the mean of n
    # Bernoulli(p = 0.06) differences, standard error sqrt(p (1 - p) / n)
    p = 24 / N_SAMPLES
    half = 1.96 * np.sqrt(p * (1 - p) / N_SAMPLES)
    assert better.low == pytest.approx(p - half, abs=0.006)
    assert better.high == pytest.approx(p + half, abs=0.006)
    assert better.resolved
    same = table.paired("Same", "", "test/acc")
    assert (same.mean, same.low, same.high) == (0.0, 0.0, 0.0)
    text = markdown(table)
    assert better.format(100, 1).endswith(f"(n=3, {N_SAMPLES} samples), resolved")
    assert "each draw resamples the test samples with replacement" in text
    assert type(table.paired("Better", "", "test/acc_top2")).__name__ == "BootstrapDifference"


def test_runs_without_usable_predictions_keep_the_t_interval(table_dir: Path):
    predictions_path(table_dir / "better" / "1", "test").unlink()
    metrics_file = table_dir / "same" / "2" / "metrics.json"
    summary = json.loads(metrics_file.read_text())
    summary["student"]["test/acc"] = 0.25  # as if another checkpoint had been tested
    metrics_file.write_text(json.dumps(summary))
    table = load_table([table_dir])
    text = markdown(table)
    assert type(table.paired("Better", "", "test/acc")).__name__ == "PairedDifference"
    missing = predictions_path(table_dir / "better" / "1", "test")
    assert f"no saved predictions {missing}" in text
    assert "its saved predictions give test/acc = " in text and "metrics.json has 0.25" in text
    assert type(table.paired("Same", "", "test/acc_top2")).__name__ == "BootstrapDifference"


def test_spec_validates_sample_metrics():
    def parse(**bootstrap):
        return parse_spec({**SPEC, "paired_bootstrap": bootstrap}, source="t.yaml")

    with pytest.raises(ValueError, match="unit sample.*'test/eer' is not an accuracy"):
        parse_spec({**SPEC, "metrics": ["test/eer"], "paired_bootstrap":
                    {"metrics": ["test/eer"], "unit": "sample"}}, source="t.yaml")  # fmt: skip
    spec = parse(metrics=["test/acc"], unit="sample")
    assert parse_spec(spec_to_dict(spec)).paired_bootstrap == spec.paired_bootstrap


def test_evaluator_without_sample_indices_says_how_to_turn_saving_off(tmp_path: Path):
    import torch
    from torch import nn

    from crossdistill.modules.evaluators import ClassificationEvaluator

    class Module(nn.Linear):
        input_key = "x"

        def log(self, *args, **kwargs) -> None:
            pass

    evaluator = ClassificationEvaluator(3, predictions_dir=str(tmp_path))
    batch = {"x": torch.randn(4, 2), "label": torch.tensor([0, 1, 2, 0])}
    evaluator.step(Module(2, 3), batch, "val")  # val is not saved: no index needed
    with pytest.raises(KeyError, match="batches have no 'index'.*predictions_dir=null"):
        evaluator.step(Module(2, 3), batch, "test")
