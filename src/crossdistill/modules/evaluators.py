"""What a module measures on val/test. The default is classification accuracy; tasks
whose eval labels are not training classes (speaker verification) plug in their own
evaluator through the ``evaluator`` config group."""

from __future__ import annotations

import pytorch_lightning as pl
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy


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
    """Cross-entropy, top-1 and optionally top-k accuracy (torchmetrics, DDP-synced)."""

    def __init__(self, num_classes: int, top_k: int = 1) -> None:
        super().__init__()
        self.top_ks = sorted({1, min(top_k, num_classes)})
        self.metrics = nn.ModuleDict(
            {
                f"{split}_top{k}": MulticlassAccuracy(num_classes, top_k=k, average="micro")
                for split in ("val", "test")
                for k in self.top_ks
            }
        )

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
