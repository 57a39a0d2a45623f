"""Table specs (conf/table/*.yaml) and the runner, with a fake crossdistill-train."""

from __future__ import annotations

import json
import math
import subprocess
import threading
from pathlib import Path

import pytest
import yaml

from crossdistill.tables import runner
from crossdistill.tables.cli import main
from crossdistill.tables.spec import (
    available_specs,
    load_spec,
    parse_spec,
    slug,
    spec_to_dict,
)
from crossdistill.utils.config import compose_config
from test_tables import write_run


def test_shipped_specs_parse_and_their_quick_parts_apply():
    assert {"c2kd", "text_image"} <= set(available_specs())
    c2kd = load_spec("c2kd")
    assert c2kd.baseline == "No KD" and c2kd.seeds == (0, 1, 2) and c2kd.jobs == 2
    assert [r.experiment for r in c2kd.rows][:3] == [
        "face_voice/no_kd", "face_voice/hard_l2", "face_voice/kd"]
    keys = [m.key for m in c2kd.metrics]
    assert {"test/eer_snr10", "test/eer_snr0", "teacher/test/eer"} <= set(keys)
    chances = {m.key: m.chance for m in c2kd.metrics}
    assert (chances["test/match_1of2"], chances["test/match_1of5"]) == (0.5, 0.2)
    assert parse_spec(spec_to_dict(c2kd)).metrics == c2kd.metrics  # what a table dir keeps
    quick = load_spec("c2kd", quick=True)
    assert quick.seeds == (0,) and "trainer.max_epochs=3" in quick.overrides
    text = load_spec("text_image", quick=True)
    assert [c.name for c in text.columns] == ["100 %", "10 %"]
    assert "trainer.max_epochs=45" in text.columns[1].overrides  # quick: 3 epochs x 15
    bootstrap = load_spec("text_image").paired_bootstrap
    assert bootstrap.unit == "sample" and bootstrap.metrics == ("test/acc",)


@pytest.mark.parametrize("name", available_specs())
def test_every_row_and_column_of_a_shipped_spec_composes(name):
    spec = load_spec(name)
    for row in spec.rows:
        for column in spec.columns:
            cfg = compose_config("train", [*row.train_overrides, *column.overrides,
                                           *spec.overrides, *runner.QUIET])
            assert cfg.seed == 0
    for _, row, column, seed, run_dir in runner.teacher_jobs(spec, Path("/nonexistent")):
        command = runner.teacher_command(spec, row, column, seed, run_dir, runner.QUIET)
        cfg = compose_config("train", [a for a in command[3:] if not a.startswith("hydra.")])
        assert cfg.stop_after == "teacher" and cfg.seed == seed


def _steps(cfg, fraction: float) -> int:
    """Optimiser steps per epoch of the text-image loader on a stratified fraction."""
    n = int(cfg.data.synth.num_classes) * max(1, round(fraction * cfg.data.synth.train_per_class))
    return n // int(cfg.data.batch_size) if n > int(cfg.data.batch_size) else 1


def test_text_image_columns_match_the_optimiser_steps_of_the_full_data():
    """The fractions train for about as many steps as the 100 % column (student and
    teacher alike); the lists must be updated when the data or batch size changes."""
    cfg = compose_config("train", ["experiment=text_image/c2kd"])
    for quick in (False, True):
        spec = load_spec("text_image", quick=quick)
        epochs = {c.name: dict(o.split("=") for o in c.overrides) for c in spec.columns}
        full = epochs["100 %"]
        for column, fraction in (("10 %", 0.1),):
            got = epochs[column]
            assert float(got["data.train_fraction"]) == fraction
            scale = _steps(cfg, 1.0) / _steps(cfg, fraction)
            for key in ("trainer.max_epochs", "teacher.max_epochs"):
                assert int(got[key]) == math.ceil(int(full[key]) * scale), (quick, column, key)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": 1}, "unknown key(s) ['colour']; valid:"),
        ({"baseline": "nope"}, "baseline 'nope' is not a row; rows: ['A', 'B']"),
        ({"seeds": [0, "x"]}, "seeds must be a non-empty list of integers"),
        ({"jobs": 0}, "jobs must be an integer >= 1, got 0"),
        ({"paired_metrics": ["test/eer"]}, "paired_metrics ['test/eer'] are not among metrics"),
        ({"rows": {"A": {"experimnt": "x"}}}, "rows.A: expected a mapping with keys"),
        ({"metrics": [{"key": "test/acc", "scael": 1}]}, "unknown key(s) ['scael']"),
        ({"metrics": [{"key": "test/acc", "chance": "half"}]},
         "chance of test/acc must be a number, got 'half'"),
        ({"teachers": ["C"]}, "teachers must be a list of row names (rows whose teacher is "
                              "trained before the cells) among ['A', 'B'], got ['C']"),
    ],
)
def test_bad_specs_fail_naming_the_key(change, message):
    data = {"rows": {"A": {"experiment": "mfh/exp1"}, "B": {"overrides": ["distill=none"]}},
            "metrics": ["test/acc"], **change}
    with pytest.raises(ValueError) as err:
        parse_spec(data, source="my_spec.yaml")
    assert str(err.value).startswith("my_spec.yaml: ") and message in str(err.value)


def test_unknown_spec_lists_the_shipped_ones():
    with pytest.raises(FileNotFoundError, match=r"shipped specs: \[.*'c2kd'"):
        load_spec("nope")


SPEC = {
    "title": "tiny table",
    "rows": {"no KD": {"experiment": "mfh/exp1", "overrides": ["distill=none"]},
             "KD": {"experiment": "mfh/exp1"}},
    "seeds": [0, 1, 2],
    "jobs": 2,
    "metrics": ["test/acc"],
    "overrides": ["trainer.max_epochs=3"],
    "column_axis": "overlap",
    "columns": {"γ=0": ["data.overlap=0"], "γ=1": ["data.overlap=10"]},
}
ACC = {("no KD", 0): [0.50, 0.80, 0.65], ("KD", 0): [0.51, 0.78, 0.69],
       ("no KD", 10): [0.6, 0.6, 0.6], ("KD", 10): [0.7, 0.7, 0.7]}


def fake_train(commands: list[list[str]], fail: str | None = None,
               together: threading.Barrier | None = None):
    """Stands in for ``crossdistill-train -m``: writes one run dir per seed of the sweep.
    ``together``: the first cells wait there for each other (fails if run one by one)."""
    def run(cmd, **kwargs):
        commands.append(cmd)
        if together is not None and len(commands) <= together.parties:
            together.wait()
        args = dict(a.split("=", 1) for a in cmd if "=" in a)
        row = "no KD" if "distill=none" in cmd else "KD"
        overlap = int(args["data.overlap"])
        for job, seed in enumerate(int(s) for s in args["seed"].split(",")):
            failed = fail == row and seed == 2
            metrics = None if failed else {"test/acc": ACC[(row, overlap)][seed]}
            overrides = [a for a in cmd if "=" in a and not a.startswith(("hydra", "seed"))]
            write_run(Path(args["hydra.sweep.dir"]) / str(job), [*overrides, f"seed={seed}"],
                      metrics)
        return subprocess.CompletedProcess(cmd, 1 if fail == row else 0)
    return run


def test_runner_runs_each_cell_as_one_multirun_and_writes_the_table(tmp_path, monkeypatch,
                                                                    capsys):
    spec_file = tmp_path / "tiny.yaml"
    spec_file.write_text(yaml.safe_dump(SPEC, allow_unicode=True, sort_keys=False))
    commands: list[list[str]] = []
    # jobs: 2 -> two cells at once (each waits at the barrier for the other), seeds in turn
    together = threading.Barrier(2, timeout=10)
    monkeypatch.setattr(runner.subprocess, "run", fake_train(commands, together=together))
    out = tmp_path / "table"
    assert main(["run", str(spec_file), "--out", str(out), "paths.data_dir=/x"]) == 0
    assert len(commands) == 4  # 2 rows x 2 columns, each over the 3 seeds
    first = next(c for c in commands if f"hydra.sweep.dir={out / 'no_kd' / slug('γ=0')}" in c)
    assert first[first.index("-m", 2):][:4] == ["-m", "experiment=mfh/exp1", "distill=none",
                                                 "data.overlap=0"]
    assert "seed=0,1,2" in first and "paths.data_dir=/x" in first
    # the cells run their seeds in turn, except the last to start: no worker idles at the end
    parallel = [c for c in commands if "hydra/launcher=joblib" in c]
    assert len(parallel) == 1 and parallel[0] not in commands[:2]
    assert parallel[0][-1] == "hydra.launcher.n_jobs=2"
    # cells side by side start on different seeds (each trains its own seed's teacher)
    orders = sorted(next(a for a in c if a.startswith("seed=")) for c in commands)
    assert orders == ["seed=0,1,2", "seed=0,1,2", "seed=1,2,0", "seed=2,0,1"]
    text = (out / "table.md").read_text()
    assert "| row | test/acc ↑ (γ=0) | test/acc ↑ (γ=1) |" in text
    assert "| no KD (baseline) | 0.650 ± 0.150 (n=3) | 0.600 ± 0.000 (n=3) |" in text
    # KD − no KD at γ=0: +0.01, -0.02, +0.04 (t-interval by hand in test_tables.py);
    # at γ=1: +0.1 on every seed, an interval of zero width: resolved
    assert "| KD | +0.010 [-0.065, +0.085] (n=3), not resolved | +0.100 [+0.100, +0.100] " \
           "(n=3), resolved |" in text
    assert text in capsys.readouterr().out
    assert main([str(out)]) == 0  # the aggregator alone reads the table dir by its spec
    assert text in capsys.readouterr().out
    # an existing table dir resumes: finished cells are not run again
    assert main(["run", str(spec_file), "--out", str(out)]) == 0
    assert len(commands) == 4


def test_runner_reports_failed_runs_and_still_writes_the_table(tmp_path, monkeypatch, capsys):
    spec_file = tmp_path / "tiny.yaml"
    spec_file.write_text(yaml.safe_dump({**SPEC, "jobs": 1}, allow_unicode=True, sort_keys=False))
    commands: list[list[str]] = []
    monkeypatch.setattr(runner.subprocess, "run", fake_train(commands, fail="KD"))
    out = tmp_path / "table"
    assert main(["run", str(spec_file), "--out", str(out), "--rows", "KD", "--seeds", "0",
                 "1", "2"]) == 1
    assert "hydra/launcher=joblib" not in commands[0]  # one job at a time: basic launcher
    printed = capsys.readouterr().out
    assert "KD (γ=0): 2/3 runs finished" in printed and "FAILED: see" in printed
    text = (out / "table.md").read_text()
    assert "| KD | 0.645 ± 0.191 (n=2) |" in text  # seeds 0 and 1 of KD at γ=0
    assert "Failed or unfinished runs (no metrics.json, left out): 2" in text


def test_a_rerun_resumes_killed_runs_and_redoes_nothing_finished(tmp_path, monkeypatch,
                                                                 capsys):
    """Seed 2 of both KD cells and the teacher of seed 1 were killed (run dirs with
    config.yaml, no metrics.json): the re-run resumes exactly those from their run dirs, as
    single runs, and does not run a finished seed or cell again."""
    spec_file = tmp_path / "tiny.yaml"
    spec_file.write_text(yaml.safe_dump({**SPEC, "jobs": 1, "teachers": ["KD"]},
                                        allow_unicode=True, sort_keys=False))
    out = tmp_path / "table"
    first: list[list[str]] = []
    cells = fake_train(first, fail="KD")

    def killed_teacher_of_seed_1(cmd, **kwargs):
        if "stop_after=teacher" not in cmd:
            return cells(cmd, **kwargs)
        first.append(cmd)
        run_dir = Path(next(a for a in cmd if a.startswith("hydra.run.dir=")).split("=", 1)[1])
        seed = next(a for a in cmd if a.startswith("seed="))
        write_run(run_dir, [seed], None if seed == "seed=1" else {})
        return subprocess.CompletedProcess(cmd, 0 if "seed=1" not in cmd else -9)

    monkeypatch.setattr(runner.subprocess, "run", killed_teacher_of_seed_1)
    assert main(["run", str(spec_file), "--out", str(out), "--rows", "KD"]) == 1
    assert len(first) == 3 + 4  # 3 teachers; 2 rows (the baseline always runs) x 2 columns
    kd_cells = [out / "kd" / slug("γ=0"), out / "kd" / slug("γ=1")]
    seed_2_dirs = [next(d for d in cell.iterdir() if yaml.safe_load(
        (d / "config.yaml").read_text())["seed"] == 2) for cell in kd_cells]

    again: list[list[str]] = []

    def finish(cmd, **kwargs):
        again.append(cmd)
        run_dir = Path(cmd[-1].split("=", 1)[1])
        (run_dir / "metrics.json").write_text(json.dumps({"student": {"test/acc": 0.7}}))
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(runner.subprocess, "run", finish)
    assert main(["run", str(spec_file), "--out", str(out), "--rows", "KD"]) == 0
    resumed = sorted(c[-1] for c in again)
    assert resumed == sorted([f"resume={out / '_teachers' / 'kd' / '1'}",
                              *(f"resume={d}" for d in seed_2_dirs)])
    assert all(c[1:3] == ["-m", "crossdistill.train"] and len(c) == 4 for c in again)
    teacher_log = (out / "logs" / "_teachers__kd__1.log").read_text()
    assert "stop_after=teacher" in teacher_log.splitlines()[0]  # the killed attempt's log kept
    assert f"resume={out / '_teachers' / 'kd' / '1'}" in teacher_log
    assert "KD (γ=0): 3/3 runs finished" in capsys.readouterr().out
    assert main(["run", str(spec_file), "--out", str(out), "--rows", "KD"]) == 0
    assert len(again) == 3  # everything finished: nothing runs


def test_unfinished_seed_commands_resume_started_seeds_and_start_missing_ones(tmp_path):
    spec = parse_spec(SPEC, "tiny")
    row, column = spec.row("KD"), spec.columns[0]
    sweep = tmp_path / "cell"
    write_run(sweep / "0", ["seed=1"], {"test/acc": 0.5})   # finished
    write_run(sweep / "1", ["seed=2"], None)                 # killed
    write_run(sweep / "2", ["seed=1"], None)                 # an older, unfinished seed-1 run
    commands = runner.unfinished_seed_commands(spec, row, column, sweep, ["paths.data_dir=/x"])
    assert len(commands) == 2
    fresh, resume = commands
    assert fresh[-2:] == ["seed=0", f"hydra.run.dir={sweep / '3'}"]  # next free job number
    assert "-m" not in fresh[2:] and "experiment=mfh/exp1" in fresh and "data.overlap=0" in fresh
    assert "paths.data_dir=/x" in fresh and "trainer.max_epochs=3" in fresh
    assert resume[1:] == ["-m", "crossdistill.train", f"resume={sweep / '1'}"]
    # killed before its config.yaml was saved: nothing to resume, started again in its dir
    (sweep / "1" / "config.yaml").unlink()
    assert runner.unfinished_seed_commands(spec, row, column, sweep)[1][-2:] == [
        "seed=2", f"hydra.run.dir={sweep / '1'}"]


def test_spec_teachers_are_trained_first_one_job_per_seed_columns_in_turn(tmp_path,
                                                                          monkeypatch):
    spec_file = tmp_path / "tiny.yaml"
    spec_file.write_text(yaml.safe_dump({**SPEC, "teachers": ["KD"]}, allow_unicode=True,
                                        sort_keys=False))
    commands: list[list[str]] = []
    cells = fake_train(commands)
    ran_before_first_cell: list[int] = []

    def run(cmd, **kwargs):
        if "stop_after=teacher" not in cmd:
            ran_before_first_cell.append(sum("stop_after=teacher" in c for c in commands))
            return cells(cmd, **kwargs)
        commands.append(cmd)
        run_dir = Path(next(a for a in cmd if a.startswith("hydra.run.dir=")).split("=", 1)[1])
        run_dir.mkdir(parents=True)
        (run_dir / "metrics.json").write_text("{}")
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(runner.subprocess, "run", run)
    out = tmp_path / "table"
    assert main(["run", str(spec_file), "--out", str(out)]) == 0
    def seed_of(cmd: list[str]) -> str:
        return next(a for a in cmd if a.startswith("seed="))

    # two workers start teachers at once, so their commands arrive in either order: by seed
    teacher_cmds = sorted((c for c in commands if "stop_after=teacher" in c), key=seed_of)
    assert [c[3:6] for c in teacher_cmds] == [  # the KD row, one column after the other
        ["experiment=mfh/exp1", "data.overlap=0", "trainer.max_epochs=3"],
        ["experiment=mfh/exp1", "data.overlap=10", "trainer.max_epochs=3"],
        ["experiment=mfh/exp1", "data.overlap=0", "trainer.max_epochs=3"]]
    assert [seed_of(c) for c in teacher_cmds] == ["seed=0", "seed=1", "seed=2"]
    assert f"hydra.run.dir={out / '_teachers' / 'kd' / '2'}" in teacher_cmds[2]
    assert ran_before_first_cell[0] >= 2  # both workers began with a teacher
    assert len(commands) == 3 + 4
    assert "| KD |" in (out / "table.md").read_text()  # _teachers is not a row
    # a re-run finds the teachers trained (and the cells finished): nothing runs again
    assert main(["run", str(spec_file), "--out", str(out)]) == 0
    assert len(commands) == 3 + 4


def test_a_single_cell_runs_its_seeds_in_parallel(tmp_path, monkeypatch):
    spec_file = tmp_path / "tiny.yaml"
    one_column = {**SPEC, "columns": {"γ=0": ["data.overlap=0"]}}
    spec_file.write_text(yaml.safe_dump(one_column, allow_unicode=True, sort_keys=False))
    commands: list[list[str]] = []
    monkeypatch.setattr(runner.subprocess, "run", fake_train(commands))
    assert main(["run", str(spec_file), "--out", str(tmp_path / "t"), "--rows", "no KD"]) == 0
    assert len(commands) == 1
    assert commands[0][-2:] == ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    # one seed: nothing to run side by side, no joblib worker to start
    assert main(["run", str(spec_file), "--out", str(tmp_path / "t1"), "--rows", "no KD",
                 "--seeds", "0"]) == 0
    assert "hydra/launcher=joblib" not in commands[1]


def test_runner_rejects_unknown_rows(tmp_path):
    assert main(["run", "c2kd", "--rows", "nope", "--out", str(tmp_path)]) == 2


@pytest.mark.slow
def test_runner_end_to_end_cells_in_parallel_share_each_teacher(tmp_path, capsys):
    """Three rows x two seeds of MFH exp1, two cells at a time, real training: the two KD
    rows run at once and need the same teachers; each teacher is trained once (the other
    cell waits for it and reuses it). Then one row alone: its seeds run in parallel."""
    spec = {"rows": {"KD": {"experiment": "mfh/exp1"},
                     "KD T=2": {"experiment": "mfh/exp1",
                                "overrides": ["distill.kd.temperature=2"]},
                     "no KD": {"experiment": "mfh/exp1", "overrides": ["distill=none"]}},
            "baseline": "no KD", "seeds": [0, 1], "jobs": 2,
            "metrics": ["test/acc", "teacher/test/acc"],
            "overrides": ["trainer.max_epochs=3", "teacher.max_epochs=3",
                          "callbacks.epoch_progress_bar=null"]}
    spec_file = tmp_path / "tiny.yaml"
    spec_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    out = tmp_path / "table"
    assert main(["run", str(spec_file), "--out", str(out), f"paths.log_dir={tmp_path}"]) == 0
    text = (out / "table.md").read_text()
    assert "| no KD (baseline) |" in text and "(n=2)" in text
    assert "| row | Δ test/acc ↑ |" in text  # the teacher metric is not paired by default
    sources = {  # by seed: the two cells run their seeds in different orders
        row: {yaml.safe_load((job / "config.yaml").read_text())["seed"]:
              json.loads((job / "teacher" / "source.json").read_text())["source"]
              for job in (out / row / "0", out / row / "1")}
        for row in ("kd", "kd_t_2")}
    for seed in (0, 1):
        trained = [row for row in sources if sources[row][seed] == "trained in this run"]
        assert len(trained) == 1, sources  # the other row reused the cached teacher
    lone = tmp_path / "lone"
    assert main(["run", str(spec_file), "--out", str(lone), f"paths.log_dir={tmp_path}",
                 "--rows", "no KD"]) == 0
    assert "Joblib.Parallel(n_jobs=2" in (lone / "logs" / "no_kd.log").read_text()


@pytest.mark.slow
def test_runner_resumes_an_unfinished_run_for_real(tmp_path, capsys):
    """Real MFH runs: a finished run whose metrics.json is removed looks like one killed
    after its last checkpoint; the re-run resumes it (``resume=<job dir>``), retrains
    nothing and writes the same test metrics; the other seed is not run again."""
    spec = {"rows": {"no KD": {"experiment": "mfh/exp1", "overrides": ["distill=none"]}},
            "seeds": [0, 1], "jobs": 1, "metrics": ["test/acc"],
            "overrides": ["trainer.max_epochs=3", "callbacks.epoch_progress_bar=null"]}
    spec_file = tmp_path / "tiny.yaml"
    spec_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    out = tmp_path / "table"
    args = ["run", str(spec_file), "--out", str(out), f"paths.log_dir={tmp_path}"]
    assert main(args) == 0
    killed, other = out / "no_kd" / "1", out / "no_kd" / "0"
    before = json.loads((killed / "metrics.json").read_text())["student"]
    other_mtime = (other / "metrics.json").stat().st_mtime_ns
    (killed / "metrics.json").unlink()
    assert main(args) == 0
    log = (out / "logs" / "no_kd.log").read_text()
    assert f"crossdistill.train resume={killed}" in log
    assert "resume: student stage from" in log and "last.ckpt" in log
    after = json.loads((killed / "metrics.json").read_text())["student"]
    assert after["test/acc"] == before["test/acc"] and after["test/loss"] == before["test/loss"]
    assert (other / "metrics.json").stat().st_mtime_ns == other_mtime
    assert "(n=2)" in (out / "table.md").read_text()


@pytest.mark.slow
def test_text_image_spec_end_to_end_tiny(tmp_path):
    """Two rows of the shipped text -> image spec on tiny data, two training fractions."""
    from conftest import TINY_TEXT_IMAGE

    spec = yaml.safe_load(Path(load_spec("text_image").source).read_text())
    spec["rows"] = {"no KD": spec["rows"]["no KD"],
                    "both (C2KD)": {**spec["rows"]["both (C2KD)"],
                                    "overrides": ["projection.hidden_dim=8"]}}
    spec["columns"] = {
        "100 %": ["data.train_fraction=1.0", "trainer.max_epochs=1", "teacher.max_epochs=1"],
        "50 %": ["data.train_fraction=0.5", "trainer.max_epochs=2", "teacher.max_epochs=2"],
    }
    spec.pop("quick")
    spec.update(seeds=[0, 1], jobs=1)
    spec_file = tmp_path / "text_image.yaml"
    spec_file.write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
    out = tmp_path / "out"
    # the runner adds its own progress-bar overrides (QUIET): leave out the fixture's
    tiny = [*TINY_TEXT_IMAGE[:-2], f"paths.data_dir={tmp_path / 'data'}",
            f"paths.log_dir={tmp_path}"]
    assert main(["run", str(spec_file), "--out", str(out), *tiny]) == 0
    text = (out / "table.md").read_text()
    assert text.count("| both (C2KD) |") == 2  # the results table and the paired table
    assert "| row | Δ top-1 % ↑ (100 %) | Δ top-1 % ↑ (50 %) |" in text
    assert "(n=2)" in text and (out / "table.png").stat().st_size > 0


def test_column_contrast_compares_the_paired_differences_of_two_columns(tmp_path, monkeypatch):
    spec_file = tmp_path / "tiny.yaml"
    spec = {**SPEC, "column_contrast": ["γ=1", "γ=0"]}
    spec_file.write_text(yaml.safe_dump(spec, allow_unicode=True, sort_keys=False))
    monkeypatch.setattr(runner.subprocess, "run", fake_train([]))
    out = tmp_path / "table"
    assert main(["run", str(spec_file), "--out", str(out)]) == 0
    text = (out / "table.md").read_text()
    # KD − no KD per seed: γ=0 +0.01, -0.02, +0.04; γ=1 +0.1 each -> ΔΔ 0.09, 0.12, 0.06:
    # mean 0.09, sample sd 0.03, half-width t(0.975, 2) * 0.03 / sqrt(3) = 0.0745
    half = 4.302653 * 0.03 / math.sqrt(3)
    assert "ΔΔ = Δ at `γ=1` − Δ at `γ=0`" in text
    assert f"| KD | +0.090 [{0.09 - half:+.3f}, {0.09 + half:+.3f}] (n=3), resolved |" in text
    with pytest.raises(ValueError, match="column_contrast must name two different columns"):
        parse_spec({**SPEC, "column_contrast": ["γ=1", "γ=2"]})


def test_a_rerun_with_other_rows_adds_them_to_the_table_dir(tmp_path, monkeypatch):
    # rows added to a table dir by a later `--rows` run must not hide the earlier ones
    three_rows = {**SPEC, "columns": {"γ=0": ["data.overlap=0"]},
                  "rows": {**SPEC["rows"], "KD x2": {"experiment": "mfh/exp1",
                                                     "overrides": ["distill.kd.weight=2"]}}}
    spec_file = tmp_path / "tiny.yaml"
    spec_file.write_text(yaml.safe_dump(three_rows, allow_unicode=True, sort_keys=False))
    commands: list[list[str]] = []
    monkeypatch.setattr(runner.subprocess, "run", fake_train(commands))
    out = tmp_path / "table"
    assert main(["run", str(spec_file), "--out", str(out), "--rows", "KD x2"]) == 0
    assert main(["run", str(spec_file), "--out", str(out), "--rows", "KD"]) == 0
    assert len(commands) == 3  # no KD, KD x2, then KD: nothing ran twice
    assert list(yaml.safe_load((out / "table.yaml").read_text())["rows"]) == [
        "no KD", "KD", "KD x2"]  # the spec's order
    text = (out / "table.md").read_text()
    assert "| KD |" in text and "| KD x2 |" in text


def test_a_rerun_into_a_dir_with_a_broken_table_yaml_names_the_file(tmp_path, capsys):
    (tmp_path / "table.yaml").write_text("rows: [1, 2]\nmetrics: [x]\n")
    assert main(["run", "c2kd", "--rows", "c2kd", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'table.yaml'}: rows must be a non-empty mapping" in err
    assert not (tmp_path / "command.txt").exists()  # nothing written before the error
