"""Lightning callbacks of our own."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from lightning_fabric.utilities.seed import _collect_rng_states, _set_rng_states
from pytorch_lightning.callbacks import Callback, ModelCheckpoint, ProgressBar
from tqdm.auto import tqdm

RNG_STATES_KEY = "crossdistill_rng_states"
PREVIOUS_LAST_SUFFIX = ".previous"  # last.ckpt -> last.previous.ckpt


class RngStateCheckpoint(Callback):
    """Saves the global random-generator states (torch CPU and CUDA, numpy, python
    ``random``) in every checkpoint and restores them when training resumes from one; also
    flushes the loggers when a checkpoint is written, so their files hold every row up to
    it.

    Lightning checkpoints hold model, optimizer, scheduler and loop states but not these;
    without them a resumed run shuffles, crops and drops out differently. The states are
    taken when the checkpoint is written (end of an epoch, or a validation at its end:
    nothing draws random numbers between there and the next epoch's start) and put back at
    the start of the first epoch trained after the resume, and that epoch's data iterator
    (which draws the shuffle order) is made after them, as in the uninterrupted run.
    Lightning 2.6 creates the iterator at the start of ``fit``, before any state is
    restored, and reuses it for the first resumed epoch when the checkpoint was taken at
    an epoch's end: it is re-created here. A checkpoint taken mid-epoch is restored at the
    next batch instead (the loop continues, but its shuffle order is not the uninterrupted
    run's).
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[RNG_STATES_KEY] = _collect_rng_states(include_cuda=True)
        for logger in trainer.loggers:
            logger.save()

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if trainer.state.fn == "fit" and RNG_STATES_KEY in checkpoint:
            self._pending = checkpoint[RNG_STATES_KEY]

    def _restore_pending(self) -> None:
        if self._pending is not None:
            _set_rng_states(self._pending)
            self._pending = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending is None:
            return
        self._restore_pending()
        # Lightning re-creates the epoch's data iterator only when it is not resuming; when
        # resuming it would use the one made at the start of `fit`, before the states were
        # restored: re-create it here, as the uninterrupted run did at this epoch's start
        fit_loop = trainer.fit_loop
        epoch_loop_iterates = (
            trainer.current_epoch > 0
            and not fit_loop.is_resuming
            and not fit_loop.epoch_loop.restarting
        )
        if not epoch_loop_iterates and fit_loop._data_fetcher is not None:
            iter(fit_loop._data_fetcher)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._restore_pending()


class LatestLastCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` always holds the latest training state.

    Lightning 2.6 rewrites ``last.ckpt`` only when a top-k checkpoint was saved at the same
    step, i.e. when the monitored metric improved: ``last`` then silently stays at an early
    epoch (``test_ckpt=last`` tests it, resuming from it repeats epochs). Here ``last.ckpt``
    is also written at every checkpointing point where nothing else was saved, and at the
    end of training (so it is the final state even when the last epoch ran no validation).
    Top-k (``best``) selection is Lightning's, unchanged.
    """

    def _save_last_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict) -> None:
        """Before ``last.ckpt`` is replaced, it is renamed ``last.previous.ckpt``: if the
        new one is found incomplete on resume (or missing, after a kill in between), the
        previous state is used. Both are always separate files."""
        last = Path(self.format_checkpoint_name(monitor_candidates, self.CHECKPOINT_NAME_LAST))
        if self.save_last is True and trainer.is_global_zero and last.is_file():
            os.replace(last, last.with_name(f"{last.stem}{PREVIOUS_LAST_SUFFIX}{last.suffix}"))
        super()._save_last_checkpoint(trainer, monitor_candidates)

    def _save_last_if_behind(self, trainer: pl.Trainer) -> None:
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_behind(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_behind(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._save_last_if_behind(trainer)


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
