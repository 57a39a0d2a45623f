"""Lightning callbacks of our own."""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ProgressBar
from tqdm.auto import tqdm


class EpochProgressBar(ProgressBar):
    """One bar over epochs (not steps), for runs of many tiny epochs (e.g. 1000 full-batch
    epochs), where a per-step bar would print thousands of lines. Shows the logged
    progress-bar metrics as its postfix."""

    def __init__(self, mininterval: float = 0.5) -> None:
        super().__init__()
        self._enabled = True
        self.mininterval = mininterval
        self.bar: tqdm | None = None

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._enabled and trainer.is_global_zero:
            self.bar = tqdm(
                total=trainer.max_epochs,
                initial=trainer.current_epoch,
                desc="Epochs",
                mininterval=self.mininterval,
                dynamic_ncols=True,
            )

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.bar is not None:
            metrics = self.get_metrics(trainer, pl_module)
            metrics.pop("v_num", None)
            self.bar.set_postfix(metrics, refresh=False)
            self.bar.update(1)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
