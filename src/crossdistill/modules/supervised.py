"""Supervised classifier modules: teacher training and the student-only baseline.

Both are an encoder + classifier head trained with cross-entropy on one modality; they
differ only in which batch field they read (``teacher_input`` or ``student_input``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from crossdistill.losses import LossComposer, LossInputs
from crossdistill.modules.evaluators import ClassificationEvaluator, Evaluator

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., Any]


class SupervisedModule(pl.LightningModule):
    """Encoder + classifier on ``batch[input_key]``, trained with the loss composer;
    val/test metrics come from the ``evaluator`` (default: classification accuracy)."""

    input_key = "student_input"

    def __init__(
        self,
        encoder: nn.Module,
        classifier: nn.Module,
        num_classes: int,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        loss: LossComposer | None = None,
        top_k: int = 1,
        evaluator: Evaluator | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.classifier = classifier
        self.num_classes = num_classes
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.loss = loss if loss is not None else LossComposer({"ce": {"weight": 1.0}})
        self.evaluator = evaluator or ClassificationEvaluator(num_classes, top_k)

    # -- forward -------------------------------------------------------------------
    def embed(self, x: Tensor) -> Tensor:
        return self.encoder(x)

    def forward(self, x: Tensor) -> Tensor:
        """Evaluation logits (no margin)."""
        return self.classifier(self.encoder(x))

    def loss_inputs(self, batch: dict[str, Tensor]) -> LossInputs:
        labels = batch["label"]
        emb = self.encoder(batch[self.input_key])
        logits = self.classifier(emb, labels)
        return LossInputs(labels=labels, student_logits=logits, student_embedding=emb)

    # -- steps ---------------------------------------------------------------------
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        total, parts = self.loss(self.loss_inputs(batch))
        bs = batch["label"].shape[0]
        for name, value in parts.items():
            key = "train/loss" if name == "total" else f"train/loss_{name}"
            self.log(
                key,
                value,
                batch_size=bs,
                on_step=False,
                on_epoch=True,
                prog_bar=key == "train/loss",
            )
        return total

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.evaluator.step(self, batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.evaluator.step(self, batch, "test")

    def on_validation_epoch_end(self) -> None:
        self.evaluator.epoch_end(self, "val")

    def on_test_epoch_end(self) -> None:
        self.evaluator.epoch_end(self, "test")

    # -- optimisation --------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=self.trainable_parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler}}


class TeacherModule(SupervisedModule):
    """Trains the teacher on its own modality (``teacher_input``)."""

    input_key = "teacher_input"


class StudentModule(SupervisedModule):
    """The student-only baseline on ``student_input`` (no teacher)."""

    input_key = "student_input"

    def teacher_embedding_for_matching(self, batch: dict[str, Tensor]) -> Tensor | None:
        """The paired teacher inputs embedded in the student's space, for cross-modal
        matching metrics; None here (no teacher)."""
        return None
