"""Per-trial verification scores of one test run: the file a speaker bootstrap reads.

``<run dir>/scores/<split>.npz`` (written by the verification evaluator, rank 0 only,
atomically) holds one entry per *scored* trial of the split's trial list:

* ``trial`` int64: position in the split's trial list; ``enroll`` / ``test`` int64: the two
  utterances' positions in the split's eval utterances;
* ``label`` int8: 1 = target (same speaker), 0 = non-target;
* ``enroll_speaker`` / ``test_speaker`` int32: indices into ``speakers`` (str, sorted);
* ``score`` float64: the cosine score of the clean pass, ``score_<pass>`` the noisy passes
  (``score_snr10``: test utterance at 10 dB SNR), the same trials in the same order;
* ``p_target``, ``c_miss``, ``c_fa``: the minDCF parameters of the run.

EER / minDCF recomputed from these scores with :mod:`crossdistill.metrics.verification`
equal the logged ``<split>/eer<_pass>`` and ``<split>/min_dcf<_pass>`` exactly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crossdistill.checkpoint_io import write_atomically

SCORES_DIR = "scores"  # under the run dir
CLEAN = ""  # the pass name of the clean scores (array ``score``)
_ARRAYS = ("trial", "enroll", "test", "label", "enroll_speaker", "test_speaker", "speakers")
_METRIC = re.compile(r"^(?P<split>[a-z]+)/(?P<kind>eer|min_dcf)(?:_(?P<pass>[^/]+))?$")


@dataclass(frozen=True)
class TrialScores:
    """The saved trials of one split and their scores per pass (``""`` = clean)."""

    path: Path
    trial: np.ndarray
    label: np.ndarray
    enroll_speaker: np.ndarray
    test_speaker: np.ndarray
    speakers: np.ndarray
    scores: dict[str, np.ndarray]
    p_target: float
    c_miss: float
    c_fa: float

    def pass_scores(self, name: str) -> np.ndarray:
        """The scores of pass ``name`` (``""`` clean, ``"snr10"``, ...)."""
        if name not in self.scores:
            have = ", ".join(repr(k) for k in self.scores)
            raise KeyError(f"{self.path}: no scores of pass {name!r}; passes saved: {have}")
        return self.scores[name]


def scores_path(run_dir: str | Path, split: str) -> Path:
    return Path(run_dir) / SCORES_DIR / f"{split}.npz"


def parse_metric(metric: str) -> tuple[str, str, str]:
    """``test/eer_snr10`` -> ``("test", "eer", "snr10")``; ``test/min_dcf`` ->
    ``("test", "min_dcf", "")``. Other names raise."""
    match = _METRIC.match(metric)
    if match is None:
        raise ValueError(
            f"metric {metric!r} is not a verification metric of saved scores; valid: "
            "<split>/eer or <split>/min_dcf, optionally with a pass suffix (test/eer_snr10)"
        )
    return match["split"], match["kind"], match["pass"] or CLEAN


def write_trial_scores(
    path: str | Path,
    *,
    trial: np.ndarray,
    enroll: np.ndarray,
    test: np.ndarray,
    label: np.ndarray,
    enroll_identity: Sequence[str],
    test_identity: Sequence[str],
    scores: Mapping[str, np.ndarray],
    p_target: float,
    c_miss: float,
    c_fa: float,
) -> Path:
    """Write the file atomically (temporary file beside it, then rename); returns its path."""
    path = Path(path)
    speakers = np.array(sorted(set(enroll_identity) | set(test_identity)), dtype=str)
    code = {name: i for i, name in enumerate(speakers.tolist())}
    arrays = {
        "trial": np.asarray(trial, dtype=np.int64),
        "enroll": np.asarray(enroll, dtype=np.int64),
        "test": np.asarray(test, dtype=np.int64),
        "label": np.asarray(label, dtype=np.int8),
        "enroll_speaker": np.array([code[s] for s in enroll_identity], dtype=np.int32),
        "test_speaker": np.array([code[s] for s in test_identity], dtype=np.int32),
        "speakers": speakers,
        "p_target": np.float64(p_target),
        "c_miss": np.float64(c_miss),
        "c_fa": np.float64(c_fa),
    }
    for name, values in scores.items():
        arrays[f"score_{name}" if name else "score"] = np.asarray(values, dtype=np.float64)
    return write_atomically(path, lambda file: np.savez_compressed(file, **arrays))


def load_trial_scores(path: str | Path) -> TrialScores:
    """Read a file of :func:`write_trial_scores`; a missing array raises naming it."""
    path = Path(path)
    with np.load(path, allow_pickle=False) as data:
        missing = [k for k in (*_ARRAYS, "score") if k not in data.files]
        if missing:
            raise ValueError(f"{path}: not a trial-scores file, missing arrays {missing}")
        scores = {
            ("" if k == "score" else k.removeprefix("score_")): data[k].astype(np.float64)
            for k in data.files
            if k == "score" or k.startswith("score_")
        }
        return TrialScores(
            path=path,
            trial=data["trial"],
            label=data["label"],
            enroll_speaker=data["enroll_speaker"],
            test_speaker=data["test_speaker"],
            speakers=data["speakers"],
            scores=scores,
            p_target=float(data["p_target"]),
            c_miss=float(data["c_miss"]),
            c_fa=float(data["c_fa"]),
        )
