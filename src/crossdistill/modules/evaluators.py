"""What a module measures on val/test. The default is classification accuracy; tasks
whose eval labels are not training classes (speaker verification) plug in their own
evaluator through the ``evaluator`` config group."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from crossdistill.metrics.predictions import write_predictions

log = logging.getLogger(__name__)


class Evaluator(nn.Module):
    """Interface: ``step`` per eval batch, ``epoch_end`` logs the split's metrics.

    ``monitor_mode`` says whether the main metric is better high ('max') or low ('min').
    """

    monitor_mode = "max"

    def step(self, module: pl.LightningModule, batch: dict[str, Tensor], split: str) -> None:
        raise NotImplementedError

    def epoch_end(self, module: pl.LightningModule, split: str) -> None:
        """Called at the end of each val/test epoch (default: nothing to do)."""


class ClassificationEvaluator(Evaluator):
    """Cross-entropy, top-1 and optionally top-k accuracy (torchmetrics, DDP-synced).

    With ``predictions_dir`` set, each split in ``predictions_splits`` also writes every
    sample's label and best classes to ``<predictions_dir>/<split>.npz``
    (:mod:`crossdistill.metrics.predictions`), read by the tables' sample bootstrap.
    """

    def __init__(
        self,
        num_classes: int,
        top_k: int = 1,
        predictions_dir: str | None = None,
        predictions_splits: Sequence[str] = ("test",),
    ) -> None:
        super().__init__()
        self.top_ks = sorted({1, min(top_k, num_classes)})
        self.metrics = nn.ModuleDict(
            {
                f"{split}_top{k}": MulticlassAccuracy(num_classes, top_k=k, average="micro")
                for split in ("val", "test")
                for k in self.top_ks
            }
        )
        self.predictions_dir = Path(predictions_dir) if predictions_dir else None
        self.predictions_splits = tuple(predictions_splits or ())
        self._seen: dict[str, list[tuple[Tensor, Tensor, Tensor]]] = {}

    def _saves(self, split: str) -> bool:
        return self.predictions_dir is not None and split in self.predictions_splits

    def step(self, module: pl.LightningModule, batch: dict[str, Tensor], split: str) -> None:
        logits = module(batch[module.input_key])
        labels = batch["label"]
        loss = nn.functional.cross_entropy(logits, labels)
        module.log(f"{split}/loss", loss, batch_size=labels.shape[0], sync_dist=True)
        for k in self.top_ks:
            metric = self.metrics[f"{split}_top{k}"]
            metric(logits, labels)
            name = f"{split}/acc" if k == 1 else f"{split}/acc_top{k}"
            module.log(name, metric, on_step=False, on_epoch=True, prog_bar=k == 1)
        if self._saves(split):
            if "index" not in batch:
                raise KeyError(
                    f"evaluator.predictions_splits has {split!r} but the batches have no "
                    "'index' (sample position); set evaluator.predictions_dir=null"
                )
            top = logits.topk(self.top_ks[-1], dim=1).indices
            self._seen.setdefault(split, []).append(
                (batch["index"].detach(), labels.detach(), top.detach())
            )

    def epoch_end(self, module: pl.LightningModule, split: str) -> None:
        seen = self._seen.pop(split, [])
        if not self._saves(split) or not seen:
            return
        index, labels, top = (torch.cat(parts) for parts in zip(*seen, strict=True))
        if module.trainer.world_size > 1:  # every rank's samples (equal counts per rank)
            index, labels, top = (
                module.all_gather(t).reshape(-1, *t.shape[1:]) for t in (index, labels, top)
            )
        if module.trainer.is_global_zero:
            path = write_predictions(
                self.predictions_dir / f"{split}.npz",
                index=index.cpu().numpy(),
                label=labels.cpu().numpy(),
                top=top.cpu().numpy(),
            )
            log.info("%s predictions (%d samples) written to %s", split, len(index), path)
