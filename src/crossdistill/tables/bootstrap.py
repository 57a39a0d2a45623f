"""Paired differences bootstrapped over test units and seeds (the spec key
``paired_bootstrap``; docs/tables.md, "Speaker bootstrap" and "Sample bootstrap").

``unit: speaker``: verification metrics from the runs' saved trial scores
(``<run dir>/scores/<split>.npz``, :mod:`crossdistill.metrics.trial_scores`), resampled
by :mod:`crossdistill.analysis.speaker_bootstrap`. ``unit: sample``: accuracies from the
runs' saved predictions (``<run dir>/predictions/<split>.npz``,
:mod:`crossdistill.metrics.predictions`), resampled by
:mod:`crossdistill.analysis.sample_bootstrap`. A cell whose runs have no usable saved
file (none saved, or one that does not give the run's logged metric) keeps the t
interval over seeds, and the table says so in a note.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from crossdistill.analysis.sample_bootstrap import (
    SampleRun,
    bootstrap_accuracies,
    sample_list_key,
)
from crossdistill.analysis.speaker_bootstrap import (
    BootstrapDifference,
    MetricDraws,
    RunScores,
    TrialList,
    bootstrap_runs,
    paired_bootstrap,
)
from crossdistill.metrics.predictions import (
    Predictions,
    load_predictions,
    parse_accuracy_metric,
    predictions_path,
)
from crossdistill.metrics.trial_scores import (
    TrialScores,
    load_trial_scores,
    parse_metric,
    scores_path,
)

if TYPE_CHECKING:
    from crossdistill.tables.collect import Run
    from crossdistill.tables.table import Table

BOOTSTRAP_KEYS = {"metrics", "unit", "draws", "seed", "confidence"}
UNITS = ("speaker", "sample")
#: how a cell names its unit count: ``(n=3, 300 spk)``
UNIT_LABELS = {"speaker": "spk", "sample": "samples"}
#: what a run saves for each unit, as the notes name it
SAVED = {"speaker": "scores", "sample": "predictions"}


class TestedOn(NamedTuple):
    """The list a run was tested on: its key (equal keys = the same trials / samples) and
    how many units (speakers / samples) it has."""

    key: str
    units: int


def parse_unit_metric(unit: str, metric: str) -> tuple[str, str, str]:
    """``(split, kind, pass)`` of a bootstrapped metric: ``test/eer_snr10`` ->
    ``("test", "eer", "snr10")`` (speakers), ``test/acc_top5`` -> ``("test", "top5", "")``
    (samples). A metric the unit cannot bootstrap raises."""
    if unit == "sample":
        split, k = parse_accuracy_metric(metric)
        return split, f"top{k}", ""
    return parse_metric(metric)


@dataclass(frozen=True)
class BootstrapSpec:
    """Which paired metrics get the bootstrap interval, and how it is drawn."""

    metrics: tuple[str, ...]
    unit: str = "speaker"
    draws: int = 2000
    seed: int = 0
    confidence: float = 0.95

    def to_dict(self) -> dict[str, Any]:
        return {
            "metrics": list(self.metrics),
            "unit": self.unit,
            "draws": self.draws,
            "seed": self.seed,
            "confidence": self.confidence,
        }

    def rule(self) -> str:
        """How the interval was computed (the table's footnote)."""
        if self.unit == "sample":
            return (
                f"{self.confidence * 100:g} % percentile interval of {self.draws} bootstrap "
                f"draws (seed {self.seed}); each draw resamples the test samples with "
                "replacement (the same draw for every run tested on the same samples) and "
                "the seeds (with replacement, the same seeds for both rows), and takes the "
                "mean over the drawn seeds of row − baseline; the point is the mean of the "
                "per-seed differences; samples = test samples per seed; with n=1 the "
                "interval covers the samples only; a cell marked `t interval` had no usable "
                "saved predictions (see the notes) and shows the t interval over seeds"
            )
        return (
            f"{self.confidence * 100:g} % percentile interval of {self.draws} bootstrap draws "
            f"(seed {self.seed}); each draw resamples the test speakers with replacement (a "
            "target trial counts as often as its speaker was drawn, a non-target trial as the "
            "product of its two speakers' counts; the same draw for every run tested on the "
            "same trial list) and the seeds (with replacement, the same seeds for both rows), "
            "and takes the mean over the drawn seeds of row − baseline; the point is the mean "
            "of the per-seed differences; spk = test speakers per seed; with n=1 the interval "
            "covers the speakers only; a cell marked `t interval` had no usable saved scores "
            "(see the notes) and shows the t interval over seeds"
        )


def parse_bootstrap(data: Any, paired_keys: list[str], source: str) -> BootstrapSpec:
    """The ``paired_bootstrap`` mapping of a spec; each error names the key and the value."""
    if not isinstance(data, dict):
        raise ValueError(
            f"{source}: paired_bootstrap must be a mapping with keys "
            f"{sorted(BOOTSTRAP_KEYS)}, got {data!r}"
        )
    unknown = set(data) - BOOTSTRAP_KEYS
    if unknown:
        raise ValueError(
            f"{source}: paired_bootstrap: unknown key(s) {sorted(unknown)}; valid: "
            f"{sorted(BOOTSTRAP_KEYS)}"
        )
    metrics = data.get("metrics")
    if not isinstance(metrics, list) or not metrics:
        raise ValueError(
            f"{source}: paired_bootstrap.metrics must be a non-empty list of paired "
            f"metrics {paired_keys}, got {metrics!r}"
        )
    for metric in metrics:
        if metric not in paired_keys:
            raise ValueError(
                f"{source}: paired_bootstrap.metrics: {metric!r} is not among the "
                f"paired metrics {paired_keys}"
            )
    unit = data.get("unit", "speaker")
    if unit not in UNITS:
        raise ValueError(f"{source}: paired_bootstrap.unit {unit!r}; valid: {list(UNITS)}")
    for metric in metrics:
        try:
            parse_unit_metric(unit, str(metric))
        except ValueError as err:
            raise ValueError(f"{source}: paired_bootstrap.metrics (unit {unit}): {err}") from None
    draws, seed = data.get("draws", 2000), data.get("seed", 0)
    if not isinstance(draws, int) or draws < 1:
        raise ValueError(f"{source}: paired_bootstrap.draws must be an integer >= 1, got {draws!r}")
    if not isinstance(seed, int):
        raise ValueError(f"{source}: paired_bootstrap.seed must be an integer, got {seed!r}")
    confidence = data.get("confidence", 0.95)
    if not isinstance(confidence, int | float) or not 0 < confidence < 1:
        raise ValueError(
            f"{source}: paired_bootstrap.confidence must be in (0, 1), got {confidence!r}"
        )
    return BootstrapSpec(tuple(str(m) for m in metrics), str(unit), draws, seed, float(confidence))


class TableBootstrap:
    """The bootstrap intervals of one table: every run's draws computed once, on first use
    (all runs on one trial list together), then paired per (row, column, metric)."""

    def __init__(self, spec: BootstrapSpec, table: Table) -> None:
        self.spec = spec
        self.table = table
        self.notes: list[str] = []
        self._draws: dict[tuple[Path, str], MetricDraws] | None = None
        #: (run dir, split|pass) -> (key of the list tested on, speakers / samples in it)
        self._lists: dict[tuple[Path, str], TestedOn] = {}
        #: (run dir, metric) -> why that run's scores cannot be used for that metric
        self._unusable: dict[tuple[Path, str], str] = {}
        self._results: dict[tuple[str, str, str], BootstrapDifference | None] = {}

    def _note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def _load(self, run: Run, split: str, cache: dict) -> tuple[Any, str]:
        """A run's saved scores (speakers) or predictions (samples) of ``split``, read
        once, or ``None`` and why not."""
        if (run.path, split) not in cache:
            what = SAVED[self.spec.unit]
            if self.spec.unit == "sample":
                path, load = predictions_path(run.path, split), load_predictions
            else:
                path, load = scores_path(run.path, split), load_trial_scores
            try:
                found = (load(path), "") if path.is_file() else (None, f"no saved {what} {path}")
            except (OSError, ValueError) as err:
                found = (None, f"unreadable {what} {path} ({err})")
            cache[(run.path, split)] = found
        return cache[(run.path, split)]

    def _finished_runs(self) -> list[Run]:
        return [r for r in self.table.all_runs() if not r.failed and r.seed is not None]

    def _prepare(self) -> dict[tuple[Path, str], MetricDraws]:
        """Draws of every finished run for every bootstrapped metric's pass."""
        if self._draws is None:
            if self.spec.unit == "sample":
                self._prepare_samples()
            else:
                self._prepare_speakers()
            self._check_points()
        return self._draws

    def _prepare_speakers(self) -> None:
        files: dict[tuple[Path, str], tuple[TrialScores | None, str]] = {}
        inputs: dict[str, RunScores] = {}
        names: dict[str, tuple[Path, str]] = {}
        for run in self._finished_runs():
            for metric in self.spec.metrics:
                split, _, pass_name = parse_metric(metric)
                scores, why = self._load(run, split, files)
                if scores is not None and pass_name not in scores.scores:
                    scores, why = None, f"{scores.path} has no scores of pass {pass_name!r}"
                if scores is not None and len(set(scores.label.tolist())) < 2:
                    scores, why = None, f"{scores.path} holds no target + non-target trials"
                if scores is None:
                    self._unusable[(run.path, metric)] = why
                    continue
                key = f"{run.path}|{split}|{pass_name}"
                trials = TrialList.of(
                    scores.trial,
                    scores.label,
                    scores.enroll_speaker,
                    scores.test_speaker,
                    [str(s) for s in scores.speakers],
                )
                inputs[key] = RunScores(
                    trials, scores.scores[pass_name], scores.p_target, scores.c_miss, scores.c_fa
                )
                names[key] = (run.path, f"{split}|{pass_name}")
        draws = bootstrap_runs(inputs, self.spec.draws, self.spec.seed)
        self._draws = {names[k]: v for k, v in draws.items()}
        self._lists = {
            names[k]: TestedOn(v.trials.key, len(v.trials.speakers)) for k, v in inputs.items()
        }

    def _prepare_samples(self) -> None:
        files: dict[tuple[Path, str], tuple[Predictions | None, str]] = {}
        inputs: dict[str, SampleRun] = {}
        names: dict[str, tuple[Path, str]] = {}
        for run in self._finished_runs():
            for metric in self.spec.metrics:
                split, k = parse_accuracy_metric(metric)
                kind = f"top{k}"
                found, why = self._load(run, split, files)
                if found is not None and k > found.top.shape[1]:
                    found, why = None, f"{found.path} holds the top {found.top.shape[1]} classes"
                if found is None:
                    self._unusable[(run.path, metric)] = why
                    continue
                key = f"{run.path}|{split}|"
                if key not in inputs:
                    inputs[key] = SampleRun(
                        sample_list_key(found.index, found.label), len(found.index), {}
                    )
                inputs[key].correct[kind] = found.correct(k)
                names[key] = (run.path, f"{split}|")
        draws = bootstrap_accuracies(inputs, self.spec.draws, self.spec.seed)
        self._draws = {names[k]: v for k, v in draws.items()}
        self._lists = {names[k]: TestedOn(v.key, v.size) for k, v in inputs.items()}

    def _check_points(self) -> None:
        """A run whose saved scores / predictions do not give its logged metric
        (re-tested with another checkpoint?) is not bootstrapped."""
        for run in self.table.all_runs():
            for metric in self.spec.metrics:
                split, kind, pass_name = parse_unit_metric(self.spec.unit, metric)
                found = self._draws.get((run.path, f"{split}|{pass_name}"))
                logged = run.metrics.get(metric)
                if found is None or logged is None or kind not in found.point:
                    continue
                recomputed = found.point[kind]
                if not math.isclose(recomputed, logged, rel_tol=1e-6, abs_tol=1e-7):
                    what = SAVED[self.spec.unit]
                    self._unusable[(run.path, metric)] = (
                        f"its saved {what} give {metric} = {recomputed:.6g}, metrics.json has "
                        f"{logged:.6g} ({what} of another test?)"
                    )

    def _runs_by_seed(self, row: str, column: str, metric: str) -> dict[int, Run]:
        return {
            r.seed: r
            for r in self.table.cell_runs(row, column)
            if r.seed is not None and metric in r.metrics
        }

    def paired(self, row: str, column: str, metric: str) -> BootstrapDifference | None:
        """The bootstrap difference ``row - baseline``; ``None`` (the caller keeps the t
        interval, a note says why) when a paired run has no usable scores."""
        key = (row, column, metric)
        if key not in self._results:
            self._results[key] = self._compute(row, column, metric)
        return self._results[key]

    def _compute(self, row: str, column: str, metric: str) -> BootstrapDifference | None:
        draws = self._prepare()
        split, kind, pass_name = parse_unit_metric(self.spec.unit, metric)
        ours = self._runs_by_seed(row, column, metric)
        base = self._runs_by_seed(self.table.baseline, column, metric)
        seeds = sorted(ours.keys() & base.keys())
        where = f"{row} ({column})" if column else row
        if not seeds:
            return None
        pass_key = f"{split}|{pass_name}"
        for seed in seeds:
            for run in (ours[seed], base[seed]):
                why = self._unusable.get((run.path, metric))
                if why is not None or (run.path, pass_key) not in draws:
                    self._note(
                        f"{where}, {metric}: t interval over seeds, not the bootstrap: "
                        f"run {run.path}: {why or 'no scores'}"
                    )
                    return None
            if (
                self._lists[(ours[seed].path, pass_key)].key
                != self._lists[(base[seed].path, pass_key)].key
            ):
                tested_on = "test samples" if self.spec.unit == "sample" else "trial lists"
                self._note(
                    f"{where}, {metric}: t interval over seeds, not the bootstrap: seed "
                    f"{seed} of the row and of the baseline were tested on different "
                    f"{tested_on}"
                )
                return None
        units = min(self._lists[(ours[s].path, pass_key)].units for s in seeds)
        return paired_bootstrap(
            {s: draws[(ours[s].path, pass_key)] for s in seeds},
            {s: draws[(base[s].path, pass_key)] for s in seeds},
            kind,
            units,
            self.spec.confidence,
            self.spec.seed,
            unit=UNIT_LABELS[self.spec.unit],
        )
