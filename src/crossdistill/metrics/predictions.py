"""Per-sample predictions of one classification test: the file a sample bootstrap reads.

``<run dir>/predictions/<split>.npz`` (written by the classification evaluator, rank 0,
atomically) holds one entry per test sample, sorted by ``index``:

* ``index`` int64: the sample's position in the split's dataset (``batch['index']``);
* ``label`` int64: its class;
* ``top`` int64 ``[samples, k]``: the k highest-scoring classes, best first (k = the
  largest top-k the evaluator logs).

Top-k accuracies recomputed from these equal the logged ``<split>/acc`` and
``<split>/acc_top<k>`` (up to ties between logits, which the table's check reports).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crossdistill.checkpoint_io import write_atomically

PREDICTIONS_DIR = "predictions"  # under the run dir
_METRIC = re.compile(r"^(?P<split>[a-z]+)/acc(?:_top(?P<k>[1-9][0-9]*))?$")


@dataclass(frozen=True)
class Predictions:
    """The saved predictions of one split."""

    path: Path
    index: np.ndarray
    label: np.ndarray
    top: np.ndarray

    def correct(self, k: int) -> np.ndarray:
        """Per sample (in ``index`` order): is the label among the ``k`` best classes."""
        if not 1 <= k <= self.top.shape[1]:
            raise ValueError(
                f"{self.path}: top-{k} needs k in 1..{self.top.shape[1]} (the saved classes)"
            )
        return (self.top[:, :k] == self.label[:, None]).any(axis=1)


def predictions_path(run_dir: str | Path, split: str) -> Path:
    return Path(run_dir) / PREDICTIONS_DIR / f"{split}.npz"


def parse_accuracy_metric(metric: str) -> tuple[str, int]:
    """``test/acc`` -> ``("test", 1)``, ``test/acc_top5`` -> ``("test", 5)``; others raise."""
    match = _METRIC.match(metric)
    if match is None:
        raise ValueError(
            f"metric {metric!r} is not an accuracy of saved predictions; valid: "
            "<split>/acc or <split>/acc_top<k> (test/acc_top5)"
        )
    return match["split"], int(match["k"] or 1)


def write_predictions(
    path: str | Path, *, index: np.ndarray, label: np.ndarray, top: np.ndarray
) -> Path:
    """Write the file atomically, sorted by ``index``. A sample seen more than once (a
    distributed sampler pads the last batch with repeats) is kept once; repeats that
    disagree raise."""
    index = np.asarray(index, dtype=np.int64)
    label = np.asarray(label, dtype=np.int64)
    top = np.asarray(top, dtype=np.int64).reshape(len(index), -1)
    order = np.argsort(index, kind="stable")
    index, label, top = index[order], label[order], top[order]
    keep = np.ones(len(index), dtype=bool)
    keep[1:] = index[1:] != index[:-1]
    first = np.cumsum(keep) - 1  # position among the kept samples
    if not (
        np.array_equal(label, label[keep][first]) and np.array_equal(top, top[keep][first])
    ):
        raise ValueError(f"{path}: a sample index was predicted twice with different results")
    arrays = {"index": index[keep], "label": label[keep], "top": top[keep]}
    return write_atomically(path, lambda file: np.savez_compressed(file, **arrays))


def load_predictions(path: str | Path) -> Predictions:
    """Read a file of :func:`write_predictions`; a missing array raises naming it."""
    path = Path(path)
    with np.load(path, allow_pickle=False) as data:
        missing = [k for k in ("index", "label", "top") if k not in data.files]
        if missing:
            raise ValueError(f"{path}: not a predictions file, missing arrays {missing}")
        return Predictions(path, data["index"], data["label"], data["top"])
