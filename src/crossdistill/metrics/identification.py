"""Closed-set identification accuracy from embeddings (speaker identification protocol)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def closed_set_identification(
    emb: Tensor, seen: Tensor, identities: Sequence[str], videos: Sequence[str]
) -> float | None:
    """Accuracy of identifying each sample among the split's identities.

    Sample ``j`` (row ``j`` of ``emb`` ``[N, D]``, used when ``seen[j]``) belongs to
    ``identities[j]`` and ``videos[j]``. Each identity is enrolled with the mean of the
    normalised embeddings of its first video (smallest name); every sample of its other
    videos is classified by the most similar enrolment (cosine). None when fewer than two
    identities are enrolled or no sample is left to classify.
    """
    first_video: dict[str, str] = {}
    for identity, video in zip(identities, videos, strict=True):
        first_video[identity] = min(video, first_video.get(identity, video))
    ids = sorted(first_video)
    col = {i: c for c, i in enumerate(ids)}
    enrol_sum = emb.new_zeros(len(ids), emb.shape[1])
    enrol_n = emb.new_zeros(len(ids))
    queries, truth = [], []
    for j, (identity, video) in enumerate(zip(identities, videos, strict=True)):
        if not seen[j]:
            continue
        if video == first_video[identity]:
            enrol_sum[col[identity]] += F.normalize(emb[j], dim=-1)
            enrol_n[col[identity]] += 1
        else:
            queries.append(j)
            truth.append(col[identity])
    usable = enrol_n > 0
    if usable.sum() < 2 or not queries:
        return None
    keep = [k for k, c in enumerate(truth) if usable[c]]
    if not keep:
        return None
    q = F.normalize(emb[[queries[k] for k in keep]], dim=-1)
    protos = F.normalize(enrol_sum, dim=-1)
    sims = q @ protos.T
    sims[:, ~usable] = -math.inf
    pred = sims.argmax(1)
    return (pred == torch.tensor([truth[k] for k in keep])).float().mean().item()
