"""Collation of utterances of different lengths: zero-padded, with their true lengths."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.utils.data import default_collate


def pad_collate(samples: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Stack a batch; ``student_input`` is zero-padded to the longest waveform [B, T_max]
    and ``student_lengths`` [B] (int64) holds the true lengths."""
    waves = [s["student_input"] for s in samples]
    lengths = torch.tensor([w.shape[-1] for w in waves], dtype=torch.int64)
    padded = torch.zeros(len(waves), int(lengths.max()), dtype=waves[0].dtype)
    for j, w in enumerate(waves):
        padded[j, : w.shape[-1]] = w
    rest = default_collate([{k: v for k, v in s.items() if k != "student_input"}
                            for s in samples])
    return {**rest, "student_input": padded, "student_lengths": lengths}
