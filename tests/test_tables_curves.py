"""Learning curves of a table (``curve`` in a spec -> curves.png) from the runs' CSV logs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from crossdistill.tables.aggregate import SPEC_FILE, cell_dir, load_table
from crossdistill.tables.curves import cell_curve, read_curve
from crossdistill.tables.render import write_all
from crossdistill.tables.spec import parse_spec, spec_to_dict
from test_tables import write_run

SPEC = {
    "rows": {"no KD": {"experiment": "mfh/exp1"}, "KD": {"overrides": ["distill=kd"]}},
    "seeds": [0, 1],
    "metrics": ["test/acc"],
    "curve": {"key": "val/acc", "label": "val top-1 %", "scale": 100},
}


def _write_log(run_dir: Path, values: list[float]) -> None:
    """A CSV log as Lightning's CSVLogger writes it: val and train lines interleaved."""
    lines = ["epoch,step,train/loss,val/acc"]
    for epoch, value in enumerate(values):
        lines += [f"{epoch},{epoch * 3 + 2},,{value}", f"{epoch},{epoch * 3 + 2},0.5,"]
    (run_dir / "csv").mkdir(parents=True)
    (run_dir / "csv" / "metrics.csv").write_text("\n".join(lines) + "\n")


def test_read_curve_takes_the_logged_epochs_and_skips_empty_cells(tmp_path):
    _write_log(tmp_path, [0.5, 0.7, 0.75])
    assert read_curve(tmp_path, "val/acc") == {0: 0.5, 1: 0.7, 2: 0.75}
    assert read_curve(tmp_path, "val/eer") == {}
    assert read_curve(tmp_path / "missing", "val/acc") == {}


def test_spec_curve_round_trips_and_a_bad_curve_fails():
    spec = parse_spec(SPEC)
    assert spec.curve is not None and spec.curve.key == "val/acc" and spec.curve.scale == 100
    assert parse_spec(spec_to_dict(spec)).curve == spec.curve
    with pytest.raises(ValueError, match="unknown key"):
        parse_spec({**SPEC, "curve": {"key": "val/acc", "colour": "red"}})


def test_table_dir_with_a_curve_writes_curves_png_with_seed_means(tmp_path):
    spec = parse_spec(SPEC)
    (tmp_path / SPEC_FILE).write_text(yaml.safe_dump(spec_to_dict(spec), allow_unicode=True))
    curves = {("no KD", 0): [0.4, 0.6], ("no KD", 1): [0.6, 0.8, 0.9], ("KD", 0): [0.5, 0.7],
              ("KD", 1): [0.5, 0.9]}
    for (row, seed), values in curves.items():
        run_dir = cell_dir(tmp_path, row, "") / str(seed)
        write_run(run_dir, [f"seed={seed}"], {"test/acc": values[-1]})
        _write_log(run_dir, values)
    table = load_table([tmp_path])
    points = cell_curve(table, "no KD", "", "val/acc")
    # epoch 0: seeds 0.4, 0.6 -> mean 0.5, sample std sqrt(0.02); epoch 2: seed 1 only
    assert [(e, n) for e, _, _, n in points] == [(0, 2), (1, 2), (2, 1)]
    assert points[0][1] == pytest.approx(0.5) and points[0][2] == pytest.approx(math.sqrt(0.02))
    assert points[2][1] == pytest.approx(0.9)
    write_all(table, tmp_path)
    assert (tmp_path / "curves.png").stat().st_size > 10_000
