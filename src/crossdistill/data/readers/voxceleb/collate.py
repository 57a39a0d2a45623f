"""Batching utterances of different lengths: zero-padded with their true lengths, and an
eval order that puts utterances of one length next to each other."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Sampler, default_collate


class LengthOrder(Sampler[int]):
    """Indices sorted by ``lengths`` (ties by index): eval batches of equal-length
    utterances, which an evaluator can embed together without padding."""

    def __init__(self, lengths: Sequence[int] | np.ndarray) -> None:
        self.order = [int(i) for i in np.argsort(np.asarray(lengths), kind="stable")]

    def __iter__(self):
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


def pad_collate(samples: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Stack a batch; ``student_input`` (waveforms ``[T]`` or filter banks
    ``[frames, n_mels]``) is zero-padded along its first axis to the longest,
    ``[B, T_max(, n_mels)]``, and ``student_lengths`` [B] (int64) holds the true lengths
    (samples or frames)."""
    waves = [s["student_input"] for s in samples]
    lengths = torch.tensor([w.shape[0] for w in waves], dtype=torch.int64)
    padded = waves[0].new_zeros(len(waves), int(lengths.max()), *waves[0].shape[1:])
    for j, w in enumerate(waves):
        padded[j, : w.shape[0]] = w
    rest = default_collate([{k: v for k, v in s.items() if k != "student_input"}
                            for s in samples])
    return {**rest, "student_input": padded, "student_lengths": lengths}
