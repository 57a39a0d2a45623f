"""A teacher reduced to some channels of one layer: MFH's modality-general teacher.

``teacher.keep_channels`` (docs/avmnist.md, "Algorithm 1 on the fusion teacher") keeps the
``k`` channels of a teacher layer ranked highest (``keep: top``, the modality-general ones)
or lowest (``keep: bottom``) by an Algorithm 1 ranking (the CSV written by
``crossdistill-diagnose``) and replaces every other channel by its mean over the training
set, so the teacher's logits depend only on the kept channels while their scale stays what
the classifier was trained on. The teacher's encoder is not retrained; with
``retrain_head: true`` its classifier is refitted on the masked embeddings of the training
set (a linear probe on the kept channels, :func:`refit_classifier`), so the reduced teacher
is as good as those channels allow. The mask is a module of the
student's DistillModule (its buffers are saved in checkpoints), applied by a forward hook
on the layer; channels are dimension 1 of the layer's output (``[B, C]``, ``[B, C, T]``,
``[B, C, H, W]``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

KEEP_MODES = ("top", "bottom")


def read_ranking(path: str | Path) -> list[int]:
    """Channels in rank order (best first) from a ``crossdistill-diagnose`` CSV."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"teacher.keep_channels.ranking: no file {path} (write it with "
            "crossdistill-diagnose run_dir=<a distill run> layer=<layer>)"
        )
    table = pd.read_csv(path)
    if "channel" not in table.columns:
        raise ValueError(
            f"teacher.keep_channels.ranking: {path} has no 'channel' column (columns: "
            f"{list(table.columns)}); expected an alg1_<layer>_<split>.csv of "
            "crossdistill-diagnose"
        )
    return [int(c) for c in table["channel"]]


class ChannelMask(nn.Module):
    """Keep ``k`` channels of ``layer`` (by ``ranking``), the others at their training mean."""

    def __init__(
        self, layer: str, ranking: Iterable[int], keep: str, k: int, retrain_head: bool = False
    ) -> None:
        super().__init__()
        ranking = list(ranking)
        channels = len(ranking)
        if sorted(ranking) != list(range(channels)):
            raise ValueError(
                "teacher.keep_channels.ranking must list every channel 0..C-1 once, got "
                f"{channels} entries"
            )
        if keep not in KEEP_MODES:
            raise ValueError(
                f"teacher.keep_channels.keep must be one of {KEEP_MODES}, got {keep!r}"
            )
        if not 1 <= k <= channels:
            raise ValueError(f"teacher.keep_channels.k must be in [1, {channels}], got {k}")
        chosen = ranking[:k] if keep == "top" else ranking[-k:]
        self.layer = layer
        self.keep_mode = keep
        #: refit the teacher's classifier on the masked embeddings (:func:`refit_classifier`)
        self.retrain_head = bool(retrain_head)
        kept = torch.zeros(channels, dtype=torch.bool)
        kept[chosen] = True
        self.register_buffer("kept", kept)
        self.register_buffer("fill", torch.zeros(channels))
        self.register_buffer("fitted", torch.tensor(False))
        self.active = True

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> ChannelMask:
        return cls(
            str(cfg["layer"]),
            read_ranking(cfg["ranking"]),
            str(cfg["keep"]),
            int(cfg["k"]),
            bool(cfg.get("retrain_head", False)),
        )

    def forward(self, features: Tensor) -> Tensor:
        if features.shape[1] != self.kept.numel():
            raise ValueError(
                f"teacher layer {self.layer!r} has {features.shape[1]} channels, the ranking "
                f"{self.kept.numel()}: the ranking was written for another layer or teacher"
            )
        shape = [1, -1] + [1] * (features.ndim - 2)
        kept = self.kept.view(shape)
        return torch.where(kept, features, self.fill.view(shape).to(features.dtype))

    def hook(self, module: nn.Module, inputs: Any, output: Tensor) -> Tensor | None:
        """Forward hook for the layer: the masked output (unchanged while inactive)."""
        return self(output) if self.active else None

    @torch.no_grad()
    def fit_fill(self, teacher_encoder: nn.Module, batches: Iterable[Tensor]) -> None:
        """Per-channel mean of the layer's output over ``batches`` of teacher input."""
        target = teacher_encoder.get_submodule(self.layer)
        total, count = torch.zeros_like(self.fill, dtype=torch.float64), 0
        seen: list[Tensor] = []
        handle = target.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
        was_active, self.active = self.active, False
        try:
            for x in batches:
                teacher_encoder(x.to(self.fill.device))
                out = seen.pop()
                dims = [0] + list(range(2, out.ndim))
                total += out.double().sum(dims)
                count += out.numel() // out.shape[1]
        finally:
            handle.remove()
            self.active = was_active
        self.fill.copy_((total / max(count, 1)).to(self.fill.dtype))
        self.fitted.fill_(True)


def refit_classifier(
    classifier: nn.Module, embeddings: Tensor, labels: Tensor, steps: int = 300, lr: float = 0.01
) -> float:
    """Retrain ``classifier`` from a fresh initialisation on fixed ``embeddings`` (full
    batch, Adam, cross-entropy on ``classifier(embeddings, labels)``, so margin heads train
    as they were trained); returns its training accuracy. Its parameters stay frozen."""
    for module in classifier.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    params = list(classifier.parameters())
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(classifier(embeddings, labels), labels)
            loss.backward()
            optimizer.step()
    for p in params:
        p.requires_grad_(False)
    with torch.no_grad():
        return (classifier(embeddings).argmax(1) == labels).float().mean().item()
