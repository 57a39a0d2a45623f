"""What a verification evaluator needs from the data: :class:`VerificationData`.

Eval labels of verification data are identities *disjoint* from the training classes, so
the classifier cannot be evaluated; instead every eval sample is embedded and the split's
trial list is scored. A DataModule offering that subclasses this mixin next to
:class:`~crossdistill.data.datamodules.base.PairedDataModule`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor

from crossdistill.data.readers.voxceleb.layout import Utterance
from crossdistill.data.readers.voxceleb.trials import Trial


@dataclass(frozen=True)
class TrialIndex:
    """A trial list as positions in the split's eval dataset (int64 ``[n_trials]`` each)."""

    enroll: Tensor
    test: Tensor
    label: Tensor  # 1 = same identity, 0 = different


class VerificationData(ABC):
    """Trial lists, the eval samples they refer to, and noised copies of eval inputs."""

    @abstractmethod
    def trials(self, split: str) -> list[Trial]:
        """The verification trials of ``split`` (paths of :meth:`eval_utterances`)."""

    @abstractmethod
    def eval_utterances(self, split: str) -> list[Utterance]:
        """The eval samples of ``split`` in ``batch['index']`` order: path, identity, video."""

    @abstractmethod
    def noisy_eval_input(
        self,
        batch: dict[str, Tensor],
        snr_db: float,
        seed: int,
        kind: str = "white",
        split: str | None = None,
    ) -> Tensor:
        """``batch['student_input']`` with every sample mixed with ``kind`` noise at
        ``snr_db`` dB, the noise fixed by ``(seed, snr_db, batch['index'])``: the same in
        every run, whatever the batching (``split``: the eval split the batch comes from,
        for data that look the noisy inputs up by index)."""

    def eval_size(self, split: str) -> int:
        """Number of eval samples of ``split``."""
        return len(self.eval_utterances(split))

    def trial_index(self, split: str) -> TrialIndex:
        """:meth:`trials` as positions in :meth:`eval_utterances`; a trial naming an
        utterance that is not among them raises naming it."""
        position = {u.path: i for i, u in enumerate(self.eval_utterances(split))}
        trials = self.trials(split)
        for t in trials:
            for path in (t.enroll, t.test):
                if path not in position:
                    raise KeyError(f"{split} trial {t} names {path!r}, which is not among the "
                                   f"{len(position)} eval utterances of the split")
        return TrialIndex(
            enroll=torch.tensor([position[t.enroll] for t in trials], dtype=torch.long),
            test=torch.tensor([position[t.test] for t in trials], dtype=torch.long),
            label=torch.tensor([t.label for t in trials], dtype=torch.long),
        )
