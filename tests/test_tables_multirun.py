"""Every multirun ends by printing its sweep dir and table; crossdistill-table prints the same."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

import crossdistill
from crossdistill.tables.callback import MultirunTable
from crossdistill.tables.cli import main as table_main
from test_tables import write_run

BIN = Path(sys.executable).parent
# the subprocess imports the same crossdistill as this test (also under a relative PYTHONPATH)
SRC = str(Path(crossdistill.__file__).resolve().parents[1])


def test_multirun_prints_sweep_dir_and_paired_table(tmp_path: Path, capsys):
    result = subprocess.run(
        [str(BIN / "crossdistill-train"), "-m", "experiment=mfh/exp1", "data.overlap=0,10",
         "seed=0,1", "trainer.max_epochs=3", "teacher.max_epochs=3", "data.n_test=200",
         f"paths.log_dir={tmp_path}", "print_config=false", "callbacks.epoch_progress_bar=null"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore",
             "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    (sweep,) = re.findall(r"multirun finished; sweep dir: (\S+)", out)
    assert f"multirun sweep dir: {sweep}" in out  # printed at the start too
    sweep_dir = Path(sweep)
    assert sweep_dir.parent == tmp_path / "mfh_exp1" / "multiruns"
    assert "| data.overlap=0 (baseline) |" in out
    assert "| row | Δ test/loss ↓ | Δ test/acc ↑ |" in out  # the paired-difference table
    assert re.search(r"\| data\.overlap=10 \| [+-]\d\.\d{3} \[[+-]\d\.\d{3}, [+-]\d\.\d{3}\] "
                     r"\(n=2\), (not )?resolved \|", out)
    printed = (sweep_dir / "table.md").read_text()
    assert printed in out
    assert table_main([sweep]) == 0
    assert printed in capsys.readouterr().out  # the aggregator alone prints the same table
    for name in ("table.csv", "table_summary.csv", "table.png"):
        assert (sweep_dir / name).stat().st_size > 0


def test_a_failed_job_still_gets_the_table_of_what_finished(tmp_path: Path, capsys):
    """Hydra ends a sweep with a failed job without calling on_multirun_end; the callback
    then prints the table of the finished runs at exit and does not raise."""
    write_run(tmp_path / "0", ["distill=none", "seed=0"], {"test/acc": 0.5})
    write_run(tmp_path / "1", ["distill=kd", "seed=0"], None)  # failed: no metrics.json
    callback = MultirunTable()
    callback.on_multirun_start(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    callback._at_exit()
    out = capsys.readouterr().out
    assert f"multirun ended early (a job failed); sweep dir: {tmp_path}" in out
    assert "| distill=none (baseline) | 0.500 (n=1) |" in out
    assert "Failed or unfinished runs (no metrics.json, left out): 1" in out
    callback._at_exit()  # once only
    assert capsys.readouterr().out == ""


def test_the_callback_never_fails_the_sweep(tmp_path: Path, capsys):
    callback = MultirunTable()
    callback.on_multirun_start(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    callback.on_multirun_end(OmegaConf.create({}))  # an empty sweep dir: no runs
    assert "not written (no runs found" in capsys.readouterr().out
