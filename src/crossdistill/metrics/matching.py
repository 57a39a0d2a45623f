"""Cross-modal matching accuracy (e.g. voice -> face, 1-of-2 and 1-of-K).

Protocol (as in the face-voice matching literature, seeded so runs are comparable):
for every query (say a voice embedding with identity ``y``) draw ``k`` gallery candidates
(say projected face embeddings): one random gallery item of identity ``y`` and ``k - 1``
random gallery items of ``k - 1`` *distinct* other identities. The query is answered
correctly when the cosine to the true candidate is the highest. A tie at the top between
the true candidate and ``n`` impostors counts ``1 / (n + 1)`` (the expectation of breaking
the tie at random), so degenerate embeddings score chance, not zero.

Chance level is ``1 / k``. For face -> voice matching swap the arguments.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

__all__ = ["CrossModalMatchingAccuracy", "matching_accuracy"]


def matching_accuracy(
    query: Tensor,
    query_labels: Tensor,
    gallery: Tensor,
    gallery_labels: Tensor,
    k: int = 2,
    num_repeats: int = 1,
    seed: int = 0,
    skip_missing: bool = False,
) -> float:
    """1-of-``k`` matching accuracy of ``query [N, D]`` against ``gallery [M, D]``.

    Args:
        query, query_labels: query embeddings (e.g. voices) and their identity labels.
        gallery, gallery_labels: candidate embeddings (e.g. projected faces) and labels.
        k: candidates per question (1 true + ``k - 1`` impostors of distinct identities).
        num_repeats: questions drawn per query (averaged).
        seed: seed of the ``torch.Generator`` that draws the candidates.
        skip_missing: drop queries whose identity has no gallery item instead of raising.
    """
    if k < 2:
        raise ValueError(f"matching k must be >= 2, got {k}")
    if num_repeats < 1:
        raise ValueError(f"matching num_repeats must be >= 1, got {num_repeats}")
    query = torch.as_tensor(query).detach().float().cpu()
    gallery = torch.as_tensor(gallery).detach().float().cpu()
    q_lab = torch.as_tensor(query_labels).detach().long().cpu().reshape(-1)
    g_lab = torch.as_tensor(gallery_labels).detach().long().cpu().reshape(-1)
    if query.dim() != 2 or gallery.dim() != 2 or query.shape[1] != gallery.shape[1]:
        raise ValueError(
            f"matching needs query [N, D] and gallery [M, D], got {tuple(query.shape)} and "
            f"{tuple(gallery.shape)}"
        )
    if q_lab.numel() != query.shape[0] or g_lab.numel() != gallery.shape[0]:
        raise ValueError("matching: one label per query and per gallery item is required")

    ids, g_inv, counts = torch.unique(g_lab, return_inverse=True, return_counts=True)
    num_ids = ids.numel()
    if num_ids < k:
        raise ValueError(
            f"1-of-{k} matching needs at least {k} gallery identities, got {num_ids}"
        )
    # gallery indices grouped by identity: group j is order[offsets[j]:offsets[j]+counts[j]]
    order = torch.argsort(g_inv, stable=True)
    offsets = torch.cumsum(counts, 0) - counts
    q_pos = torch.searchsorted(ids, q_lab).clamp_max(num_ids - 1)
    present = ids[q_pos] == q_lab
    if not present.all():
        if not skip_missing:
            missing = torch.unique(q_lab[~present])[:10].tolist()
            raise ValueError(
                f"query identities {missing} have no gallery item; pass skip_missing=True "
                "to drop those queries"
            )
        query, q_pos = query[present], q_pos[present]
    if query.shape[0] == 0:
        raise ValueError("matching: no query left to evaluate")

    gen = torch.Generator().manual_seed(seed)
    qn = F.normalize(query, dim=-1)
    gn = F.normalize(gallery, dim=-1)
    n = qn.shape[0]
    total = 0.0
    for _ in range(num_repeats):
        # k-1 distinct impostor identities per query: smallest random keys, own id excluded
        keys = torch.rand(n, num_ids, generator=gen)
        keys[torch.arange(n), q_pos] = float("inf")
        cand_ids = torch.cat([q_pos[:, None], keys.topk(k - 1, largest=False).indices], 1)
        within = (torch.rand(n, k, generator=gen) * counts[cand_ids]).long()
        within = torch.minimum(within, counts[cand_ids] - 1)
        cand = order[offsets[cand_ids] + within]  # [n, k] gallery indices; column 0 is true
        sims = torch.einsum("nd,nkd->nk", qn, gn[cand])
        top = sims.max(dim=1).values
        at_top = sims >= top[:, None]
        correct = at_top[:, 0].float() / at_top.sum(1).float()
        total += correct.mean().item()
    return total / num_repeats


class CrossModalMatchingAccuracy(Metric):
    """Torchmetrics wrapper of :func:`matching_accuracy` (states gathered across ranks).

    ``update(query, gallery, labels, gallery_labels=None)``: paired data (query ``i`` and
    gallery ``i`` of the same sample) need only ``labels``.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        k: int = 2,
        num_repeats: int = 1,
        seed: int = 0,
        skip_missing: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if k < 2:
            raise ValueError(f"CrossModalMatchingAccuracy k must be >= 2, got {k}")
        self.k = k
        self.num_repeats = num_repeats
        self.seed = seed
        self.skip_missing = skip_missing
        for name in ("query", "query_labels", "gallery", "gallery_labels"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(
        self,
        query: Tensor,
        gallery: Tensor,
        labels: Tensor,
        gallery_labels: Tensor | None = None,
    ) -> None:
        self.query.append(query.detach().float())
        self.query_labels.append(labels.detach().long().reshape(-1))
        self.gallery.append(gallery.detach().float())
        g_lab = labels if gallery_labels is None else gallery_labels
        self.gallery_labels.append(g_lab.detach().long().reshape(-1))

    def compute(self) -> Tensor:
        if isinstance(self.query, list) and len(self.query) == 0:
            raise ValueError("CrossModalMatchingAccuracy.compute called before any update")
        acc = matching_accuracy(
            dim_zero_cat(self.query),
            dim_zero_cat(self.query_labels),
            dim_zero_cat(self.gallery),
            dim_zero_cat(self.gallery_labels),
            k=self.k,
            num_repeats=self.num_repeats,
            seed=self.seed,
            skip_missing=self.skip_missing,
        )
        return torch.tensor(acc, device=self.device)
