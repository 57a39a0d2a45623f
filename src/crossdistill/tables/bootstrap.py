"""Paired differences of verification metrics bootstrapped over test speakers and seeds
(the spec key ``paired_bootstrap``; docs/tables.md, "Speaker bootstrap").

The runs' saved trial scores (``<run dir>/scores/<split>.npz``,
:mod:`crossdistill.metrics.trial_scores`) are bootstrapped by
:mod:`crossdistill.analysis.speaker_bootstrap`. A cell whose runs have no usable scores
(none saved, or scores that do not give the run's logged metric) keeps the t interval
over seeds, and the table says so in a note.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crossdistill.analysis.speaker_bootstrap import (
    BootstrapDifference,
    MetricDraws,
    RunScores,
    TrialList,
    bootstrap_runs,
    paired_bootstrap,
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
UNITS = ("speaker",)


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
        try:
            parse_metric(str(metric))
        except ValueError as err:
            raise ValueError(f"{source}: paired_bootstrap.metrics: {err}") from None
    unit = data.get("unit", "speaker")
    if unit not in UNITS:
        raise ValueError(f"{source}: paired_bootstrap.unit {unit!r}; valid: {list(UNITS)}")
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
        self._lists: dict[tuple[Path, str], TrialList] = {}
        #: (run dir, metric) -> why that run's scores cannot be used for that metric
        self._unusable: dict[tuple[Path, str], str] = {}
        self._results: dict[tuple[str, str, str], BootstrapDifference | None] = {}

    def _note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def _load(self, run: Run, split: str, cache: dict) -> tuple[TrialScores | None, str]:
        """A run's saved scores of ``split`` (read once), or ``None`` and why not."""
        if (run.path, split) not in cache:
            path = scores_path(run.path, split)
            try:
                found = (
                    (load_trial_scores(path), "")
                    if path.is_file()
                    else (None, f"no saved scores {path}")
                )
            except (OSError, ValueError) as err:
                found = (None, f"unreadable scores {path} ({err})")
            cache[(run.path, split)] = found
        return cache[(run.path, split)]

    def _prepare(self) -> dict[tuple[Path, str], MetricDraws]:
        """Draws of every finished run for every bootstrapped metric's pass."""
        if self._draws is not None:
            return self._draws
        files: dict[tuple[Path, str], tuple[TrialScores | None, str]] = {}
        inputs: dict[str, RunScores] = {}
        names: dict[str, tuple[Path, str]] = {}
        for run in self.table.all_runs():
            if run.failed or run.seed is None:
                continue
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
        self._lists = {names[k]: v.trials for k, v in inputs.items()}
        self._check_points()
        return self._draws

    def _check_points(self) -> None:
        """A run whose saved scores do not give its logged metric (re-tested with another
        checkpoint?) is not bootstrapped."""
        for run in self.table.all_runs():
            for metric in self.spec.metrics:
                split, kind, pass_name = parse_metric(metric)
                found = self._draws.get((run.path, f"{split}|{pass_name}"))
                logged = run.metrics.get(metric)
                if found is None or logged is None:
                    continue
                recomputed = found.point[kind]
                if not math.isclose(recomputed, logged, rel_tol=1e-6, abs_tol=1e-7):
                    self._unusable[(run.path, metric)] = (
                        f"its saved scores give {metric} = {recomputed:.6g}, metrics.json has "
                        f"{logged:.6g} (scores of another test?)"
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
        split, kind, pass_name = parse_metric(metric)
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
                self._note(
                    f"{where}, {metric}: t interval over seeds, not the bootstrap: seed "
                    f"{seed} of the row and of the baseline were tested on different "
                    "trial lists"
                )
                return None
        speakers = min(len(self._lists[(ours[s].path, pass_key)].speakers) for s in seeds)
        return paired_bootstrap(
            {s: draws[(ours[s].path, pass_key)] for s in seeds},
            {s: draws[(base[s].path, pass_key)] for s in seeds},
            kind,
            speakers,
            self.spec.confidence,
            self.spec.seed,
        )
