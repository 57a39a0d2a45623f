"""A classifier over new classes from a trained encoder: class prototypes by enrolment.

A teacher trained on other classes than the student's (e.g. the face teacher trained on
a face-only identity pool) has no logits over the student's training classes; logit
distillation needs them. :func:`enrolled_classifier` makes a cosine classifier whose
prototype of class ``c`` is the mean of the normalised embeddings of ``c``'s samples
(nearest-class-mean scoring, as speaker / face verification enrols an identity).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crossdistill.models.heads import CosineClassifier
from crossdistill.modules.distill import eval_mode


@torch.no_grad()
def enrolled_classifier(
    encoder: nn.Module,
    batches: Iterable[dict[str, Tensor]],
    num_classes: int,
    input_key: str = "teacher_input",
    scale: float = 30.0,
) -> CosineClassifier:
    """``scale * cos(e, mean_c)`` with ``mean_c`` the normalised mean of class ``c``'s
    normalised ``encoder(batch[input_key])`` embeddings (``batch['label']`` = class); a
    class without samples is an error naming it."""
    dim = int(encoder.embedding_dim)
    sums = torch.zeros(num_classes, dim)
    counts = torch.zeros(num_classes)
    with eval_mode(encoder):
        for batch in batches:
            emb = F.normalize(encoder(batch[input_key]).float(), dim=-1).cpu()
            labels = batch["label"].cpu()
            sums.index_add_(0, labels, emb)
            counts.index_add_(0, labels, torch.ones(len(labels)))
    missing = torch.nonzero(counts == 0).flatten().tolist()
    if missing:
        raise ValueError(
            f"enrolment: classes {missing[:10]} have no samples ({len(missing)} of {num_classes})"
        )
    head = CosineClassifier(dim, num_classes, scale=scale)
    head.weight.copy_(F.normalize(sums, dim=-1))
    return head
